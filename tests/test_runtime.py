"""The runtime boundary: array layouts, input immutability, fresh outputs, threads, determinism, and
batches of size 1 and 0; and the native code against the reference interpreter on every model."""
from __future__ import annotations

import concurrent.futures
import threading

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import gradc as gc
import models
from models import seed_args

R = np.random.default_rng(0)


def rand(*shape, dtype=np.float64):
    return R.standard_normal(shape).astype(dtype)


def affine(W, x, b):
    return gc.tanh(x @ W + b)


def np_affine(W, x, b):
    return np.tanh(x @ W + b)


# --- layouts --------------------------------------------------------------------------------------------

def layouts(a):
    """Views of the same values in other memory layouts (each != C-contiguous)."""
    big = np.zeros((a.shape[0] * 2, a.shape[1] * 3), a.dtype)
    big[::2, ::3] = a
    return {"transposed_view": np.ascontiguousarray(a.T).T, "strided_slice": big[::2, ::3],
            "fortran": np.asfortranarray(a), "negative_strides": np.ascontiguousarray(a[::-1, ::-1])[::-1, ::-1]}


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("layout", ["transposed_view", "strided_slice", "fortran", "negative_strides"])
def test_non_contiguous_inputs_match_contiguous_copies(dtype, layout):
    W, x, b = rand(5, 3, dtype=dtype), rand(4, 5, dtype=dtype), rand(3, dtype=dtype)
    fn = gc.value_and_grad(lambda W, x, b: gc.sum(affine(W, x, b) ** 2), wrt=(0, 1, 2))
    expected = fn(W, x, b)
    W2, x2 = layouts(W)[layout], layouts(x)[layout]
    assert not W2.flags.c_contiguous and np.array_equal(W2, W)
    got = fn(W2, x2, b[::-1].copy()[::-1])
    np.testing.assert_array_equal(got[0], expected[0])
    for g, e in zip(got[1], expected[1]):
        np.testing.assert_array_equal(g, e)


def test_transposed_argument_is_read_as_its_values():
    """A transposed view passed where the function transposes again: (W.T).T == W."""
    W, x, b = rand(3, 5), rand(4, 5), rand(3)
    out = gc.jit(affine)(W.T, x, b)
    np.testing.assert_allclose(out, np_affine(W.T, x, b), rtol=1e-12)


def test_misaligned_and_readonly_inputs():
    x = rand(4, 5)
    raw = np.zeros(x.nbytes + 1, np.uint8)
    misaligned = np.frombuffer(raw.data, np.float64, x.size, offset=1).reshape(4, 5)
    assert not misaligned.flags.aligned
    misaligned[...] = x
    readonly = x.copy()
    readonly.flags.writeable = False
    fn = gc.jit(lambda a: gc.sum(a * a, axis=0))
    np.testing.assert_array_equal(fn(misaligned), fn(x))
    np.testing.assert_array_equal(fn(readonly), fn(x))
    # what native code is handed is an aligned C-contiguous buffer (a copy), never the misaligned one
    native = fn.lower(x).native
    (passed,), _ = native._check([misaligned])
    assert passed.flags.aligned and passed.flags.c_contiguous and not np.shares_memory(passed, misaligned)
    (passed,), _ = native._check([x])
    assert passed is x  # a well-formed array is not copied


def test_python_lists_and_scalars_are_accepted():
    fn = gc.jit(lambda a, s: a * s)
    np.testing.assert_array_equal(fn([1.0, 2.0], 3.0), [3.0, 6.0])


# --- inputs untouched, outputs fresh --------------------------------------------------------------------

def test_inputs_are_not_modified():
    args = seed_args(np.float32)
    copies = [a.copy() for a in args]
    gc.value_and_grad(models.seed_loss, wrt=("U", "V", "x", "y"))(*args)
    gc.jit(lambda U, V, x, y: (x, U.T, y * 0.0))(*args)
    for a, c in zip(args, copies):
        np.testing.assert_array_equal(a, c)


@pytest.mark.parametrize("fn", [lambda x: x, lambda x: (x, x), lambda x: x * 1.0, lambda x: x + 0.0,
                                lambda x: gc.transpose(gc.transpose(x)), lambda x: x.reshape(2, 3)])
