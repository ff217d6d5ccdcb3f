"""``python -m bench.serve_app APP --port N --workers W``: an app under test (``module:attr``)
served the way ``shopvault serve`` serves shopvault (``app.server.serve``: the product's uvicorn
options, and a listening socket per worker so that the connections spread over the workers).
Every app of ``make bench`` is served so, the bare app included: the comparison is of the apps,
not of how their connections were dealt out."""

from __future__ import annotations

import argparse
import sys

from app.server import serve


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.serve_app", description=__doc__)
    parser.add_argument("app")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args(argv)
    return serve(args.app, host=args.host, port=args.port, workers=args.workers)


if __name__ == "__main__":
    sys.exit(main())
