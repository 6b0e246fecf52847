"""Helper threads for compiled calls: each runs the same native entry as the caller, with its own
thread index, and the native code splits the work and meets at barriers between kernels.

ctypes releases the GIL during a native call, so a helper thread runs alongside the caller. One
set of helpers serves the whole process; a call that finds them busy (another Python thread is
using them) runs on one thread instead of waiting, so concurrent callers never block each other.
"""
from __future__ import annotations

import os
import threading
from typing import Any, Callable

MAX_THREADS = max(1, min(os.cpu_count() or 1, 8))


class _Helper:
    def __init__(self, index: int) -> None:
        self.index = index
        self.job: tuple[Callable, tuple] | None = None
        self.go = threading.Event()
        self.done = threading.Event()
        threading.Thread(target=self._run, name=f"gradc-helper-{index}", daemon=True).start()

    def _run(self) -> None:
        while True:
            self.go.wait()
            self.go.clear()
            fn, args = self.job
            fn(*args, self.index)
            self.done.set()


class HelperPool:
    """Threads 1..n-1 of a parallel call; thread 0 is the caller."""

    def __init__(self, threads: int) -> None:
        self.threads = threads
        self._busy = threading.Lock()
        self._helpers: list[_Helper] = []

    def run(self, fn: Callable[..., Any], *args: Any) -> bool:
        """Run fn(*args, thread) on every thread; False (nothing run) when the helpers are busy."""
        if self.threads < 2 or not self._busy.acquire(blocking=False):
            return False
        try:
            if not self._helpers:
                self._helpers = [_Helper(i) for i in range(1, self.threads)]
            for h in self._helpers:
                h.done.clear()
                h.job = (fn, args)
                h.go.set()
            fn(*args, 0)
            for h in self._helpers:
                h.done.wait()
        finally:
            self._busy.release()
        return True


POOL = HelperPool(MAX_THREADS)
