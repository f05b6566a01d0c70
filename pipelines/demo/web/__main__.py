"""Command line: build a demo web, or serve a built one until interrupted.

    python -m pipelines.demo.web build --out demo --n 1000 --seed 0
    python -m pipelines.demo.web serve --out demo --port 8765
"""

from __future__ import annotations

import argparse
import json
import logging
import threading
from pathlib import Path

from pipelines.demo.web.build import build_demo_web
from pipelines.demo.web.serve import DemoWebServer


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m pipelines.demo.web")
    commands = parser.add_subparsers(dest="command", required=True)
    build = commands.add_parser("build", help="build a demo web")
    build.add_argument("--out", type=Path, required=True)
    build.add_argument("--n", type=int, default=1000)
    build.add_argument("--seed", type=int, default=0)
    build.add_argument("--min-size", type=int, default=64)
    build.add_argument("--max-size", type=int, default=1600)
    build.add_argument("--workers", type=int, default=None)
    serve = commands.add_parser("serve", help="serve a built demo web on 127.0.0.1")
    serve.add_argument("--out", type=Path, required=True)
    serve.add_argument("--port", type=int, default=0)
    serve.add_argument("--slow-seconds", type=float, default=10.0)
    return parser


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    args = _parser().parse_args(argv)
    if args.command == "build":
        summary = build_demo_web(args.out, args.n, args.seed, args.min_size, args.max_size, args.workers)
        print(json.dumps(summary, indent=1))
        return
    with DemoWebServer(args.out, port=args.port, slow_seconds=args.slow_seconds) as server:
        print(f"serving {args.out} at {server.base_url} (urls in {args.out}/urls.*); Ctrl-C to stop")
        try:
            threading.Event().wait()
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()
