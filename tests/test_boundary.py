"""The native call boundary: gradc_fast reads numpy headers itself (binding symbolic dims from
them), and refuses what it must not read; the helper threads sleep when idle, wake for work, and
survive fork()."""
from __future__ import annotations

import ctypes
import multiprocessing
import time

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import gradc as gc
import gradc.backends.jit as jit
from gradc.backends.boundary import ARRAY_LAYOUT, TUPLE_ITEMS
from gradc.backends.threads import LINE, POOL, SLEEPERS, SPIN_ROUNDS

RNG = np.random.default_rng(5)


def affine(W: gc.f64["M", "K"], x: gc.f64["B", "K"], b: gc.f64["M"]):
    return gc.tanh(x @ W.T + b)


AFFINE = gc.jit(affine)
STATIC = gc.jit(lambda W, x, b: gc.tanh(x @ W.T + b))  # compiled per shape: the builtin fast path
BOTH = pytest.mark.parametrize("fn", [AFFINE, STATIC], ids=["symbolic", "static"])


def reference(W, x, b):
    return np.tanh(x @ W.T + b)


def args_for(batch: int, m: int = 5, k: int = 3):
    return RNG.standard_normal((m, k)), RNG.standard_normal((batch, k)), RNG.standard_normal(m)


def native_of(fn, *args):
    """What fn(*args) calls: the annotated (symbolic) compilation, else the one for these shapes."""
    return (fn.lower() if fn.annotated is not None else fn.lower(*args)).native


def test_the_array_and_tuple_layouts_were_recognised():
    """Without them every call would take the slower Python path; this numpy and Python are supported."""
    assert ARRAY_LAYOUT is not None and TUPLE_ITEMS is not None


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 4), min_size=0, max_size=4), st.sampled_from([np.float32, np.float64]))
def test_headers_read_natively_match_numpy(shape, dtype):
    a = np.empty(shape, dtype)
    base = id(a)
    assert ctypes.c_void_p.from_address(base + ARRAY_LAYOUT.data).value == a.ctypes.data
    assert ctypes.c_int32.from_address(base + ARRAY_LAYOUT.ndim).value == a.ndim
    assert ctypes.c_void_p.from_address(base + ARRAY_LAYOUT.descr).value == id(np.dtype(dtype))
    if a.ndim:
        extents = (ctypes.c_int64 * a.ndim).from_address(ctypes.c_void_p.from_address(base + ARRAY_LAYOUT.shape).value)
        assert tuple(extents) == a.shape


@BOTH
def test_well_formed_arrays_take_the_native_path(fn):
    for batch in (0, 1, 7, 64, 3):
        args = args_for(batch)
        native = native_of(fn, *args)
        fn(*args)  # the first call with dims this large may need a larger workspace, made in Python
        out = native.hot_path()(*args)
        assert out is not None, f"B={batch}"
        np.testing.assert_allclose(out[0], reference(*args), rtol=1e-12)


def test_symbolic_dims_are_bound_and_checked_natively():
    """B is bound from x; every other extent must agree with the dims bound so far."""
    W, x, b = args_for(9)
    AFFINE(W, x, b)
    fast = native_of(AFFINE, W, x, b).fast
    assert fast(W, x, b) is not None
    assert fast(W, x[:4], b) is not None  # a smaller B: the workspace is large enough
    assert fast(W, np.ones((9, 4)), b) is None  # K differs between W and x
    assert fast(np.ones((6, 3)), x, b) is None  # M differs between W and b


