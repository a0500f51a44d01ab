"""Catalog schema: every table and column, with units, sentinels and invariants.

The catalog is one SQLite database in WAL mode (``<pool home>/catalog.db``). Its version is
``PRAGMA user_version``; :data:`MIGRATIONS` holds numbered, append-only migrations applied in
order by :func:`migrate`. Never edit a released migration: add a new one.

Tables (migration 1)
--------------------
``inodes`` -- one row per filesystem object (file, directory, symlink, FIFO, socket, device).
    ``id``        inode number; ``AUTOINCREMENT`` so ids are never reused. 1 is the root.
    ``mode``      ``st_mode``: file type bits and permission bits (incl. setuid/setgid/sticky).
    ``uid, gid``  owner and group ids.
    ``size``      logical size in bytes (symlinks: length of the target).
    ``nlink``     number of directory entries naming it (+ subdirectories' ``..`` for
                  directories, as ext4: a directory's nlink is 2 + its subdirectory count).
                  0 means unlinked; the row lives on while the file is open or looked up and
                  is removed (with its object) when the kernel forgets it or at the next start.
    ``atime_ns, mtime_ns, ctime_ns, btime_ns``  access, modification, change and birth times,
                  nanoseconds since the Unix epoch (UTC).
    ``rdev``      device number for character/block devices, else 0.
    ``target``    symlink target bytes, NULL for everything else.

``dentries`` -- directory entries.
    ``id``        readdir cookie: ``AUTOINCREMENT``, so listing by ``id > cookie`` gives stable
                  offsets while entries are added and removed (nothing is skipped or repeated).
    ``parent``    directory inode; ``name`` entry name bytes (1..255 bytes, no ``/`` or NUL);
                  ``inode`` the inode named. ``(parent, name)`` is unique.

``xattrs`` -- extended attributes: ``inode``, ``name`` (bytes incl. namespace, e.g.
    ``user.comment``), ``value`` (bytes, at most 64 KiB).

``buckets`` -- top-level namespaces: ``name`` (also the directory name under the root),
    ``inode`` (the bucket's directory), ``created_ns``.

``placement`` -- default tier for new files: ``bucket``, ``prefix`` (path inside the bucket
    without leading slash, ``''`` for the whole bucket, directories end with ``/``), ``tier``.
    The longest matching prefix wins; no match means ``hot``.

``objects`` -- where a regular file's bytes live. One row per regular file inode.
    ``inode``     the file.
    ``tier``      tier holding the authoritative copy (or that will hold it after upload).
    ``key``       backend key relative to the tier root, ``<bucket>/<path>`` at upload time;
                  NULL until the first upload. After a rename the key may lag the path until
                  the write-back service re-keys it.
    ``size``      bytes of the stored object (NULL before the first upload).
    ``xxh3_128``  hex XXH3-128 of the stored object (NULL before the first upload).
    ``etag``      the backend's ETag / version id where it has one, else NULL.
    ``state``     ``clean`` (the backend copy is current), ``dirty`` (the cache file is newer
                  and is the only current copy), ``uploading`` (dirty and being uploaded;
                  treated as ``dirty`` after a crash).
    ``dirty_since_ns``  when the file was last made dirty or last closed by its last writer:
                  the write-back delay counts from it. NULL if clean.
    ``restore_requested_ns, restore_ready_ns``  for archive/offsite tiers: when a restore was
                  asked for and when it is (or will be) readable; NULL when none is pending.

    ``upload_tmp_key``  (migration 2) the temporary key an upload in progress writes to; the
                  next start deletes it if the upload never finished. NULL otherwise.

``cache`` -- files with bytes in the local cache (``<home>/cache/<inode>``).
    ``inode``; ``complete`` 1 if the cache file holds the whole file (always for dirty files);
    ``bytes`` bytes of cache used; ``last_used_ns`` for LRU eviction.
    Partial (sparse) caches are only trusted while the mount that filled them runs.

Indexes: ``dentries(inode)`` (paths of an inode), ``dentries(parent, id)`` (migration 4: a
directory in cookie order), ``objects(state)``, ``objects(tier, key)``.

Triggers (migration 3): deleting an ``inodes`` row deletes its ``objects``, ``xattrs``,
``cache`` and ``rekeys`` rows; deleting an ``objects`` row with a key adds it to ``trash``.

``trash`` -- backend objects to delete: ``id``, ``tier``, ``key``, ``xxh3_128`` (of the
    object to delete, NULL if unknown). Written in the same transaction that stops
    referencing the object, so a crash never leaks or loses one. Deleted only if no
    ``objects`` row references ``(tier, key)`` any more.

``rekeys`` -- clean objects whose key no longer matches their path after a rename:
    ``inode``. The write-back service moves them to the new key.

``namespace_version`` (migration 5) -- one row, ``seq``: raised by one in every transaction
    that changes ``inodes`` or ``dentries`` (:class:`pool.catalog.Catalog` does it), so a
    connection that keeps listings in memory can tell that another one changed the namespace
    (SQLite's ``PRAGMA data_version`` also changes for commits that touch other tables only).

``tier_moves`` -- tier moves in progress: ``inode``, ``src_tier``, ``dst_tier``, ``tmp_key``
    (the temporary key in the destination). A row left after a crash is rolled back at the
    next start by deleting ``tmp_key``; the source copy is still the catalog's copy.
"""

from __future__ import annotations

import sqlite3