def test_outputs_never_alias_inputs(fn):
    x = rand(2, 3)
    keep = x.copy()
    out = gc.jit(fn)(x)
    outs = list(out) if isinstance(out, tuple) else [out]
    for o in outs:
        assert isinstance(o, np.ndarray)
        assert not np.shares_memory(o, x)
        np.testing.assert_array_equal(o.reshape(keep.shape), keep)
    o = outs[0]
    o[...] = 42.0
    np.testing.assert_array_equal(x, keep)


def test_same_tensor_returned_twice_gives_two_arrays():
    def twice(x):
        y = gc.exp(x)
        return y, y, x, x

    x = rand(3)
    outs = gc.jit(twice)(x)
    for i in range(4):
        for j in range(i + 1, 4):
            assert not np.shares_memory(outs[i], outs[j])
    np.testing.assert_array_equal(outs[0], outs[1])
    np.testing.assert_array_equal(outs[2], x)
    outs[0][...] = 0.0
    assert np.all(outs[1] != 0.0)


def test_constant_outputs_are_fresh_arrays():
    def constants(x):
        return gc.sum(x) * 0.0 + 2.0, x * 0.0 + 1.0

    fn = gc.jit(constants)
    a, b = fn(rand(2, 2))
    c, d = fn(rand(2, 2))
    assert a == 2.0 and np.all(b == 1.0)
    a[...] = 5.0
    b[...] = 5.0
    assert c == 2.0 and np.all(d == 1.0) and not np.shares_memory(b, d)
    # a gradient that folds to a constant, and a zero gradient
    g = gc.grad(lambda s, t: s * 3.0 + gc.sum(t), wrt=(0, 1))
    g1 = g(np.float64(1.0), rand(3))
    g2 = g(np.float64(2.0), rand(3))
    assert g1[0] == 3.0 and np.all(g1[1] == 1.0)
    g1[0][...] = 0.0
    assert g2[0] == 3.0


def test_outputs_are_owned_contiguous_arrays():
    out = gc.jit(lambda x: gc.transpose(x))(rand(3, 4))
    assert out.flags.c_contiguous and out.flags.writeable and out.flags.owndata and out.shape == (4, 3)


# --- threads and determinism ----------------------------------------------------------------------------

def test_four_threads_call_one_compiled_function():
    traces = []

    def seed_loss(U, V, x, y):
        traces.append(threading.get_ident())
        return models.seed_loss(U, V, x, y)

    step = gc.value_and_grad(seed_loss, wrt=("U", "V"))
    inputs = [seed_args(np.float64, batch=8 + i % 3, seed=i) for i in range(32)]
    barrier = threading.Barrier(4)

    def work(args):
        if any(args is first for first in inputs[:4]):
            barrier.wait(timeout=30)  # the first four calls start together, before anything is compiled
        return step(*args)

    with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(work, inputs))
    for args, (L, (dU, dV)) in zip(inputs, results):
        L_ref, dU_ref, dV_ref = models.seed_reference(*args)
        np.testing.assert_allclose(L, L_ref, rtol=1e-12)
        np.testing.assert_allclose(dU, dU_ref, rtol=1e-10, atol=1e-14)
        np.testing.assert_allclose(dV, dV_ref, rtol=1e-10, atol=1e-14)
    assert len(step._cache) == 3  # one compilation per batch size, however many threads raced
    assert len(traces) == 3


def test_threads_with_symbolic_dims():
    @gc.jit
    def fn(x: gc.f64["B", 3], w: gc.f64[3]):
        return gc.sigmoid(x @ w)

    w = rand(3)
    xs = [rand(n, 3) for n in range(1, 41)]
    with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
        outs = list(pool.map(lambda x: fn(x, w), xs))
    for x, o in zip(xs, outs):
        assert o.shape == (x.shape[0],)
        np.testing.assert_allclose(o, models.sigmoid(x @ w), rtol=1e-12)


def test_repeated_calls_are_bit_identical():
    args = models.mlp_args(np.float32, batch=33)
    step = gc.value_and_grad(models.mlp_xent, wrt=tuple(range(6)))
    first = step(*args)
    for _ in range(5):
        again = step(*args)
        assert again[0].tobytes() == first[0].tobytes()
        assert all(a.tobytes() == b.tobytes() for a, b in zip(again[1], first[1]))


# --- batches of size 1 and 0 ----------------------------------------------------------------------------