def test_every_function_shares_one_native_boundary_told_of_it_by_its_context():
    """The boundary is the shared runtime's `fast_call`, not code in each model's module; a
    function's context words describe what it takes, symbolic dims bound wherever they first occur
    (here n from the second input, then checked against the third)."""
    from gradc.backends.boundary import CONTEXT_DESCRIPTION, FAST_CALL
    from gradc.backends.runtime import compiled_names

    def pair(a: gc.f64[3, "n"], b: gc.f64["m", "n"], c: gc.f64["m"]):
        return a @ b.T + c, gc.tanh(b)
    args = [np.ones((3, 5)), np.full((4, 5), 0.5), np.arange(4.0)]
    compiled = gc.jit(pair)
    compiled(*args)  # sizes the workspace for these dims
    native, other = native_of(compiled, *args), native_of(AFFINE, *args_for(3))
    assert FAST_CALL in compiled_names()
    assert "gradc_fast" not in native.llvm_ir_unoptimized
    assert native.fast.__self__[2].function == other.fast.__self__[2].function  # the same C function
    assert native.fast.__self__[0][CONTEXT_DESCRIPTION:CONTEXT_DESCRIPTION + 3].tolist() == [3, 2, 2]
    out = native.fast(*args)
    np.testing.assert_allclose(out[0], args[0] @ args[1].T + args[2])
    np.testing.assert_allclose(out[1], np.tanh(args[1]))
    assert native.fast(args[0], np.ones((4, 6)), args[2]) is None  # n differs between a and b
    assert native.fast(args[0], args[1], np.ones(3)) is None  # m differs between b and c
    assert native.fast(args[0], args[1][:2], args[2][:2]) is not None  # another m, consistently


def test_a_workspace_too_small_for_new_dims_sends_the_call_to_python_which_grows_it():
    rng = np.random.default_rng(3)

    @gc.jit
    def annotated(x: gc.f64["B", 3]):
        return gc.tanh(x @ x.T) @ x  # a B x B intermediate: the workspace grows with B
    small, large = rng.standard_normal((4, 3)), rng.standard_normal((40, 3))
    annotated(small)
    fast = annotated.lower().native.fast
    assert fast(small) is not None
    assert fast(large) is None  # its B x B intermediate does not fit the workspace sized for B=4
    np.testing.assert_allclose(annotated(large), np.tanh(large @ large.T) @ large, rtol=1e-12)
    assert fast(large) is not None  # the Python path left a large enough workspace
    native = annotated.lower().native
    assert getattr(native._per_thread, "buffer", None) is None, "a second workspace was kept"


REFUSED = {
    "strided": lambda W, x, b: (W, x[::2], b),
    "fortran": lambda W, x, b: (np.asfortranarray(W), x, b),
    "float32": lambda W, x, b: (W.astype(np.float32), x, b),
    "byte-swapped": lambda W, x, b: (W.astype(W.dtype.newbyteorder()), x, b),
    "list": lambda W, x, b: (W.tolist(), x, b),
    "subclass": lambda W, x, b: (W.view(np.matrix), x, b),
    "rank": lambda W, x, b: (W, x, b[:, None]),
    "K differs": lambda W, x, b: (W, np.ones((6, 4)), b),
    "M differs": lambda W, x, b: (W, x, np.ones(4)),
}


@BOTH
@pytest.mark.parametrize("case", sorted(REFUSED))
def test_what_native_code_must_not_read_is_refused_then_handled_in_python(fn, case):
    args = args_for(6)
    native = native_of(fn, *args)
    fn(*args)  # the hot path is now the one for these arguments' types
    bad = REFUSED[case](*args)
    assert native.hot_path()(*bad) is None
    if case in ("strided", "fortran", "list", "subclass"):  # converted, then computed correctly
        np.testing.assert_allclose(fn(*bad)[...], reference(*(np.asarray(a, np.float64) for a in bad)),
                                   rtol=1e-12)
    elif fn is AFFINE:  # the annotations say what is wrong
        with pytest.raises((TypeError, ValueError)) as err:
            fn(*bad)
        assert ("'W'" in str(err.value)) or ("'x'" in str(err.value)) or ("'b'" in str(err.value))
    else:
        with pytest.raises((TypeError, ValueError)):  # not the native fast path: numpy's or tracing's error
            fn(*bad)


@BOTH
def test_a_misaligned_array_is_refused(fn):
    W, x, b = args_for(3)
    raw = np.zeros(W.nbytes + 1, np.uint8)
    misaligned = np.frombuffer(raw.data, np.float64, W.size, offset=1).reshape(W.shape)
    misaligned[...] = W
    assert native_of(fn, W, x, b).hot_path()(misaligned, x, b) is None
    np.testing.assert_allclose(fn(misaligned, x, b), reference(W, x, b), rtol=1e-12)


