"""Fixtures shared by the test modules."""
from __future__ import annotations

from typing import Callable, Iterator

import pytest

import gradc.backends.jit as jit
from gradc.backends.threads import POOL


@pytest.fixture
def parallel_work() -> Iterator[Callable[[float], None]]:
    """Set the operation count from which calls use the helper threads (0: always, inf: never),
    for native and Python callers alike, until the test ends."""
    assert POOL.threads >= 2, "these tests compare one thread with two: run them with two CPUs"
    previous = float(jit.PARALLEL_WORK[0])

    def set_threshold(operations: float) -> None:
        jit.PARALLEL_WORK[0] = operations
    yield set_threshold
    jit.PARALLEL_WORK[0] = previous
