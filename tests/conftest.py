"""Fixtures shared by the test modules."""
from __future__ import annotations

import os
from typing import Callable, Iterator

import pytest

import gradc.backends.jit as jit
from gradc.backends.threads import POOL


@pytest.fixture(scope="session", autouse=True)
def private_runtime_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Tests compile the shared runtime into a cache of their own, not the user's ~/.cache/gradc
    (unless GRADC_CACHE_DIR says where): a stale or foreign file there can't decide a result."""
    if "GRADC_CACHE_DIR" in os.environ:
        yield
        return
    os.environ["GRADC_CACHE_DIR"] = str(tmp_path_factory.mktemp("gradc-cache"))
    yield
    del os.environ["GRADC_CACHE_DIR"]


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