def test_the_fast_path_leaks_no_references():
    """gradc_fast makes its outputs and result tuple, and returns None on refusal, by hand."""
    import gc as collector
    import sys
    import weakref
    args = args_for(5)
    fast = native_of(STATIC, *args).fast
    wrong_dtype = (args[0], args[1].astype(np.float32), args[2])
    watched = [None, np.dtype(np.float64), *args, *wrong_dtype]
    collector.collect()
    collector.disable()  # a collection meanwhile could free other references to None
    try:
        before = [sys.getrefcount(x) for x in watched]
        for _ in range(200):
            fast(*args)
            fast(*args[:2])
            fast(*wrong_dtype)
        after = [sys.getrefcount(x) for x in watched]
    finally:
        collector.enable()
    assert after == before
    out = fast(*args)
    assert sys.getrefcount(out) == 2  # this name's and getrefcount's
    alive = [weakref.ref(o) for o in out]
    del out
    assert all(ref() is None for ref in alive)


def test_a_busy_workspace_sends_the_call_to_python():
    """One call at a time uses the fast path's workspace; another thread's meanwhile takes the Python path."""
    from gradc.backends.boundary import CONTEXT_BUSY
    args = args_for(7)
    native = native_of(STATIC, *args)
    context = native.fast.__self__[0]
    context[CONTEXT_BUSY] = 1
    try:
        assert native.fast(*args) is None
        np.testing.assert_allclose(native(*args)[0], reference(*args), rtol=1e-12)
    finally:
        context[CONTEXT_BUSY] = 0
    assert native.fast(*args) is not None


def _fast_call_in_child(queue, fast, args) -> None:
    queue.put(fast(*args) is not None)


def test_a_workspace_busy_in_a_call_at_fork_time_is_free_in_the_child():
    from gradc.backends.boundary import CONTEXT_BUSY
    args = args_for(7)
    fast = native_of(STATIC, *args).fast
    context = fast.__self__[0]
    context[CONTEXT_BUSY] = 1  # as if another thread were inside a call when this one forks
    try:
        forking = multiprocessing.get_context("fork")
        queue = forking.Queue()
        child = forking.Process(target=_fast_call_in_child, args=(queue, fast, args))
        child.start()
        took_fast_path = queue.get(timeout=60)
        child.join(timeout=60)
    finally:
        context[CONTEXT_BUSY] = 0
    assert child.exitcode == 0 and took_fast_path


