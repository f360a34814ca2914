"""`macp up` with stand-in services: `python -m tests.stack.fake_up --data-dir DIR`.

Everything else is real (Postgres, Redis, S3, Kafka, Envoy with the real rendered config, the
launcher's start, watch and stop paths); only each registry module is replaced by fake_service.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from pathlib import Path

from services.stack.plan import StackPlan
from services.stack.up import Launcher


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--timeout", type=float, default=45.0)
    args = parser.parse_args()
    plan = StackPlan.from_environ(os.environ, data_dir_override=args.data_dir, ready_timeout=args.timeout)
    plan.apps = tuple(
        dataclasses.replace(
            app, argv=(sys.executable, "-m", "tests.stack.fake_service", app.kind, str(app.port), app.name)
        )
        for app in plan.apps
    )
    return Launcher(plan).run()


if __name__ == "__main__":
    sys.exit(main())