@pytest.mark.parametrize("batch", [1, 0])
def test_small_batches_behave_like_numpy(batch):
    W, b = rand(5, 3), rand(3)
    x = rand(batch, 5)
    out = gc.jit(affine)(W, x, b)
    assert out.shape == (batch, 3)
    np.testing.assert_allclose(out, np_affine(W, x, b), rtol=1e-12)

    sums = gc.jit(lambda x: (gc.sum(x, axis=0), gc.sum(x, axis=1), gc.sum(x), gc.softmax(x)))(x)
    np.testing.assert_allclose(sums[0], x.sum(0), rtol=1e-12)
    assert sums[1].shape == (batch,) and sums[2].shape == ()
    np.testing.assert_allclose(sums[2], x.sum(), rtol=1e-12)
    assert sums[3].shape == x.shape

    # the gradient of a sum over the batch is defined for any batch size
    dW, db = gc.grad(lambda W, x, b: gc.sum(affine(W, x, b)), wrt=("W", "b"))(W, x, b)
    t = np_affine(W, x, b)
    np.testing.assert_allclose(dW, x.T @ (1 - t ** 2), rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(db, (1 - t ** 2).sum(0), rtol=1e-12, atol=1e-15)


def test_batch_of_one_with_symbolic_seed():
    step = gc.value_and_grad(models.seed_annotated, wrt=("U", "V"))
    for batch in (1, 0):
        args = seed_args(np.float32, batch=batch)
        L, (dU, dV) = step(*args)
        if batch:
            L_ref, dU_ref, dV_ref = models.seed_reference(*(a.astype(np.float64) for a in args))
            np.testing.assert_allclose(L, L_ref, rtol=1e-5)
            np.testing.assert_allclose(dU, dU_ref, rtol=1e-4, atol=1e-7)
        else:  # numpy: the mean of nothing is nan, and so is its gradient
            assert np.isnan(L) and dU.shape == (8, 5) and dV.shape == (3, 8)
    assert len(step._cache) == 1


def test_mean_of_empty_is_nan_like_numpy():
    out = gc.jit(lambda x: (gc.mean(x), gc.mean(x, axis=0)))(np.zeros((0, 3)))
    assert np.isnan(out[0]) and out[1].shape == (3,) and np.all(np.isnan(out[1]))


# --- native code == the reference interpreter -----------------------------------------------------------

@pytest.mark.parametrize("name, lowered", models.lowered_models(), ids=lambda v: v if isinstance(v, str) else "")
def test_native_matches_interpreter(name, lowered):
    args = models.example_inputs(name)
    expected = gc.ir.interpret(lowered.graphs["grad"], *args)
    got = lowered.native(*args)
    assert len(got) == len(expected)
    tol = dict(rtol=1e-4, atol=1e-6) if got[0].dtype == np.float32 else dict(rtol=1e-10, atol=1e-13)
    for g, e in zip(got, expected):
        assert g.shape == e.shape and g.dtype == e.dtype
        np.testing.assert_allclose(g, e, **tol)


def test_native_rejects_what_the_interpreter_rejects():
    lowered = gc.jit(models.symbolic).lower()
    x, W, v = models.symbolic_args()
    with pytest.raises(gc.ShapeError, match=r"argument 'v'.*H=6"):
        lowered.native(x, W, v[:5])
    with pytest.raises(gc.ShapeError, match=r"argument 'v'"):
        gc.ir.interpret(lowered.graphs["optimized"], x, W, v[:5])


# --- random graphs: native code == the interpreter --------------------------------------------------------

@settings(max_examples=20, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(models.random_graphs(), st.sampled_from([1, 3, 0]))
def test_random_graphs_native_matches_interpreter(graph, batch):
    from gradc.backends.jit import NativeFunction
    from gradc.ir.passes import Autodiff, optimize, run_passes

    args = models.random_inputs(graph, B=batch)
    try:
        expected = gc.ir.interpret(graph, *args)
    except ValueError:  # numpy has no answer (the max of nothing): only ask for no crash
        assert batch == 0
        NativeFunction(graph)(*args)
        return
    loss_graph = models.with_scalar_loss(graph)
    grad = run_passes(loss_graph, [Autodiff(list(range(len(graph.inputs))))])
    for g, reference in ((graph, graph), (optimize(graph), graph), (optimize(grad), grad)):
        expected = gc.ir.interpret(reference, *args)
        got = NativeFunction(g)(*args)
        assert len(got) == len(expected)
        for a, e in zip(got, expected):
            assert a.shape == e.shape and a.dtype == e.dtype
            tol = dict(rtol=1e-5, atol=1e-6) if a.dtype == np.float32 else dict(rtol=1e-12, atol=1e-14)
            np.testing.assert_allclose(a, e, **tol)
