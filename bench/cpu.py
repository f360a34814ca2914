"""CPU seconds spent by each process of a slice (with its children) between two readings.

On a 2-core machine latency under load is mostly queueing for CPU, so CPU per request, split by
process, is what says where the time goes. Postgres serves each connection from a child of its
postmaster, hence the children; a child that has exited and been reaped by its parent still counts,
through the parent's reaped-children times (cutime and cstime in /proc/<pid>/stat).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping, Sequence, Sized

import psutil

from bench.stats import markdown_table

CLIENT = "client"


def _cpu_seconds(pid: int, *, children: bool) -> float:
    """user + system CPU of pid; with `children`, also of every descendant alive now and of every
    descendant already reaped (a child that ended between two readings keeps its time)."""
    try:
        root = psutil.Process(pid)
        family = [root, *root.children(recursive=True)] if children else [root]
    except psutil.Error:
        return 0.0
    total = 0.0
    for process in family:
        with contextlib.suppress(psutil.Error):
            times = process.cpu_times()
            total += times.user + times.system
            if children:
                total += times.children_user + times.children_system
    return total


class CpuMeter:
    """Reads the CPU of named processes (with their children) and of this process, the load
    generator, as `client` (without its children: it is the parent of the whole slice)."""

    def __init__(self, pids: Mapping[str, int]) -> None:
        self.pids = dict(pids)

    def read(self) -> dict[str, float]:
        reading = {CLIENT: _cpu_seconds(os.getpid(), children=False)}
        return reading | {name: _cpu_seconds(pid, children=True) for name, pid in self.pids.items()}

    @staticmethod
    def spent(before: Mapping[str, float], after: Mapping[str, float]) -> dict[str, float]:
        return {name: max(0.0, after[name] - before[name]) for name in before}


def cpu_per_turn_table(
    rows: Mapping[str, tuple[Sized, float, Mapping[str, float]]], columns: Sequence[str]
) -> str:
    """One row per measured path (its turns, wall seconds and CPU seconds by process): turns/s,
    then CPU ms per turn for each of `columns`, the other processes together, and the stack's total
    (every process but the load generator, in bold)."""
    table = []
    for name, (turns, seconds, cpu) in rows.items():
        per_turn = {process: spent * 1000 / len(turns) for process, spent in cpu.items()}
        others = sum(value for process, value in per_turn.items() if process not in columns)
        table.append(
            [
                name,
                f"{len(turns) / seconds:.1f}",
                *(f"{per_turn.get(process, 0.0):.2f}" for process in columns),
                f"{others:.2f}",
                f"**{sum(per_turn.values()) - per_turn.get(CLIENT, 0.0):.2f}**",
            ]
        )
    return markdown_table(["row", "turns/s", *columns, "others", "stack total"], table)
