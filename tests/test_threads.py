"""Both cores: kernels split across threads give the same bits as one thread, under any timing."""
from __future__ import annotations

import threading

import numpy as np
import pytest

import gradc as gc
import gradc.backends.jit as jit
from gradc.backends.codegen import FLOAT_TYPES
from gradc.backends.gemm import gemm_nr
from gradc.backends.threads import POOL
from gradc.ir import interpret

RNG = np.random.default_rng(11)
F64_NR = gemm_nr(FLOAT_TYPES["f64"])  # one panel of columns of the host's float64 GEMM tile


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


def packed_ahead(parallel_work, lowered, args) -> bool:
    """Whether a two-thread call of `lowered` ran a step packing a transposed A (it is skipped when
    its GEMM does not balance): timed by the profiler."""
    parallel_work(0.0)
    steps = [s for s in lowered.profile(*args, calls=2).steps if s.name.endswith(".pack_a")]
    assert steps, "no pack step compiled"
    return all(s.seconds > 0 for s in steps)


def agree_on_any_thread_count(parallel_work, fn, args, lowered, calls=3, rtol=1e-10, atol=1e-12) -> None:
    """fn(*args) on two threads gives the bits of one thread, call after call, and matches the
    interpreter on the lowered graph."""
    parallel_work(float("inf"))
    single = flatten(fn(*args))
    parallel_work(0.0)
    for _ in range(calls):
        for a, b in zip(single, flatten(fn(*args))):
            np.testing.assert_array_equal(a, b)
    for got, want in zip(single, interpret(lowered.graphs["optimized"], *args)):
        np.testing.assert_allclose(got, want, rtol=rtol, atol=atol)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", sorted(CASES))
def test_parallel_results_are_bitwise_those_of_one_thread(parallel_work, case, dtype):
    fn, shapes = CASES[case]
    args = arguments(shapes, dtype)
    parallel_work(float("inf"))
    single = flatten(fn(*args))
    parallel_work(0.0)
    assert POOL.threads >= 2, "the machine these tests run on has two cores"
    for _ in range(5):
        for a, b in zip(single, flatten(fn(*args))):
            np.testing.assert_array_equal(a, b)


def test_parallel_results_match_the_interpreter(parallel_work):
    fn, shapes = CASES["mlp"]
    args = arguments(shapes, np.float64)
    parallel_work(0.0)
    lowered = fn.lower(*args)
    for got, want in zip(lowered.native(*args), interpret(lowered.graphs["optimized"], *args)):
        np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)


def test_callers_on_many_threads_share_the_helpers_safely(parallel_work):
    """Four Python threads call at once: one gets the helper threads, the others run alone."""
    parallel_work(0.0)
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


def test_a_matmul_kernel_that_reduces_its_output_splits_across_threads(parallel_work):
    """The seed loss kernel (h = g Vᵀ, then mean((h − y)²)) runs on both cores: its reduction is summed
    per panel of columns, and the panels in order, so one or two threads give the same bits."""
    from gradc.backends.codegen import combines, is_parallel
    fn, shapes = CASES["seed"]
    args = arguments(shapes, np.float32)
    lowered = fn.lower(*args)
    loss_kernels = [k for k in lowered.fusion.kernels if k.matmul is not None and k.reduced is not None]
    assert loss_kernels and all(is_parallel(k) and combines(k) for k in loss_kernels)
    parallel_work(float("inf"))
    single = flatten(fn(*args))
    parallel_work(0.0)
    for a, b in zip(single, flatten(fn(*args))):
        np.testing.assert_array_equal(a, b)
    want = np.mean((1 / (1 + np.exp(-(args[2].astype(np.float64) @ args[0].T))) @ args[1].T - args[3]) ** 2)
    np.testing.assert_allclose(single[0], want, rtol=1e-5)


@pytest.mark.parametrize("columns", [7, 300])
def test_a_reducing_matmul_kernel_splits_rows_or_columns_with_the_same_bits(parallel_work, columns):
    """Few columns: threads split rows, partial results per row block; many: columns, per panel."""
    from gradc.backends.codegen import combines, split_rows
    fn = gc.jit(lambda a, b: (gc.sum(gc.tanh(a @ b)), gc.max(a @ b)))
    a, b = RNG.standard_normal((211, 45)), RNG.standard_normal((45, columns))
    (kernel,) = [k for k in fn.lower(a, b).fusion.kernels if k.matmul is not None]
    assert combines(kernel) and split_rows(kernel) == (columns == 7)
    parallel_work(float("inf"))
    single = fn(a, b)
    parallel_work(0.0)
    for _ in range(3):
        for x, y in zip(single, fn(a, b)):
            np.testing.assert_array_equal(x, y)
    np.testing.assert_allclose(single[0], np.tanh(a @ b).sum(), rtol=1e-10)
    np.testing.assert_allclose(single[1], (a @ b).max(), rtol=1e-12)


