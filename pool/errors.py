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
    AUTH = 15  #: an external store rejected the credentials
    TRANSFER = 16  #: some transfers failed after their retries (see ``darkstorage transfers --failed``)
    SYNC_ABORTED = 17  #: a sync safety check stopped the run before it changed anything
    IMAGE_CORRUPT = 18  #: a disk image failed verification (bad structure, checksum or digest)
    UNSAFE_PATH = 19  #: an entry would land outside the target folder (``..``, absolute, symlink)
    UNSUPPORTED = 20  #: the feature or connector is not available on this system
    JOB_FAILED = 21  #: a scheduled image job run by ``agent start --once`` failed (see ``jobs list``)
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


class AuthError(BackendError):
    """An external store rejected the credentials (wrong key, expired token)."""

    exit_code = ExitCode.AUTH
    errno = errno.EACCES


class TransferError(DarkstorageError):
    """One or more transfers failed after their retries."""

    exit_code = ExitCode.TRANSFER
    errno = errno.EIO


class SyncAbortedError(DarkstorageError):
    """A sync safety check (max-delete, empty side, everything changed) stopped the run."""

    exit_code = ExitCode.SYNC_ABORTED
    errno = errno.ECANCELED


class ImageCorruptError(DarkstorageError):
    """A disk image (ISO, DMG) failed verification; the message names the bad part."""

    exit_code = ExitCode.IMAGE_CORRUPT
    errno = errno.EIO


class UnsafePathError(DarkstorageError):
    """An entry's path would escape the target folder."""

    exit_code = ExitCode.UNSAFE_PATH
    errno = errno.EPERM


class UnsupportedError(DarkstorageError):
    """The requested feature or connector is not available here (the message says why)."""

    exit_code = ExitCode.UNSUPPORTED
    errno = errno.EOPNOTSUPP


class JobFailedError(DarkstorageError):
    """One or more scheduled jobs failed (their errors are recorded with the job)."""

    exit_code = ExitCode.JOB_FAILED
