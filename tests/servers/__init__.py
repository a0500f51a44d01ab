"""Real storage servers for the tests, started on 127.0.0.1 on free ports (pytest plugin, loaded by
``pytest_plugins = ["tests.servers.fixtures"]`` in tests/conftest.py).

Usage note for test authors
---------------------------
Session-scoped fixtures, each yielding a ``StoreServer`` (tests/servers/base.py):

=================  =====================================  ========  ==========================
fixture            server                                 protocol  ``fresh_root()`` returns
=================  =====================================  ========  ==========================
``s3_server``      SeaweedFS ``weed server -s3``          s3        ``"bucket"``
``moto_server``    moto (storage classes, RestoreObject)  s3        ``"bucket"``
``azure_server``   Azurite blob (devstoreaccount1)        abfs      ``"container"``
``gcs_server``     fake-gcs-server (no auth checks)       gcs       ``"bucket"``
``sftp_server``    OpenSSH sshd, key login                sftp      ``"/abs/local/path"``
``ftp_server``     pyftpdlib                              ftp       ``"/name"``
``ftps_server``    pyftpdlib, AUTH TLS, self-signed       ftp       ``"/name"``
``webdav_server``  WsgiDAV on cheroot, basic auth         webdav    ``"name"``
=================  =====================================  ========  ==========================

Every server object has:

- ``host``, ``port``, ``endpoint`` (URL for HTTP stores, ``host:port`` otherwise), ``user``,
  ``secret`` (valid credentials), ``wrong_secret`` (rejected); ``checks_credentials`` is False only
  for fake-gcs-server. sshd logs in ``user`` with the key file ``client_key``; ``wrong_key`` is refused.
- ``fresh_root()``: a new empty bucket / container / folder per call, returned as a path in the
  filesystem; write files under ``f"{root}/..."``.
- ``filesystem(wrong=False)`` and ``fsspec_kwargs(wrong=False)``: a new fsspec filesystem
  (``skip_instance_cache=True``) with short connect timeouts and few retries.
- ``stop(kill=False)`` / ``start()`` / ``restart()``: same port, same data (moto excepted: it is in
  memory, comes back empty with new keys in ``user``/``secret``). Use ``stop(kill=True)`` to crash it
  mid-transfer. A test that stops a session server must ``start()`` it again before it ends.
- ``settle()``: wait until what was acknowledged survives ``stop(kill=True)``; only Azurite needs it
  (it saves its metadata every 5 s), a no-op elsewhere.
- ``log_path`` / ``log_tail()``: the server log. What each server wrote during a failed test is
  appended to its report, however the test reached the server (argument or getfixturevalue).
- Extras: S3 ``boto3_client()`` and ``region``; Azure ``connection_string(wrong=False)`` and
  ``blob_service()``; folder servers (sftp/ftp/webdav) ``files`` (exported dir) and ``local_path(root)``.

Client quirks met while building these (fsspec backends, not the servers): fsspec's FTP does not
create parent folders on write (``makedirs`` first); sshfs' ``cat_file`` ignores ``start``/``end`` (use
``open`` + ``seek``); an S3 HEAD refused for a wrong key says only "Forbidden"; a wrong-key error is
PermissionError (s3fs, sshfs), azure HttpResponseError 403, ftplib.error_perm 530, webdav4 HTTPError 401.

Archive behaviour: moto refuses GetObject on GLACIER / DEEP_ARCHIVE objects (InvalidObjectState)
until RestoreObject, which completes at once (``x-amz-restore: ongoing-request="false"``); Azurite
refuses to read an Archive blob (409 BlobArchived) and rehydrates at once when the tier is set back.
Neither shows a pending restore.

``SERVER_FIXTURES`` in ``tests.servers.fixtures`` names them all, for suites parametrized over every
server (``request.getfixturevalue(name)``). Mark such tests ``@pytest.mark.server``.
"""

import os

from tests.servers.cloud import disable_gcsfs_zonal_probe

disable_gcsfs_zonal_probe()

# The servers are on loopback: an http(s)_proxy from the environment must not catch their traffic.
for _var in ("NO_PROXY", "no_proxy"):
    os.environ[_var] = ",".join(filter(None, [os.environ.get(_var, ""), "127.0.0.1", "localhost"]))
