"""Both cores: kernels split across threads give the same bits as one thread, under any timing."""
from __future__ import annotations

import threading

import numpy as np
import pytest

import gradc as gc
import gradc.backends.jit as jit
from gradc.backends.threads import POOL
from gradc.ir import interpret

RNG = np.random.default_rng(11)


def seed_loss(U, V, x, y):
    g = gc.sigmoid(x @ U.T)
    return gc.mean((g @ V.T - y) ** 2)


def mlp_loss(W1, b1, W2, x, t):
    a = gc.relu(x @ W1.T + b1)
    return gc.softmax_cross_entropy(a @ W2.T, t)


CASES = {
    "seed": (gc.value_and_grad(seed_loss, wrt=("U", "V")),
             [(150, 97), (7, 150), (133, 97), (133, 7)]),
    "mlp": (gc.value_and_grad(mlp_loss, wrt=("W1", "b1", "W2")),
            [(200, 64), (200,), (10, 200), (90, 64), "onehot"]),
    "transposes": (gc.jit(lambda a, b: (gc.tanh(a.T @ b.T), a @ a.T, b.T @ b)),
                   [(129, 70), (90, 129)]),
}


def arguments(shapes, dtype):
    out = []
    for s in shapes:
        if s == "onehot":
            out.append(np.eye(10, dtype=dtype)[RNG.integers(0, 10, 90)])
        else:
            out.append(RNG.standard_normal(s).astype(dtype))
    return out


def flatten(result):
    if isinstance(result, np.ndarray):
        return [result]
    return [a for item in result for a in flatten(item)] if isinstance(result, (tuple, list)) else [np.asarray(result)]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", sorted(CASES))
def test_parallel_results_are_bitwise_those_of_one_thread(monkeypatch, case, dtype):
    fn, shapes = CASES[case]
    args = arguments(shapes, dtype)
    monkeypatch.setattr(jit, "PARALLEL_WORK", float("inf"))
    single = flatten(fn(*args))
    monkeypatch.setattr(jit, "PARALLEL_WORK", 0.0)
    assert POOL.threads >= 2, "the machine these tests run on has two cores"
    for _ in range(5):
        for a, b in zip(single, flatten(fn(*args))):
            np.testing.assert_array_equal(a, b)


def test_parallel_results_match_the_interpreter(monkeypatch):
    fn, shapes = CASES["mlp"]
    args = arguments(shapes, np.float64)
    monkeypatch.setattr(jit, "PARALLEL_WORK", 0.0)
    lowered = fn.lower(*args)
    for got, want in zip(lowered.native(*args), interpret(lowered.graphs["optimized"], *args)):
        np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)


def test_callers_on_many_threads_share_the_helpers_safely(monkeypatch):
    """Four Python threads call at once: one gets the helper threads, the others run alone."""
    monkeypatch.setattr(jit, "PARALLEL_WORK", 0.0)
    fn, shapes = CASES["seed"]
    inputs = [arguments(shapes, np.float64) for _ in range(8)]
    expected = [flatten(fn(*a)) for a in inputs]
    results: dict[int, list] = {}
    barrier = threading.Barrier(4)

    def worker(w: int) -> None:
        barrier.wait()
        for i in range(w, len(inputs), 4):
            for _ in range(3):
                results.setdefault(i, []).append(flatten(fn(*inputs[i])))

    threads = [threading.Thread(target=worker, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i, runs in results.items():
        for run in runs:
            for a, b in zip(expected[i], run):
                np.testing.assert_array_equal(a, b)
    assert len(results) == len(inputs)


def test_a_matmul_kernel_that_reduces_its_output_splits_across_threads(monkeypatch):
    """The seed loss kernel (h = g Vᵀ, then mean((h − y)²)) runs on both cores: its reduction is summed
    per panel of columns, and the panels in order, so one or two threads give the same bits."""
    from gradc.backends.codegen import combines, is_parallel
    fn, shapes = CASES["seed"]
    args = arguments(shapes, np.float32)
    lowered = fn.lower(*args)
    loss_kernels = [k for k in lowered.fusion.kernels if k.matmul is not None and k.reduced is not None]
    assert loss_kernels and all(is_parallel(k) and combines(k) for k in loss_kernels)
    monkeypatch.setattr(jit, "PARALLEL_WORK", float("inf"))
    single = flatten(fn(*args))
    monkeypatch.setattr(jit, "PARALLEL_WORK", 0.0)
    for a, b in zip(single, flatten(fn(*args))):
        np.testing.assert_array_equal(a, b)
    want = np.mean((1 / (1 + np.exp(-(args[2].astype(np.float64) @ args[0].T))) @ args[1].T - args[3]) ** 2)
    np.testing.assert_allclose(single[0], want, rtol=1e-5)


@pytest.mark.parametrize("columns", [7, 300])
def test_a_reducing_matmul_kernel_splits_rows_or_columns_with_the_same_bits(monkeypatch, columns):
    """Few columns: threads split rows, partial results per row block; many: columns, per panel."""
    from gradc.backends.codegen import combines, split_rows
    fn = gc.jit(lambda a, b: (gc.sum(gc.tanh(a @ b)), gc.max(a @ b)))
    a, b = RNG.standard_normal((211, 45)), RNG.standard_normal((45, columns))
    (kernel,) = [k for k in fn.lower(a, b).fusion.kernels if k.matmul is not None]
    assert combines(kernel) and split_rows(kernel) == (columns == 7)
    monkeypatch.setattr(jit, "PARALLEL_WORK", float("inf"))
    single = fn(a, b)
    monkeypatch.setattr(jit, "PARALLEL_WORK", 0.0)
    for _ in range(3):
        for x, y in zip(single, fn(a, b)):
            np.testing.assert_array_equal(x, y)
    np.testing.assert_allclose(single[0], np.tanh(a @ b).sum(), rtol=1e-10)
    np.testing.assert_allclose(single[1], (a @ b).max(), rtol=1e-12)
