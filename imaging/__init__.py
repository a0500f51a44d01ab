"""ISO and DMG image writers and readers, their payload filesystems, checksums, split/encrypt."""
