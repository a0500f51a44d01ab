"""Run a pyftpdlib FTP server (FTPS, TLS required on control and data, when given a certificate) until it is killed (SIGTERM ends it at once; the files are on disk).

Usage: ``python ftpd_main.py HOST PORT ROOT USER PASSWORD [CERTFILE KEYFILE]``. Run by path by
``tests.servers.files.FtpServer``; standalone so it needs no package import.
"""

from __future__ import annotations

import logging
import sys


def main(argv: list[str]) -> None:
    from pyftpdlib.authorizers import DummyAuthorizer
    from pyftpdlib.handlers import FTPHandler
    from pyftpdlib.servers import FTPServer

    host, port, root, user, password, *tls = argv
    authorizer = DummyAuthorizer()
    authorizer.add_user(user, password, root, perm="elradfmwMT")
    handler: type[FTPHandler] = FTPHandler
    if tls:
        from pyftpdlib.handlers import TLS_FTPHandler

        TLS_FTPHandler.certfile, TLS_FTPHandler.keyfile = tls
        TLS_FTPHandler.tls_control_required = TLS_FTPHandler.tls_data_required = True
        handler = TLS_FTPHandler
    handler.authorizer = authorizer
    handler.auth_failed_timeout = 0.05  # default 3 s pause after a wrong password
    handler.banner = "darkstorage test ftpd ready"
    server = FTPServer((host, int(port)), handler)
    server.max_cons = 256
    server.serve_forever(handle_exit=True)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    main(sys.argv[1:])
