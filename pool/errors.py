"""Exception hierarchy and exit codes shared by every darkstorage package.

Every error a user can cause derives from :class:`DarkstorageError` and carries an
:class:`ExitCode`; the CLI prints ``str(error)`` on one line and exits with that code.
The vfs layer maps the same exceptions to errnos (see ``vfs.errnos``).
"""

from __future__ import annotations

import enum
import errno


class ExitCode(enum.IntEnum):
    """Process exit codes of the ``darkstorage`` command (documented in README)."""

    OK = 0
    ERROR = 1  #: unexpected internal error (a bug: please report it)
    USAGE = 2  #: bad command line (unknown option, missing argument, bad value)
    NOT_FOUND = 3  #: a bucket, path, mount or file does not exist
    EXISTS = 4  #: the thing to create already exists
    NOT_EMPTY = 5  #: refused to remove something that still holds data
    NOT_INITIALISED = 6  #: no pool yet: run ``darkstorage init``
    BUSY = 7  #: the mount or file is in use
    DIRTY_LEFT = 8  #: unmounted, but some files are still waiting for upload
    RESTORE_PENDING = 9  #: an archive restore is still in progress
    BACKEND = 10  #: a storage backend failed (I/O error, unreachable, corrupt object)
    CONFIG = 11  #: the configuration file is invalid
    PERMISSION = 12  #: the operating system refused (permissions, /dev/fuse)
    MOUNT_FAILED = 13  #: the FUSE mount could not be set up
    CATALOG = 14  #: the catalog database is unreadable, damaged or newer than this program
    INTERRUPTED = 130  #: stopped by Ctrl-C


class DarkstorageError(Exception):
    """Base of every darkstorage error.

    Attributes:
        exit_code: the process exit code the CLI uses for this error.
        errno: the errno the filesystem returns for this error.
    """

    exit_code: ExitCode = ExitCode.ERROR
    errno: int = errno.EIO


class UsageError(DarkstorageError):
    exit_code = ExitCode.USAGE
    errno = errno.EINVAL


class NotFoundError(DarkstorageError):
    exit_code = ExitCode.NOT_FOUND
    errno = errno.ENOENT


class ExistsError(DarkstorageError):
    exit_code = ExitCode.EXISTS
    errno = errno.EEXIST


class NotEmptyError(DarkstorageError):
    exit_code = ExitCode.NOT_EMPTY
    errno = errno.ENOTEMPTY


class NotInitialisedError(DarkstorageError):
    exit_code = ExitCode.NOT_INITIALISED
    errno = errno.ENOENT


class BusyError(DarkstorageError):
    exit_code = ExitCode.BUSY
    errno = errno.EBUSY


class RestorePendingError(DarkstorageError):
    """An archive/offsite object is being restored and cannot be read yet."""

    exit_code = ExitCode.RESTORE_PENDING
    errno = errno.EAGAIN


class BackendError(DarkstorageError):
    exit_code = ExitCode.BACKEND
    errno = errno.EIO


class IntegrityError(BackendError):
    """What was read back from a backend does not hash to what was written."""


class ConfigError(DarkstorageError):
    exit_code = ExitCode.CONFIG
    errno = errno.EINVAL


class PermissionDeniedError(DarkstorageError):
    exit_code = ExitCode.PERMISSION
    errno = errno.EACCES


class CatalogError(DarkstorageError):
    exit_code = ExitCode.CATALOG
    errno = errno.EIO


class MountError(DarkstorageError):
    exit_code = ExitCode.MOUNT_FAILED
    errno = errno.EIO