def test_a_call_made_while_another_thread_is_inside_takes_the_python_path():
    """The fast path's workspace is claimed for a call's whole length (the GIL is released meanwhile):
    a second thread's call then is refused and computed in Python with its own workspace."""
    import threading
    from gradc.backends.boundary import CONTEXT_BUSY
    square = gc.jit(lambda a: gc.tanh(a @ a.T))
    long_input = RNG.standard_normal((1200, 1200))
    short_input = RNG.standard_normal((1200, 1200)) * 0.5
    native = square.lower(long_input).native
    native(long_input)  # a first parallel call starts the helper threads; later ones take the fast path
    busy = native.fast.__self__[0][CONTEXT_BUSY:CONTEXT_BUSY + 1]
    results = {}
    inside = threading.Thread(target=lambda: results.setdefault("long", native(long_input)))
    inside.start()
    while busy[0] == 0 and inside.is_alive():
        pass  # until the other thread is inside its native call
    assert busy[0] == 1, "the long call finished before this thread saw it"
    refused = native.fast(short_input)
    short = native(short_input)
    inside.join()
    assert refused is None, "the fast path ran while its workspace was in use"
    np.testing.assert_allclose(short[0], np.tanh(short_input @ short_input.T), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(results["long"][0], np.tanh(long_input @ long_input.T), rtol=1e-9, atol=1e-12)


def test_the_last_signature_is_not_reused_for_another():
    """gc.jit without annotations compiles per shape; the fast path must not run the wrong one."""
    f = gc.jit(lambda a: a * 2.0)
    for shape in [(3,), (4,), (3,), (2, 2)]:
        for dtype in (np.float32, np.float64):
            a = RNG.standard_normal(shape).astype(dtype)
            out = f(a)
            assert out.shape == a.shape and out.dtype == a.dtype
            np.testing.assert_array_equal(out, a * 2)


@BOTH
def test_wrong_argument_counts_are_python_errors(fn):
    args = args_for(2)
    fn(*args)
    with pytest.raises(TypeError, match="3 "):
        fn(*args, args[0])
    with pytest.raises(TypeError, match="3 "):
        fn(*args[:2])


def _sleepers() -> int:
    return ctypes.c_int64.from_address(POOL.control_address + SLEEPERS * LINE).value


def test_idle_helpers_sleep_and_wake_for_the_next_call(parallel_work):
    parallel_work(0.0)
    args = args_for(300, 200, 100)
    want = reference(*args)
    np.testing.assert_allclose(AFFINE(*args), want, rtol=1e-12)
    assert POOL.started and POOL.threads >= 2
    deadline = time.time() + 5
    while _sleepers() < POOL.threads - 1 and time.time() < deadline:
        time.sleep(0.01)  # SPIN_ROUNDS pauses take well under a millisecond
    assert _sleepers() == POOL.threads - 1, f"helpers still spinning long after {SPIN_ROUNDS} pauses"
    for _ in range(3):
        np.testing.assert_allclose(AFFINE(*args), want, rtol=1e-12)


def _parallel_call_in_child(queue, fn) -> None:
    jit.PARALLEL_WORK[0] = 0.0
    args = args_for(300, 200, 100)
    queue.put(float(np.max(np.abs(fn(*args) - reference(*args)))))


@pytest.mark.parametrize("static", [False, True], ids=["symbolic", "static"])
def test_parallel_calls_work_in_a_forked_child(parallel_work, static):
    parallel_work(0.0)
    fn = gc.jit(lambda W, x, b: gc.tanh(x @ W.T + b)) if static else AFFINE
    fn(*args_for(300, 200, 100))  # the parent's helpers are running
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    child = context.Process(target=_parallel_call_in_child, args=(queue, fn))
    child.start()
    error = queue.get(timeout=60)
    child.join(timeout=60)
    assert child.exitcode == 0 and error < 1e-12


@pytest.mark.parametrize("static", [False, True], ids=["symbolic", "static"])
def test_the_thread_count_can_be_set_and_never_changes_results(parallel_work, static):
    parallel_work(0.0)
    fn = gc.jit(lambda W, x, b: gc.tanh(x @ W.T + b)) if static else AFFINE
    args = args_for(300, 200, 100)
    before = gc.get_num_threads()
    results = []
    try:
        for threads in (1, 2, 1, 2):
            gc.set_num_threads(threads)
            assert gc.get_num_threads() == threads
            results.append(fn(*args))
        with pytest.raises(ValueError, match="threads"):
            gc.set_num_threads(0)
    finally:
        gc.set_num_threads(before)
    for r in results[1:]:
        np.testing.assert_array_equal(r, results[0])


EXIT_RIGHT_AFTER_A_PARALLEL_CALL = """
import atexit, sys
import numpy as np, gradc as gc, gradc.backends.jit as jit, gradc.backends.threads as threads
threads.SPIN_ROUNDS = 10 ** 12  # helpers still spin, in code of the threads engine, when Python exits
if sys.argv[1:] == ["no-stop"]:
    atexit.unregister(threads.POOL.stop)
jit.PARALLEL_WORK[0] = 0.0
a = np.ones((300, 200))
f = gc.jit(lambda a: gc.tanh(a @ a.T))
for _ in range(3):
    f(a)
print("ok")
"""


def test_the_process_exits_cleanly_while_helpers_are_awake():
    """At exit the helpers are stopped before their code is freed (it used to crash with SIGSEGV)."""
    import subprocess
    import sys
    for _ in range(3):
        done = subprocess.run([sys.executable, "-c", EXIT_RIGHT_AFTER_A_PARALLEL_CALL], capture_output=True,
                              text=True, timeout=120)
        assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]


