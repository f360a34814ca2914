"""One benchmark run from two trees in turns: a commit before a change, and this tree after it.

    python -m bench.interleaved --before <commit> --runs 3 -- bench.conversation --concurrency 1

A change that should cost nothing is measured against the code before it on the same machine in
the same minutes: the runs alternate (before, after, before, after, ...), so a machine that gets
busier or quieter moves both sides alike. The commit is checked out as a detached git worktree,
removed at the end. What differs between the sides is only the code of the processes the
benchmark starts (`python -m services.<name>`, which import from their working directory): the
benchmark itself, its load, its clients and its report are this tree's on both sides, as are the
Python and the packages. Each run's report goes to stdout under a header naming its side and turn.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


@contextmanager
def worktree_at(commit: str) -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="macp-before-") as scratch:
        tree = Path(scratch) / "tree"
        subprocess.run(
            ["git", "-C", str(REPO_ROOT), "worktree", "add", "--detach", str(tree), commit],
            check=True,
            capture_output=True,
        )
        try:
            yield tree
        finally:
            subprocess.run(
                ["git", "-C", str(REPO_ROOT), "worktree", "remove", "--force", str(tree)],
                check=False,
                capture_output=True,
            )


# Runs `<module> [args]` as `python -m` would, but with this tree first on the import path; the
# working directory (the side's tree) comes next, and is first for the processes it starts.
_RUNNER = (
    "import runpy, sys; sys.path.insert(0, sys.argv.pop(1)); "
    "runpy.run_module(sys.argv.pop(1), run_name='__main__', alter_sys=True)"
)


def run_in(tree: Path, command: Sequence[str]) -> int:
    """This tree's benchmark module, started in `tree`: the services it starts are that tree's."""
    argv = [sys.executable, "-c", _RUNNER, str(REPO_ROOT), *command]
    return subprocess.run(argv, cwd=tree, check=False).returncode


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.interleaved", description=__doc__)
    parser.add_argument("--before", required=True, help="the commit before the change")
    parser.add_argument("--runs", type=int, default=3, help="runs per side")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- <bench module> [its options]")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("name the benchmark module after --, for example -- bench.conversation")
    with worktree_at(args.before) as before:
        for turn in range(1, args.runs + 1):
            for side, tree in (("before", before), ("after", REPO_ROOT)):
                print(f"\n### {side} ({turn} of {args.runs}): {' '.join(command)}", flush=True)
                status = run_in(tree, command)
                if status != 0:
                    print(f"### {side} run {turn} failed with exit code {status}", flush=True)
                    return status
    return 0


if __name__ == "__main__":
    sys.exit(main())
