"""The FUSE filesystem (pyfuse3 + trio) over a pool."""