@pytest.fixture
def balanced(monkeypatch):
    """GEMM kernels compiled meanwhile claim shrinking chunks of columns however little their work,
    the smallest a single panel: many claims, and a transposed A packed in a step of its own."""
    from gradc.backends import chunks
    monkeypatch.setattr(chunks, "DYNAMIC_WORK", 0)
    monkeypatch.setattr(chunks, "MIN_CHUNK_WORK", 0)


@pytest.mark.parametrize("ta,tb", [(False, False), (True, False), (False, True), (True, True)])
def test_a_reducing_matmul_kernel_with_any_transposes(parallel_work, balanced, ta, tb):
    """A transposed A is packed in a step of its own (`prepacks_a`); the kernel's tile epilogue
    still finds its partial results (it once read the packed A's buffer in their place)."""
    from gradc.backends.codegen import prepacks_a
    fn = gc.jit(lambda a, b: gc.sum(gc.sigmoid((a.T if ta else a) @ (b.T if tb else b))))
    a = RNG.standard_normal((129, 150) if ta else (150, 129))  # M < N: split by columns
    b = RNG.standard_normal((200, 129) if tb else (129, 200))
    want = (1 / (1 + np.exp(-((a.T if ta else a) @ (b.T if tb else b))))).sum()
    assert prepacks_a(fn.lower(a, b).fusion.kernels[0]) == ta
    for work in (float("inf"), 0.0):
        parallel_work(work)
        np.testing.assert_allclose(fn(a, b), want, rtol=1e-12)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("k", [1024, 3001, 10_000])
def test_weight_gradients_split_by_k_give_the_same_bits_on_any_thread_count(parallel_work, dtype, k):
    """dW = dYᵀ X of a narrow layer over a long batch: threads share chunks of K (k_chunks); the
    chunks are fixed by the shape and summed in order, so one and two threads agree bit for bit."""
    from gradc.backends.codegen import K_CHUNK, MAX_K_CHUNKS, k_chunks
    dy, x = RNG.standard_normal((k, 10)).astype(dtype), RNG.standard_normal((k, 33)).astype(dtype)
    fn = gc.jit(lambda dy, x: dy.T @ x)
    (kernel,) = fn.lower(dy, x).fusion.kernels
    assert k_chunks(kernel) == min(MAX_K_CHUNKS, k // K_CHUNK)
    parallel_work(float("inf"))
    single = fn(dy, x)
    parallel_work(0.0)
    for _ in range(3):
        np.testing.assert_array_equal(fn(dy, x), single)
    want = dy.astype(np.float64).T @ x.astype(np.float64)
    np.testing.assert_allclose(single, want, rtol=0, atol=(1e-4 if dtype == np.float32 else 1e-11) * np.abs(want).max())


def test_a_training_step_with_a_long_batch_splits_its_weight_gradients_by_k(parallel_work):
    from gradc.backends.codegen import k_chunks
    parallel_work(0.0)
    U, V, x, y = (RNG.standard_normal(s) for s in [(32, 64), (10, 32), (2048, 64), (2048, 10)])
    step = gc.value_and_grad(seed_loss, wrt=("U", "V"))
    lowered = step.lower(U, V, x, y)
    assert sum(k_chunks(k) > 1 for k in lowered.fusion.kernels) == 2  # dU and dV
    L, (dU, dV) = step(U, V, x, y)
    for got, want in zip((L, dU, dV), interpret(lowered.graphs["optimized"], U, V, x, y)):
        np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)


def test_a_narrow_layer_over_a_symbolic_batch_splits_rows_with_the_same_bits(parallel_work):
    """Annotated with a symbolic batch, layers of fewer column panels than threads (a hidden layer
    of one panel of the host's NR columns, a 5-column head) still share their rows (and the
    loss's partial results per row block) between the threads."""
    from gradc.backends.codegen import split_rows
    m = F64_NR

    def loss(U: gc.f64[F64_NR, 64], V: gc.f64[5, F64_NR], x: gc.f64["B", 64], y: gc.f64["B", 5]):
        return seed_loss(U, V, x, y)
    step = gc.value_and_grad(loss, wrt=("U", "V"))
    lowered = step.lower()
    batch_rows = [k for k in lowered.fusion.kernels if k.matmul is not None and k.matmul.result.type.shape[0] == "B"]
    assert len(batch_rows) == 3 and all(split_rows(k) for k in batch_rows)
    for batch in (1, 7, 300):
        args = [RNG.standard_normal(s) for s in [(m, 64), (5, m), (batch, 64), (batch, 5)]]
        agree_on_any_thread_count(parallel_work, step, args, lowered)


