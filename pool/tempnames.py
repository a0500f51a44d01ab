"""Marks in the names of temporary files that :mod:`pool.transfers` writes (kept import-light:
the sync scanner skips these names without importing the transfer machinery)."""

PARTIAL_MARK = ".darkstorage-partial-"
"""``.<name><PARTIAL_MARK><tag>``: a download into a local folder, kept to resume from."""
TMP_MARK = ".darkstorage-tmp-"
"""``.<name><TMP_MARK><random>``: an upload written under a temporary name, then renamed."""
