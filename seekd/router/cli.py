"""`seekd router --config router.yaml`: the flags; the YAML holds the rest (see router/config.py)."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_router_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    router = sub.add_parser(
        "router", usage="%(prog)s --config FILE [options]", help="run the gateway in front of several replicas"
    )
    router.add_argument("--config", metavar="FILE", required=True, help="router YAML: backends, routes, cache, spill")
    router.add_argument("--host", default=None, help="listen address; unset = listen.host of the YAML")
    router.add_argument(
        "--port", type=int, default=None, metavar="N", help="listen port; unset = listen.port of the YAML"
    )
    return router


def run_router_command(args: argparse.Namespace) -> int:
    from seekd.router.app import run_router

    return run_router(Path(args.config), args.host, args.port)
