"""`beacon serve`: the HTTP API (uvicorn). Jobs are run by `beacon worker`, not by the server."""

from __future__ import annotations

import argparse

EPILOG = """Settings come from BEACON_* variables; BEACON_API_TOKEN is required unless --dev.
  BEACON_API_TOKEN=$(openssl rand -hex 32) beacon serve --host 0.0.0.0 --port 8000
OpenAPI: http://HOST:PORT/docs"""


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="serve the HTTP API",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--host", help="address to bind (default: BEACON_HOST or 127.0.0.1)")
    p.add_argument("--port", type=int, help="port to bind (default: BEACON_PORT or 8000)")
    p.add_argument("--dev", action="store_true",
                   help="allow running without BEACON_API_TOKEN (local development only)")
    p.add_argument("--access-log", action="store_true", help="log every request")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    import uvicorn

    from service.api.app import create_app
    from service.query import start_query_processes
    from service.settings import get_settings

    overrides = {k: v for k, v in {"host": args.host, "port": args.port}.items() if v is not None}
    if args.dev:
        overrides["dev_mode"] = True
    settings = get_settings().model_copy(update=overrides)
    app = create_app(settings)  # refuses to build without a token outside dev mode
    start_query_processes()  # while uvicorn starts: the first query then forks in milliseconds
    uvicorn.run(app, host=settings.host, port=settings.port, access_log=args.access_log,
                log_level="info", timeout_graceful_shutdown=5)
    return 0