MIGRATIONS: list[str] = [
    # 1: initial schema
    """
    CREATE TABLE inodes (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        mode INTEGER NOT NULL,
        uid INTEGER NOT NULL,
        gid INTEGER NOT NULL,
        size INTEGER NOT NULL DEFAULT 0,
        nlink INTEGER NOT NULL,
        atime_ns INTEGER NOT NULL,
        mtime_ns INTEGER NOT NULL,
        ctime_ns INTEGER NOT NULL,
        btime_ns INTEGER NOT NULL,
        rdev INTEGER NOT NULL DEFAULT 0,
        target BLOB
    );
    CREATE TABLE dentries (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        parent INTEGER NOT NULL REFERENCES inodes(id),
        name BLOB NOT NULL,
        inode INTEGER NOT NULL REFERENCES inodes(id),
        UNIQUE (parent, name)
    );
    CREATE INDEX dentries_by_inode ON dentries(inode);
    CREATE TABLE xattrs (
        inode INTEGER NOT NULL REFERENCES inodes(id),
        name BLOB NOT NULL,
        value BLOB NOT NULL,
        PRIMARY KEY (inode, name)
    ) WITHOUT ROWID;
    CREATE TABLE buckets (
        name TEXT PRIMARY KEY,
        inode INTEGER NOT NULL UNIQUE REFERENCES inodes(id),
        created_ns INTEGER NOT NULL
    );
    CREATE TABLE placement (
        bucket TEXT NOT NULL,
        prefix TEXT NOT NULL,
        tier TEXT NOT NULL,
        PRIMARY KEY (bucket, prefix)
    ) WITHOUT ROWID;
    CREATE TABLE objects (
        inode INTEGER PRIMARY KEY REFERENCES inodes(id),
        tier TEXT NOT NULL,
        key TEXT,
        size INTEGER,
        xxh3_128 TEXT,
        etag TEXT,
        state TEXT NOT NULL CHECK (state IN ('clean', 'dirty', 'uploading')),
        dirty_since_ns INTEGER,
        restore_requested_ns INTEGER,
        restore_ready_ns INTEGER
    );
    CREATE INDEX objects_by_state ON objects(state);
    CREATE INDEX objects_by_tier_key ON objects(tier, key);
    CREATE TABLE cache (
        inode INTEGER PRIMARY KEY,
        complete INTEGER NOT NULL,
        bytes INTEGER NOT NULL,
        last_used_ns INTEGER NOT NULL
    );
    CREATE TABLE trash (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        tier TEXT NOT NULL,
        key TEXT NOT NULL,
        xxh3_128 TEXT
    );
    CREATE TABLE rekeys (inode INTEGER PRIMARY KEY);
    CREATE TABLE tier_moves (
        inode INTEGER PRIMARY KEY,
        src_tier TEXT NOT NULL,
        dst_tier TEXT NOT NULL,
        tmp_key TEXT NOT NULL
    );
    """,
    # 2: temporary key of an upload in progress, so recovery can delete what a crash left
    """
    ALTER TABLE objects ADD COLUMN upload_tmp_key TEXT
    """,
    # 3: deleting an inode row removes what hangs off it, inside SQLite; a deleted object
    # that was ever uploaded goes to the trash in the same transaction
    """
    CREATE TRIGGER inode_deleted AFTER DELETE ON inodes BEGIN
        DELETE FROM objects WHERE inode = OLD.id;
        DELETE FROM xattrs WHERE inode = OLD.id;
        DELETE FROM cache WHERE inode = OLD.id;
        DELETE FROM rekeys WHERE inode = OLD.id;
    END;
    CREATE TRIGGER object_deleted AFTER DELETE ON objects WHEN OLD.key IS NOT NULL BEGIN
        INSERT INTO trash (tier, key, xxh3_128) VALUES (OLD.tier, OLD.key, OLD.xxh3_128);
    END
    """,
    # 4: readdir lists a directory in cookie order from a cookie on: without this index each
    # batch sorted the whole directory (quadratic in its size)
    """
    CREATE INDEX dentries_by_parent_cookie ON dentries(parent, id)
    """,
    # 5: a counter of namespace changes, for connections that keep listings in memory
    """
    CREATE TABLE namespace_version (seq INTEGER NOT NULL);
    INSERT INTO namespace_version (seq) VALUES (0)
    """,
]


def _statements(script: str) -> list[str]:
    """Split a migration into statements (``sqlite3.complete_statement`` keeps triggers whole)."""
    out, buf = [], ""
    for line in script.splitlines(keepends=True):
        buf += line
        if sqlite3.complete_statement(buf):
            out.append(buf.strip())
            buf = ""
    if buf.strip():
        out.append(buf.strip())
    return out


def migrate(conn: sqlite3.Connection) -> int:
    """Apply the migrations *conn* lacks, each in its own transaction.

    Returns:
        The schema version after migrating.

    Raises:
        sqlite3.DatabaseError: the catalog is newer than this program (downgrade).
    """
    (version,) = conn.execute("PRAGMA user_version").fetchone()
    if version > len(MIGRATIONS):
        raise sqlite3.DatabaseError(f"catalog schema {version} is newer than this darkstorage ({len(MIGRATIONS)})")
    for number in range(version + 1, len(MIGRATIONS) + 1):
        conn.execute("BEGIN IMMEDIATE")
        try:
            for stmt in _statements(MIGRATIONS[number - 1]):
                conn.execute(stmt)
            conn.execute(f"PRAGMA user_version = {number}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
    return len(MIGRATIONS)