def test_a_fake_array_with_a_huge_shape_is_refused_before_anything_is_allocated():
    """Symbolic dims are read from the arguments before native code checks them: a shape from an
    object that is not an array must end in the ordinary error, not an attempt to allocate it."""
    class Impostor:
        shape = (10 ** 12, 3)
    args = args_for(4)
    AFFINE(*args)
    assert native_of(AFFINE, *args).hot_path()(args[0], Impostor(), args[2]) is None
    with pytest.raises((TypeError, ValueError)):
        AFFINE(args[0], Impostor(), args[2])


def test_a_stopped_pool_runs_calls_on_one_thread(monkeypatch):
    """After stop (what exit does) a call must neither hang nor use the departed helpers."""
    import subprocess
    import sys
    script = ("import numpy as np, gradc as gc, gradc.backends.jit as jit\n"
              "from gradc.backends.threads import POOL\n"
              "jit.PARALLEL_WORK[0] = 0.0\n"
              "a = np.ones((300, 200)); f = gc.jit(lambda a: gc.tanh(a @ a.T)); want = f(a)\n"
              "POOL.stop(); gc.set_num_threads(2)\n"
              "assert (f(a) == want).all() and gc.get_num_threads() == 1\n"
              "print('ok')\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]


def test_dims_whose_workspace_would_not_fit_an_address_space_are_a_python_error():
    """Zero-size arrays may carry huge extents; the workspace's 64-bit size must not wrap."""
    @gc.jit
    def chain(x: gc.f32["B", "K"], w: gc.f32["M", "K"], v: gc.f32["N", "M"]):
        return (x @ w.T) @ v.T
    x, w, v = np.empty((2 ** 32, 0), np.float32), np.empty((2 ** 30, 0), np.float32), np.empty((0, 2 ** 30), np.float32)
    with pytest.raises(MemoryError, match="B=4294967296"):
        chain(x, w, v)
    assert chain(x[:3], w[:4], v[:, :4]).shape == (3, 0)


def test_the_builtin_keeps_its_code_alive_without_a_reference_cycle():
    """Dropping a compiled function frees it at once (no cycle through its builtin), and a builtin
    still held elsewhere keeps working: it holds the engine and the workspace, not the function."""
    import gc as collector
    import weakref
    from gradc.backends.jit import NativeFunction
    args = args_for(4)
    lowered = STATIC.lower(*args)
    native = NativeFunction(lowered.graphs["optimized"], lowered.fusion)
    fast, alive = native.fast, weakref.ref(native)
    collector.disable()
    try:
        del native
        assert alive() is None
    finally:
        collector.enable()
    np.testing.assert_allclose(fast(*args)[0], reference(*args), rtol=1e-12)


def test_without_the_builtin_every_call_takes_the_python_path(monkeypatch):
    """Where the header layouts or PyArray_Empty were not recognised, calls still work, in Python."""
    import gradc.backends.jit as jit
    monkeypatch.setattr(jit, "ARRAY_EMPTY", None)
    f = gc.jit(lambda W, x, b: gc.tanh(x @ W.T + b))
    for batch in (3, 5, 3):
        args = args_for(batch)
        np.testing.assert_allclose(f(*args), reference(*args), rtol=1e-12)
        assert f.lower(*args).native.fast is None
    with pytest.raises((TypeError, ValueError)):
        f(args[0], args[1].astype(np.float32), args[2])


def test_a_caller_alternating_between_shapes_stays_on_the_native_path():
    """The hot paths of the four most recent signatures are tried natively before any Python lookup."""
    class CountingDict(dict):
        lookups = 0

        def get(self, key, default=None):
            CountingDict.lookups += 1
            return super().get(key, default)
    f = gc.jit(lambda a: a * 2.0)
    f._by_signature = CountingDict()
    shapes = [(3,), (4,), (2, 2), (5,)]
    arrays = [RNG.standard_normal(s) for s in shapes]
    for a in arrays:
        f(a)
    CountingDict.lookups = 0
    for _ in range(3):
        for a in arrays:
            np.testing.assert_array_equal(f(a), a * 2)
    assert CountingDict.lookups == 0 and len(f._recent) == 4
    f(RNG.standard_normal(6))  # a fifth signature: the least recent one drops out
    assert len(f._recent) == 4
