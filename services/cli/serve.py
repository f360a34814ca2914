"""`macp serve NAME`: run one service, or the edge, in the foreground (what `python -m` does)."""

from __future__ import annotations

import argparse
import runpy

from services.runtime.registry import EDGE, SERVICES


def configure(parser: argparse.ArgumentParser) -> None:
    names = [spec.name for spec in SERVICES] + [EDGE.name]
    parser.add_argument("name", choices=names, help="the service to run")


def run(args: argparse.Namespace) -> int:
    modules = {spec.name: spec.module for spec in SERVICES} | {EDGE.name: EDGE.module}
    runpy.run_module(modules[args.name], run_name="__main__", alter_sys=True)
    return 0
