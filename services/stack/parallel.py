"""Run independent start-up steps on threads: the stack is mostly waiting, so waits should overlap."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait


def run_parallel(steps: Sequence[Callable[[], None]], abort: threading.Event, name: str = "macp") -> None:
    """Run every step on its own thread and return when all are done.

    The first step to fail sets `abort` (every wait in the stack watches it, so the other steps
    give up promptly), the rest are waited for, and that first error is raised. An interrupt in
    the calling thread does the same, so no step is left running behind the caller's back.
    """
    if not steps:
        return
    with ThreadPoolExecutor(max_workers=len(steps), thread_name_prefix=name) as pool:
        futures = [pool.submit(step) for step in steps]
        try:
            pending = set(futures)
            while pending:
                done, pending = wait(pending, return_when=FIRST_EXCEPTION)
                for future in done:
                    error = future.exception()
                    if error is not None:
                        raise error
        except BaseException:
            abort.set()
            wait(futures)
            raise
