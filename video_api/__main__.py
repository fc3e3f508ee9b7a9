"""``python -m video_api``: the OpenAI-compatible video jobs API in front of a running Triton.

    python -m video_api serve --triton-url 127.0.0.1:8001 [--port 8080] [--database sqlite:///video_jobs.db]
    python -m video_api keys create NAME [--max-running 2] [--max-queued 8]   # prints the key once

Loopback by default, like the server. `serve` takes `--api-key` (or $WAN22_API_KEY) as the key named `default`; with
no key at all in the database and none given, it makes one and prints it once.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Sequence

from . import API_KEY_ENV, DATABASE_ENV, DEFAULT_DATABASE, DEFAULT_PORT, DEFAULT_RESULTS, RESULTS_ENV, shown_url
from .store import JobStore

DEFAULT_KEY_NAME = "default"


def _quota_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--max-running", type=int, default=2, help="jobs of the key generating at once")
    parser.add_argument("--max-queued", type=int, default=8, help="jobs of the key queued or running; more get 429")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m video_api", description=__doc__.split("\n\n")[0])
    parser.add_argument("--database", default=os.environ.get(DATABASE_ENV) or DEFAULT_DATABASE,
                        help=f"SQLAlchemy URL: sqlite:///FILE or postgresql+psycopg://USER@HOST/DB (default "
                             f"${DATABASE_ENV}, else {DEFAULT_DATABASE})")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the HTTP service and its job runner")
    serve.add_argument("--triton-url", default="127.0.0.1:8001", help="Triton's gRPC address")
    serve.add_argument("--host", default="127.0.0.1", help="listen address (0.0.0.0: every interface)")
    serve.add_argument("--port", type=int, default=DEFAULT_PORT)
    serve.add_argument("--results", type=Path, default=Path(os.environ.get(RESULTS_ENV) or DEFAULT_RESULTS),
                       help=f"folder of the MP4 results (default ${RESULTS_ENV}, else {DEFAULT_RESULTS})")
    serve.add_argument("--api-key", default=os.environ.get(API_KEY_ENV), help=f"default ${API_KEY_ENV}")
    serve.add_argument("--workers", type=int, default=2, help="jobs this process runs at once")
    serve.add_argument("--lease-seconds", type=float, default=30.0,
                       help="a running job whose process has not refreshed it for this long is failed as lost")
    serve.add_argument("--retention-hours", type=float, default=24.0, help="how long results are kept")
    serve.add_argument("--max-results-gb", type=float, default=50.0, help="results kept at most, oldest go first")
    _quota_flags(serve)
    keys = commands.add_parser("keys", help="API keys").add_subparsers(dest="action", required=True)
    create = keys.add_parser("create", help="make a key and print it (stored hashed: it is shown once)")
    create.add_argument("name")
    _quota_flags(create)
    args = parser.parse_args(argv)
    try:
        store = JobStore(args.database)
    except Exception as e:  # a bad URL, a database that does not answer
        parser.exit(2, f"error: cannot open the job database {shown_url(args.database)}: {e.__class__.__name__}: {e}\n")
    if args.command == "keys":
        print(store.add_key(args.name, args.max_running, args.max_queued))
        return 0
    return _serve(args, store)


def _serve(args: argparse.Namespace, store: JobStore) -> int:
    import uvicorn

    from .app import Settings, create_app

    if args.api_key:
        store.ensure_key(DEFAULT_KEY_NAME, args.api_key, args.max_running, args.max_queued)
    elif not store.has_keys():
        key = store.add_key(DEFAULT_KEY_NAME, args.max_running, args.max_queued)
        print(f"[video_api] API key (shown once, stored hashed): {key}", file=sys.stderr, flush=True)
    settings = Settings(triton_url=args.triton_url, database=args.database, results=args.results,
                        workers=args.workers, lease_s=args.lease_seconds, retention_s=args.retention_hours * 3600,
                        max_results_bytes=int(args.max_results_gb * (1 << 30)))
    print(f"[video_api] serving /v1/videos on http://{args.host}:{args.port} (Triton gRPC {args.triton_url}, jobs in "
          f"{shown_url(args.database)})", file=sys.stderr, flush=True)
    uvicorn.run(create_app(settings, store), host=args.host, port=args.port, log_level="warning")
    return 0


if __name__ == "__main__":
    sys.exit(main())
