"""Run a WsgiDAV WebDAV server (cheroot) with one basic-auth user until it is killed (SIGTERM ends it at once; the files are on disk).

Usage: ``python davd_main.py HOST PORT ROOT USER PASSWORD``. Run by path by
``tests.servers.files.WebdavServer``; standalone so it needs no package import.
"""

from __future__ import annotations

import sys


def main(argv: list[str]) -> None:
    from cheroot import wsgi
    from wsgidav.wsgidav_app import WsgiDAVApp

    host, port, root, user, password = argv
    config = {
        "host": host,
        "port": int(port),
        "provider_mapping": {"/": root},
        "simple_dc": {"user_mapping": {"*": {user: {"password": password}}}},
        "http_authenticator": {"accept_basic": True, "accept_digest": False, "default_to_digest": False},
        "verbose": 1,
        "logging": {"enable": True, "enable_loggers": []},
        "property_manager": True,
        "lock_storage": True,
    }
    app = WsgiDAVApp(config)
    server = wsgi.Server((host, int(port)), app, numthreads=16)
    try:
        server.start()
    except KeyboardInterrupt:
        server.stop()


if __name__ == "__main__":
    main(sys.argv[1:])