def test_a_weight_gradient_over_a_symbolic_batch_splits_k_per_call(parallel_work):
    """With B symbolic the chunk count is worked out per call from B alone: any batch, same bits
    on one and two threads, 0 for an empty batch."""
    from gradc.backends.codegen import MAX_K_CHUNKS, k_chunks

    @gc.jit
    def weight_gradient(dy: gc.f32["B", 10], x: gc.f32["B", 33]):
        return dy.T @ x
    (kernel,) = weight_gradient.lower().fusion.kernels
    assert k_chunks(kernel) == MAX_K_CHUNKS
    for batch in (0, 1, 700, 1024, 3001, 9000):
        dy, x = (RNG.standard_normal((batch, d)).astype(np.float32) for d in (10, 33))
        parallel_work(float("inf"))
        single = weight_gradient(dy, x)
        parallel_work(0.0)
        np.testing.assert_array_equal(weight_gradient(dy, x), single)
        want = dy.astype(np.float64).T @ x.astype(np.float64)
        np.testing.assert_allclose(single, want, rtol=0, atol=1e-4 * max(np.abs(want).max(initial=0), 1))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_claimed_chunks_give_the_bits_of_one_thread(parallel_work, balanced, dtype):
    """Threads claim chunks of columns from one counter for every kernel of the call in turn (a
    transposed A packed between them first; a loss reduced per panel); whoever takes a chunk, the
    bits are those of one thread, call after call, and match the interpreter."""
    from gradc.backends.codegen import prepacks_a
    cases = [(gc.value_and_grad(seed_loss, wrt=("U", "V")), [(150, 97), (7, 150), (133, 97), (133, 7)]),
             (gc.jit(lambda a, b: (gc.tanh(a.T @ b.T), a @ a.T, gc.sum(gc.sigmoid(a.T @ a)))),
              [(129, 200), (333, 129)])]
    for fn, shapes in cases:
        args = arguments(shapes, dtype)
        lowered = fn.lower(*args)
        assert any(prepacks_a(k) for k in lowered.fusion.kernels) and packed_ahead(parallel_work, lowered, args)
        agree_on_any_thread_count(parallel_work, fn, args, lowered, calls=20,
                                  rtol=1e-4 if dtype == np.float32 else 1e-10, atol=1e-5)


def test_a_symbolic_batch_decides_per_call_whether_to_claim_shrinking_chunks(parallel_work, monkeypatch):
    """`balances` is worked out per call from the dims: one compiled step takes both ways (equal
    shares for a short batch; shrinking chunks and A packed ahead for a long one), same bits."""
    from gradc.backends import codegen

    def loss(U: gc.f64[100, 130], V: gc.f64[10, 100], x: gc.f64["B", 130], y: gc.f64["B", 10]):
        return seed_loss(U, V, x, y)
    monkeypatch.setattr(codegen.chunks, "DYNAMIC_WORK", 2 * 100 * 130 * 200)  # dU = dfᵀ x: from B = 200 on
    step = gc.value_and_grad(loss, wrt=("U", "V"))
    lowered = step.lower()
    assert any(codegen.prepacks_a(k) for k in lowered.fusion.kernels)
    for batch in (0, 1, 150, 200, 500):
        args = [RNG.standard_normal(s) for s in [(100, 130), (10, 100), (batch, 130), (batch, 10)]]
        assert packed_ahead(parallel_work, lowered, args) == (batch >= 200)
        agree_on_any_thread_count(parallel_work, step, args, lowered)


def test_a_gemm_too_small_to_balance_has_no_pack_step():
    """Below DYNAMIC_WORK (static dims) the threads take one share each and pack their own A: no
    pack step, no barrier for it; from it on (or with symbolic dims) the kernel packs A ahead."""
    from gradc.backends.chunks import DYNAMIC_WORK
    from gradc.backends.codegen import prepacks_a
    fn = gc.jit(lambda a, b: a.T @ b)
    for k, balanced_ in ((64, False), (DYNAMIC_WORK // (2 * 128 * 784) + 1, True)):
        a, b = np.zeros((k, 128), np.float32), np.zeros((k, 784), np.float32)
        lowered = fn.lower(a, b)
        assert [prepacks_a(x) for x in lowered.fusion.kernels] == [balanced_]
        assert any(s.endswith(".pack_a") for s in lowered.native.steps) == balanced_


@pytest.mark.parametrize("setting, message", [("abc", "not a positive integer"), ("0", "not a positive integer"),
                                              ("1000", "at most")])
def test_a_bad_num_threads_setting_is_reported_and_ignored(monkeypatch, setting, message):
    """As libgomp does with OMP_NUM_THREADS: a warning naming the variable, never a failed import."""
    from gradc.backends.threads import MAX_THREADS, default_threads
    monkeypatch.setenv("GRADC_NUM_THREADS", setting)
    with pytest.warns(RuntimeWarning, match=f"GRADC_NUM_THREADS.*{message}"):
        threads = default_threads()
    assert 1 <= threads <= MAX_THREADS
    monkeypatch.setenv("GRADC_NUM_THREADS", "1")
    assert default_threads() == 1
