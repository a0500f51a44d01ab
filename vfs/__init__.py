"""The FUSE filesystem (pyfuse3, its request loop on asyncio with uvloop) over a pool."""
