"""Serve one service in the foreground: ``python -m sandboxes.services {search,api} [--port N]``.

Prints ``URL <url>`` (and ``ADMIN_KEY <key>`` for the API) on stdout once it is listening,
then serves until SIGINT/SIGTERM. Give the URL (and key) to an env as ``search_url`` /
``api_url`` + ``api_admin_key``.
"""
from __future__ import annotations

import argparse
import os
import secrets

from sandboxes.services.server import SERVICES, listening_socket, uvicorn_server


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m sandboxes.services", description=__doc__.splitlines()[0])
    parser.add_argument("kind", choices=sorted(SERVICES))
    parser.add_argument("--port", type=int, default=0, help="TCP port on 127.0.0.1 (0: any free port)")
    parser.add_argument("--admin-key", default=os.environ.get("APPO_API_ADMIN_KEY"),
                        help="API session-management key (default: $APPO_API_ADMIN_KEY or a random one)")
    args = parser.parse_args(argv)
    spec = SERVICES[args.kind]
    key = (args.admin_key or secrets.token_urlsafe(24)) if spec.uses_admin_key else None
    app = spec.build(key)
    sock = listening_socket(args.port)
    print(f"URL http://127.0.0.1:{sock.getsockname()[1]}", flush=True)
    if key is not None:
        print(f"ADMIN_KEY {key}", flush=True)
    uvicorn_server(app).run(sockets=[sock])


if __name__ == "__main__":
    main()
