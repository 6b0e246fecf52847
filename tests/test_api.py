"""The public API: jit / grad / value_and_grad return structures, wrt, has_aux, caching, lower() stages,
source locations and value names in the IR, and clear errors for bad input."""
from __future__ import annotations

import collections
import functools
import inspect
import re

import numpy as np
import pytest

import gradc as gc
import models
from models import seed_args

R = np.random.default_rng(0)


def rand(*shape, dtype=np.float64):
    return R.standard_normal(shape).astype(dtype)


def line_of(fn, text):
    """The source line number of the first line of `fn` that contains `text`."""
    lines, start = inspect.getsourcelines(fn)
    return start + next(i for i, line in enumerate(lines) if text in line)


# --- jit return structures ---------------------------------------------------------------------------

def test_jit_returns_one_tensor():
    x = rand(3, 4)
    out = gc.jit(lambda a: gc.tanh(a) * 2.0)(x)
    assert isinstance(out, np.ndarray) and out.shape == (3, 4)
    np.testing.assert_allclose(out, np.tanh(x) * 2.0, rtol=1e-12)


def test_jit_returns_tuple_and_list():
    x, y = rand(3, 4), rand(4)

    def as_tuple(a, b):
        return a + b, gc.sum(a * b, axis=1), gc.exp(b)

    def as_list(a, b):
        return [a - b, gc.max(a)]

    t = gc.jit(as_tuple)(x, y)
    assert type(t) is tuple and len(t) == 3
    np.testing.assert_allclose(t[0], x + y)
    np.testing.assert_allclose(t[1], (x * y).sum(1))
    np.testing.assert_allclose(t[2], np.exp(y), rtol=1e-14)
    lst = gc.jit(as_list)(x, y)
    assert type(lst) is list and len(lst) == 2
    np.testing.assert_allclose(lst[0], x - y)
    assert lst[1].shape == () and lst[1] == x.max()


def test_jit_returns_nested_structure():
    x = rand(2, 2)
    out = gc.jit(lambda a: (a, [a * 2.0, (a * 3.0,)]))(x)
    assert type(out) is tuple and type(out[1]) is list and type(out[1][1]) is tuple
    np.testing.assert_array_equal(out[1][1][0], x * 3.0)


# --- grad / value_and_grad: wrt forms ---------------------------------------------------------------

def poly(a, b, c):
    return gc.sum(a * a * b) + gc.sum(c * 3.0)


@pytest.fixture
def abc():
    return rand(3), rand(3), rand(3)


@pytest.mark.parametrize("wrt", [0, "a", -3])
def test_grad_single_wrt_gives_single_array(abc, wrt):
    a, b, c = abc
    g = gc.grad(poly, wrt=wrt)(a, b, c)
    assert isinstance(g, np.ndarray)
    np.testing.assert_allclose(g, 2 * a * b)


@pytest.mark.parametrize("wrt", [1, "b", -2])
def test_grad_other_single_wrt(abc, wrt):
    a, b, c = abc
    np.testing.assert_allclose(gc.grad(poly, wrt=wrt)(a, b, c), a * a)


def test_grad_numpy_integer_wrt(abc):
    a, b, c = abc
    np.testing.assert_allclose(gc.grad(poly, wrt=np.int64(1))(a, b, c), a * a)
    ga, gc_ = gc.grad(poly, wrt=np.arange(3)[[0, 2]].tolist())(a, b, c)
    np.testing.assert_allclose(gc_, np.full(3, 3.0))


def test_grad_default_wrt_is_first_argument(abc):
    a, b, c = abc
    np.testing.assert_allclose(gc.grad(poly)(a, b, c), 2 * a * b)


@pytest.mark.parametrize("wrt", [("c", "a"), (2, 0), (-1, "a"), ["c", 0]])
def test_grad_tuple_wrt_keeps_the_order_asked(abc, wrt):
    a, b, c = abc
    g = gc.grad(poly, wrt=wrt)(a, b, c)
    assert type(g) is tuple and len(g) == 2
    np.testing.assert_allclose(g[0], np.full(3, 3.0))
    np.testing.assert_allclose(g[1], 2 * a * b)


def test_grad_one_element_tuple_gives_tuple(abc):
    g = gc.grad(poly, wrt=("b",))(*abc)
    assert type(g) is tuple and len(g) == 1
    np.testing.assert_allclose(g[0], abc[0] ** 2)


def test_value_and_grad_structure(abc):
    a, b, c = abc
    value, g = gc.value_and_grad(poly, wrt="a")(a, b, c)
    np.testing.assert_allclose(value, np.sum(a * a * b) + np.sum(c * 3.0))
    assert value.shape == ()
    np.testing.assert_allclose(g, 2 * a * b)
    value, (ga, gb) = gc.value_and_grad(poly, wrt=("a", "b"))(a, b, c)
    np.testing.assert_allclose(gb, a * a)


def test_grad_with_respect_to_the_input_x():
    U, V, x, y = seed_args()
    dx = gc.grad(models.seed_loss, wrt="x")(U, V, x, y)
    g = models.sigmoid(x @ U.T)
    h = g @ V.T
    dh = 2 * (h - y) / h.size
    np.testing.assert_allclose(dx, ((dh @ V) * g * (1 - g)) @ U, rtol=1e-10)
    dy = gc.grad(models.seed_loss, wrt=-1)(U, V, x, y)
    np.testing.assert_allclose(dy, -dh, rtol=1e-10)


def test_wrt_an_unused_argument_gets_zeros():
    def loss(w, unused, x):
        return gc.sum(w * x)

    w, u, x = rand(2, 3), rand(4, 5), rand(2, 3)
    gw, gu = gc.grad(loss, wrt=("w", "unused"))(w, u, x)
    np.testing.assert_allclose(gw, x)
    assert gu.shape == (4, 5) and gu.dtype == u.dtype
    assert np.all(gu == 0)


def test_repeated_wrt_and_a_loss_that_is_an_input():
    x, y = rand(2), rand(2)
    gx1, gx2, gy = gc.grad(lambda x, y: gc.sum(x * y), wrt=(0, 0, 1))(x, y)
    np.testing.assert_array_equal(gx1, y)
    np.testing.assert_array_equal(gx2, y)
    assert not np.shares_memory(gx1, gx2)
    np.testing.assert_array_equal(gy, x)
    value, g = gc.value_and_grad(lambda s: s)(np.float64(3.0))
    assert value == 3.0 and g == 1.0


def test_gradient_of_a_stop_gradient_branch_is_zero():
    def loss(w):
        return gc.sum(gc.stop_gradient(w) * w)

    w = rand(3)
    np.testing.assert_allclose(gc.grad(loss)(w), w)


@pytest.mark.parametrize("form", ["v@M", "M@v", "v@v", "M@M", "sum(v@M)"])
def test_matmul_gradients_for_1d_and_2d_operands(form):
    M, v, w = rand(3, 3), rand(3), rand(3)
    loss = {"v@M": lambda M, v, w: gc.sum((v @ M) * w), "M@v": lambda M, v, w: gc.sum((M @ v) * w),
            "v@v": lambda M, v, w: v @ w, "M@M": lambda M, v, w: gc.sum(M @ M),
            "sum(v@M)": lambda M, v, w: gc.sum(v @ M)}[form]
    dM, dv = gc.grad(loss, wrt=("M", "v"))(M, v, w)
    expected = {"v@M": (np.outer(v, w), M @ w), "M@v": (np.outer(w, v), M.T @ w), "v@v": (0 * M, w),
                "M@M": (np.ones((3, 3)) @ M.T + M.T @ np.ones((3, 3)), 0 * v),
                "sum(v@M)": (np.outer(v, np.ones(3)), M.sum(1))}[form]
    np.testing.assert_allclose(dM, expected[0], rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(dv, expected[1], rtol=1e-12, atol=1e-14)


# --- has_aux ------------------------------------------------------------------------------------------

def loss_with_aux(w, x):
    pred = x @ w
    return gc.mean(pred ** 2), pred


def loss_with_aux_tuple(w, x):
    pred = x @ w
    return gc.mean(pred ** 2), (pred, gc.sum(w))


def test_value_and_grad_has_aux_structure():
    w, x = rand(3), rand(4, 3)
    (loss, aux), g = gc.value_and_grad(loss_with_aux, has_aux=True)(w, x)
    pred = x @ w
    np.testing.assert_allclose(loss, np.mean(pred ** 2))
    np.testing.assert_allclose(aux, pred)
    np.testing.assert_allclose(g, 2 * x.T @ pred / 4)


def test_grad_has_aux_structure():
    w, x = rand(3), rand(4, 3)
    g, aux = gc.grad(loss_with_aux, has_aux=True)(w, x)
    pred = x @ w
    np.testing.assert_allclose(g, 2 * x.T @ pred / 4)
    np.testing.assert_allclose(aux, pred)


def test_has_aux_with_tuple_aux_and_tuple_wrt():
    w, x = rand(3), rand(4, 3)
    (loss, (pred, total)), (gw, gx) = gc.value_and_grad(loss_with_aux_tuple, wrt=("w", "x"),
                                                        has_aux=True)(w, x)
    np.testing.assert_allclose(pred, x @ w)
    np.testing.assert_allclose(total, w.sum())
    np.testing.assert_allclose(gx, 2 * np.outer(x @ w, w) / 4)
    (gw2, gx2), (pred2, total2) = gc.grad(loss_with_aux_tuple, wrt=("w", "x"), has_aux=True)(w, x)
    np.testing.assert_array_equal(gw2, gw)
    np.testing.assert_array_equal(pred2, pred)


# --- compilation reuse ----------------------------------------------------------------------------------

def test_second_call_with_same_shapes_does_not_retrace():
    calls = []

    def fn(a, b):
        calls.append(1)
        return gc.sum(a * b)

    g = gc.value_and_grad(fn)
    for _ in range(3):
        a, b = rand(3, 2), rand(3, 2)
        value, da = g(a, b)
        np.testing.assert_allclose(value, np.sum(a * b))
        np.testing.assert_allclose(da, b)
    assert len(calls) == 1
    g(rand(5, 2), rand(5, 2))  # a new shape is a new signature
    assert len(calls) == 2
    g(rand(5, 2).astype(np.float32), rand(5, 2).astype(np.float32))  # so is a new dtype
    assert len(calls) == 3
    g(rand(3, 2), rand(3, 2))
    assert len(calls) == 3 and len(g._cache) == 3


def test_annotated_function_traces_once_for_every_batch_size():
    calls = []

    @gc.jit
    def fn(x: gc.f32["B", 3], w: gc.f32[3]):
        calls.append(1)
        return x @ w

    w = rand(3, dtype=np.float32)
    for batch in (1, 7, 30):
        x = rand(batch, 3, dtype=np.float32)
        np.testing.assert_allclose(fn(x, w), x @ w, rtol=1e-5)
    assert len(calls) == 1 and len(fn._cache) == 1


def test_lower_reuses_the_compilation():
    g = gc.value_and_grad(poly)
    a, b, c = rand(3), rand(3), rand(3)
    lowered = g.lower(a, b, c)
    g(a, b, c)
    assert g.lower(a, b, c) is lowered
    assert len(g._cache) == 1


# --- make_ir, lower() and the stages ----------------------------------------------------------------

def named_model(x, W):
    f = x @ W
    g = gc.sigmoid(f)
    return gc.sum(g * g)


def test_make_ir_gives_the_traced_graph():
    x, W = rand(2, 3), rand(3, 4)
    graph = gc.make_ir(named_model)(x, W)
    assert isinstance(graph, gc.ir.Graph)
    text = str(graph)
    assert text == gc.value_and_grad(named_model, wrt="W").lower(x, W).as_text("traced")
    assert text.startswith("func @named_model(%x: f64[2,3], %W: f64[3,4]) -> (f64[]) {")
    assert gc.ir.parse(text) is not None


def test_make_ir_uses_annotations_without_arrays():
    text = str(gc.make_ir(models.seed_annotated)())
    assert "%x: f32[B,5]" in text and "-> (f32[])" in text
    with pytest.raises(TypeError, match="needs example arrays"):
        gc.make_ir(named_model)()


def test_value_names_follow_python_variables():
    text = str(gc.make_ir(named_model)(rand(2, 3), rand(3, 4)))
    assert re.search(r"^  %f = matmul\(%x, %W\)", text, re.M)
    assert re.search(r"^  %g = sigmoid\(%f\)", text, re.M)
    grad = gc.value_and_grad(named_model, wrt="W").lower(rand(2, 3), rand(3, 4)).as_text("grad")
    assert re.search(r"^  %dW = ", grad, re.M) and re.search(r"^  %dg = ", grad, re.M)


def test_ops_carry_the_users_source_line():
    text = str(gc.make_ir(named_model)(rand(2, 3), rand(3, 4)))
    f_line, g_line = line_of(named_model, "f = x @ W"), line_of(named_model, "g = gc.sigmoid")
    assert re.search(rf"%f = matmul.*  # test_api\.py:{f_line}$", text, re.M)
    assert re.search(rf"%g = sigmoid.*  # test_api\.py:{g_line}$", text, re.M)
    ops = [ln for ln in text.splitlines() if " = " in ln]
    assert ops and all(re.search(r"  # test_api\.py:\d+$", ln) for ln in ops)


def test_adjoint_ops_carry_the_forward_line_and_vjp():
    text = gc.value_and_grad(named_model, wrt="W").lower(rand(2, 3), rand(3, 4)).as_text("grad")
    g_line = line_of(named_model, "g = gc.sigmoid")
    assert re.search(rf"# test_api\.py:{g_line} vjp\(sigmoid\)$", text, re.M)


def test_lower_every_stage_as_text():
    lowered = gc.value_and_grad(models.seed_loss, wrt=("U", "V")).lower(*seed_args(np.float32))
    required = ["traced", "grad", "optimized", "llvm", "asm"]
    assert [s for s in lowered.stages if s in required] == required
    assert lowered.stages[-2:] == ["llvm", "asm"] and list(lowered.graphs) == lowered.stages[:-2]
    texts = {s: lowered.as_text(s) for s in lowered.stages}
    for stage in lowered.graphs:  # traced, grad, optimized and any later graph stage
        assert texts[stage].startswith("func @seed_loss(") and texts[stage].endswith("}\n")
        assert str(gc.ir.parse(texts[stage])) == texts[stage]
    assert "transpose(" in texts["traced"] and "vjp(" not in texts["traced"]
    assert "vjp(matmul)" in texts["grad"]
    assert "transpose(" not in texts["optimized"]
    assert "define" in texts["llvm"] and "gradc_entry" in texts["llvm"]
    asm = texts["asm"]
    assert re.search(r"^\s+(mov|vmov|add|vadd|mul|vmul|vfmadd|ret|ldr|str|fmul|fadd|fmla)\w*\s", asm,
                     re.M), asm[:500]
    assert lowered.as_text() == texts["optimized"]
    with pytest.raises(ValueError, match="unknown stage 'bogus'.*traced"):
        lowered.as_text("bogus")


def test_jit_has_no_grad_stage():
    lowered = gc.jit(named_model).lower(rand(2, 3), rand(3, 4))
    assert list(lowered.graphs)[:2] == ["traced", "optimized"] and "grad" not in lowered.graphs
    with pytest.raises(ValueError, match="unknown stage 'grad'"):
        lowered.as_text("grad")


@pytest.mark.parametrize("stage", ["traced", "grad", "optimized"])
def test_lower_as_dot(stage):
    lowered = gc.value_and_grad(named_model, wrt="W").lower(rand(2, 3), rand(3, 4))
    dot = lowered.as_dot(stage)
    graph = lowered.graphs[stage]
    assert dot.startswith('digraph "named_model" {') and dot.rstrip().endswith("}")
    nodes = re.findall(r'^  "([^"]+)" \[label=', dot, re.M)
    assert len(nodes) == len(graph.inputs) + len(graph.ops) + len(graph.outputs)
    assert len(set(nodes)) == len(nodes)
    assert '"x" [label="x\\nf64[2,3]"' in dot  # a DOT newline escape, not an escaped backslash
    edges = re.findall(r'^  "([^"]+)" -> "([^"]+)";', dot, re.M)
    assert set(a for a, _ in edges) <= set(nodes) and set(b for _, b in edges) <= set(nodes)
    assert len(edges) == sum(len(set(op.operands)) for op in graph.ops) + len(graph.outputs)
    assert ("#fde2c8" in dot) == (stage != "traced")  # adjoint ops are coloured


def test_as_dot_rejects_non_graph_stages():
    lowered = gc.jit(named_model).lower(rand(2, 3), rand(3, 4))
    with pytest.raises(ValueError, match="graph stage.*'llvm'"):
        lowered.as_dot("llvm")


def test_timings_are_recorded():
    lowered = gc.value_and_grad(named_model, wrt="W").lower(rand(2, 3), rand(3, 4))
    lowered.as_text("llvm")
    assert {"trace", "autodiff", "optimize", "llvm"} <= set(lowered.timings)
    assert all(t >= 0 for t in lowered.timings.values())


def test_compiled_wraps_the_function():
    compiled = gc.jit(named_model)
    assert compiled.__name__ == "named_model" and compiled.__wrapped__ is named_model


# --- bad input: clear exceptions ------------------------------------------------------------------------

@gc.jit
def annotated(U: gc.f32[8, 5], x: gc.f32["B", 5], y: gc.f32["B", 8]):
    return gc.sum(gc.sigmoid(x @ U.T) - y)


def f32(*shape):
    return rand(*shape, dtype=np.float32)


def test_wrong_shape_against_annotation_names_argument():
    with pytest.raises(gc.ShapeError, match=r"argument 'U'.*f32\[8,5\].*\[7, 5\]"):
        annotated(f32(7, 5), f32(4, 5), f32(4, 8))
    with pytest.raises(gc.ShapeError, match=r"argument 'x'.*f32\[B,5\].*1-D"):
        annotated(f32(8, 5), f32(5), f32(4, 8))


def test_inconsistent_symbolic_dims_name_argument_and_binding():
    with pytest.raises(gc.ShapeError, match=r"argument 'y'.*B=4 \(from argument 'x'\).*\[3, 8\]"):
        annotated(f32(8, 5), f32(4, 5), f32(3, 8))

    def square(a: gc.f32["B", "B"]):
        return a * 2.0
    with pytest.raises(gc.ShapeError, match=r"argument 'a'.*B=2 \(from an earlier axis\)"):
        gc.jit(square)(f32(2, 3))


def test_float64_into_float32_function():
    with pytest.raises(TypeError, match=r"argument 'x'.*float32.*float64"):
        annotated(f32(8, 5), rand(4, 5), f32(4, 8))


@pytest.mark.parametrize("dtype", [np.int64, np.int32, np.bool_, np.complex128, np.float16])
def test_non_float_arrays_are_rejected(dtype):
    bad = np.ones((4, 5), dtype)
    with pytest.raises(TypeError, match=rf"argument 'x'.*float32 or float64.*{np.dtype(dtype)}"):
        gc.jit(lambda x: x * 2.0)(bad)
    with pytest.raises(TypeError, match=r"argument 'x'"):
        annotated(f32(8, 5), bad, f32(4, 8))


def test_wrong_argument_count():
    with pytest.raises(TypeError, match=r"takes 3 arguments \(U, x, y\), got 2"):
        annotated(f32(8, 5), f32(4, 5))
    with pytest.raises(TypeError, match=r"takes 4 arguments \(U, V, x, y\), got 5"):
        gc.grad(models.seed_loss)(*seed_args(), seed_args()[0])


def scaled_norm(w: gc.f32[3], lam: gc.f32[()]):
    return gc.sum(w * w) * lam


@pytest.mark.parametrize("lam", [0.5, 2, np.float32(0.5), np.array(0.5, np.float32)],
                         ids=["float", "int", "numpy-scalar", "0d-array"])
def test_numbers_and_numpy_scalars_are_arguments(lam):
    """A Python number takes the parameter's dtype (it has none of its own, as in JAX); a numpy
    scalar is a 0-d array of its dtype. Value and gradients as with a 0-d array."""
    w = np.array([1.0, 2.0, 3.0], np.float32)
    step = gc.value_and_grad(scaled_norm, wrt=("w", "lam"))
    for _ in range(2):  # first call compiles, the second goes through the recent-signature path
        value, (dw, dlam) = step(w, lam)
        assert value.dtype == dw.dtype == dlam.dtype == np.float32
        np.testing.assert_allclose(value, 14 * float(np.asarray(lam)), rtol=1e-6)
        np.testing.assert_allclose(dw, 2 * w * float(np.asarray(lam)), rtol=1e-6)
        np.testing.assert_allclose(dlam, 14, rtol=1e-6)


def test_numbers_and_lists_take_the_arrays_dtype_without_annotations():
    x = np.array([1.0, 2.0], np.float32)
    out = gc.jit(lambda x, s, b: x * s + b)(x, 3, [0.5, 0.25])
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, [3.5, 6.25])
    assert gc.grad(lambda x, s: gc.sum(x * s), wrt=1)(x, 2.0).dtype == np.float32
    with pytest.raises(TypeError, match=r"argument 'lam': expected dtype float32.*got float64"):
        gc.jit(scaled_norm)(x[:1].repeat(3), np.float64(0.5))  # a numpy scalar keeps its dtype


def test_keyword_arguments_and_defaults():
    """As in JAX: a parameter a call leaves out is its default, a Python constant while tracing (an
    axis, a flag, None); one that is passed is a tensor argument, by position or keyword."""
    def loss(x, W, scale=2.0, axis=None):
        return gc.sum(gc.sum(x @ W, axis=axis)) * scale
    x, W = np.ones((2, 3), np.float32), np.ones((3, 4), np.float32)
    dW = gc.grad(loss, wrt=1)(x, W)
    np.testing.assert_array_equal(dW, np.full((3, 4), 4.0, np.float32))
    step = gc.grad(loss, wrt=(1, 2))
    dW3, dscale = step(W=W, x=x, scale=3.0)
    np.testing.assert_array_equal(dW3, np.full((3, 4), 6.0, np.float32))
    assert dscale == 24.0 and dscale.dtype == np.float32
    np.testing.assert_array_equal(step(x, W, 2.0)[0], dW)
    with pytest.raises(gc.GradError, match=r"wrt='scale': the call leaves scale out"):
        step(x, W)
    with pytest.raises(TypeError, match=r"unexpected keyword argument 'q'"):
        step(x, W, q=1.0)
    with pytest.raises(TypeError, match=r"multiple values for argument 'W'"):
        step(x, W, W=W)
    with pytest.raises(TypeError, match=r"loss takes 4 arguments \(x, W, scale, axis\), got 1: 'W' is missing"):
        step(x)

    def summed(x: gc.f32["B", 3], axis=1, keepdims=False):  # trailing defaults may go unannotated
        return gc.sum(x, axis=axis, keepdims=keepdims)
    np.testing.assert_array_equal(gc.jit(summed)(x), [3.0, 3.0])
    assert str(gc.jit(summed).lower().graphs["traced"]).splitlines()[0] == "func @summed(%x: f32[B,3]) -> (f32[B]) {"


def test_mixed_dtypes_without_annotations_name_the_arguments():
    with pytest.raises(gc.ShapeError, match=r"matmul: dtypes f32 and f64 differ; gradc does not promote.*"
                                            r"the arguments' dtypes: W f64, x f32"):
        gc.grad(lambda W, x: gc.sum(x @ W.T))(np.ones((3, 4)), np.ones((2, 4), np.float32))


def test_reshape_minus_one_rpow_size_len_and_symbolic_dims_as_numbers():
    x = rand(2, 3, 4)
    assert gc.jit(lambda x: x.reshape(-1, 4))(x).shape == (6, 4)
    assert gc.jit(lambda x: x.reshape(2, -1))(x).shape == (2, 12)

    def per_row(x: gc.f64["B", 3, 4]):
        flat = x.reshape("B", -1)  # -1 = 12; and below, -1 stands for the symbolic dim itself
        return gc.sum(flat, axis=1) / x.shape[0], flat.reshape(-1, 3, 4)
    mean_of_rows, back = gc.jit(per_row)(x)
    np.testing.assert_allclose(mean_of_rows, x.reshape(2, -1).sum(1) / 2, rtol=1e-13)
    np.testing.assert_array_equal(back, x)
    with pytest.raises(gc.ShapeError, match=r"cannot infer the -1 in \[-1, 5\]"):
        gc.jit(lambda x: x.reshape(-1, 5))(x)
    y = rand(2, 3)
    np.testing.assert_allclose(gc.jit(lambda y: 2.0 ** y)(y), 2.0 ** y, rtol=1e-14)
    np.testing.assert_allclose(gc.grad(lambda y: gc.sum(3.0 ** y))(y), np.log(3.0) * 3.0 ** y, rtol=1e-14)
    with pytest.raises(TypeError, match=r"positive finite constant"):
        gc.jit(lambda y: (-2.0) ** y)(y)
    np.testing.assert_allclose(gc.jit(lambda y: y * y.size + len(y))(y), y * 6 + 2, rtol=1e-15)


def test_grad_of_non_scalar_output():
    with pytest.raises(gc.GradError, match=r"scalar output.*f64\[3,2\]"):
        gc.grad(lambda a: a * 2.0)(rand(3, 2))


def test_grad_of_tuple_output_without_has_aux():
    with pytest.raises(gc.GradError, match="has_aux=True"):
        gc.value_and_grad(loss_with_aux)(rand(3), rand(4, 3))


@pytest.mark.parametrize("fn", [lambda a: gc.sum(a), lambda a: (gc.sum(a), a, a),
                                lambda a: ((gc.sum(a), gc.sum(a)), a), lambda a: (a, gc.sum(a))])
def test_has_aux_misuse(fn):
    with pytest.raises(gc.GradError, match=r"has_aux=True.*\(loss, aux\)|scalar output"):
        gc.grad(fn, has_aux=True)(rand(3))


@pytest.mark.parametrize("wrt, pattern", [("W", r"wrt='W' is not a parameter of seed_loss\(U, V, x, y\)"),
                                          (4, r"wrt=4"), (-5, r"wrt=-5"), (1.0, r"wrt=1\.0"),
                                          (True, "wrt=True"), ((), "wrt names no argument"),
                                          (("U", "nope"), "wrt='nope'")])
def test_wrt_naming_a_missing_argument(wrt, pattern):
    with pytest.raises(ValueError, match=pattern):
        gc.grad(models.seed_loss, wrt=wrt)


def test_grad_needs_positional_parameters():
    with pytest.raises(TypeError, match=r"parameter 'rest' is variadic"):
        gc.jit(lambda x, *rest: x)


def test_partial_annotations():
    def half(a: gc.f32[3], b):
        return a

    with pytest.raises(TypeError, match="missing: b"):
        gc.jit(half)


def test_python_if_on_a_tracer():
    def branchy(x):
        if gc.sum(x):
            return x
        return -x

    line = line_of(branchy, "if gc.sum(x)")
    with pytest.raises(gc.TracingError, match=rf"test_api\.py:{line}: Python control flow"):
        gc.jit(branchy)(rand(3))


@pytest.mark.parametrize("fn, name", [(lambda x: np.exp(x), "exp"), (lambda x: np.sum(x), "sum"),
                                      (lambda x: np.tanh(x) + x, "tanh"), (lambda x: np.mean(x), "mean")])
def test_numpy_functions_on_a_tracer(fn, name):
    with pytest.raises(gc.TracingError, match=rf"numpy\.{name} applied to a traced tensor; use gc\.{name}"):
        gc.jit(fn)(rand(3))


@pytest.mark.parametrize("fn, hint", [(lambda x: np.abs(x), "gc.abs or abs()"), (lambda x: np.amin(x), "gc.min"),
                                      (lambda x: np.min(x), "gc.min"), (lambda x: np.power(x, 2.0), "the ** operator"),
                                      (lambda x: np.greater(x, 0), "the > operator"),
                                      (lambda x: np.cumsum(x), "the gc.* functions (gc.exp, gc.sum, ...)")])
def test_numpy_functions_on_a_tracer_suggest_what_exists(fn, hint):
    with pytest.raises(gc.TracingError, match=rf"applied to a traced tensor; use {re.escape(hint)} instead"):
        gc.jit(fn)(rand(3))


@pytest.mark.parametrize("fn", [lambda x: x + np.ones(3), lambda x: np.ones(3) + x,
                                lambda x: x * np.ones(3), lambda x: np.ones(3) * x,
                                lambda x: np.ones((3, 3)) @ x])
def test_ndarray_constants_mixed_with_tracers(fn):
    with pytest.raises(TypeError, match=r"numpy array of shape \((3,|3, 3)\).*pass it to the function "
                                        r"as an argument") as info:
        gc.jit(fn)(rand(3))
    assert len(str(info.value)) < 300  # no dump of the array's values


@pytest.mark.parametrize("fn", [lambda x: x[0], lambda x: x[:, 1], lambda x: [v for v in x][0],
                                lambda x: x * float(x), lambda x: x * int(x)])
def test_indexing_and_values_of_a_tracer(fn):
    with pytest.raises(gc.TracingError, match="traced tensor"):
        gc.jit(fn)(rand(3, 2))


def test_non_tensor_return():
    with pytest.raises(TypeError, match="must return at least one traced tensor, got None"):
        gc.jit(lambda x: None)(rand(3))
    with pytest.raises(TypeError, match="must return traced tensors .*got str 'a'"):
        gc.jit(lambda x: (x, "a"))(rand(3))


def test_a_jitted_function_called_while_tracing_joins_the_outer_graph():
    inner = gc.jit(lambda a, b: gc.sigmoid(a @ b))
    W, x = rand(3, 2), rand(4, 3)
    dW = gc.grad(lambda W, x: gc.sum(inner(x, W)))(W, x)
    s = 1 / (1 + np.exp(-(x @ W)))
    np.testing.assert_allclose(dW, x.T @ (s * (1 - s)), rtol=1e-12)
    nested = gc.jit(lambda W, x: gc.grad(lambda W: gc.sum(W * x))(W))
    with pytest.raises(TypeError, match=r"gc.grad\(<lambda>\) called inside a function being traced"):
        nested(W, W)


def test_returns_nest_dicts_and_none_as_pytrees():
    """As in JAX: dicts (keys kept) and None (no tensor) anywhere in what a function returns, aux too."""
    x = rand(2, 3)
    out = gc.jit(lambda x: {"double": x * 2, "stats": (gc.sum(x), None), "none": []})(x)
    assert list(out) == ["double", "stats", "none"] and out["none"] == [] and out["stats"][1] is None
    np.testing.assert_allclose(out["stats"][0], x.sum(), rtol=1e-14)
    (loss, aux), dx = gc.value_and_grad(lambda x: (gc.sum(x * x), {"mean": gc.mean(x), "skip": None}),
                                        has_aux=True)(x)
    assert aux["skip"] is None
    np.testing.assert_allclose(aux["mean"], x.mean(), rtol=1e-14)
    np.testing.assert_allclose(dx, 2 * x, rtol=1e-14)
    (loss, aux), _ = gc.value_and_grad(lambda x: (gc.sum(x), None), has_aux=True)(x)
    assert aux is None
    pair = collections.namedtuple("pair", "double plus_one")
    out = gc.jit(lambda x: pair(x * 2, collections.OrderedDict(y=x + 1)))(x)
    assert type(out) is pair and type(out.plus_one) is collections.OrderedDict
    np.testing.assert_array_equal(out.plus_one["y"], x + 1)


def test_a_namedtuple_loss_with_aux():
    result = collections.namedtuple("result", "loss aux")
    x = rand(3)
    (loss, aux), dx = gc.value_and_grad(lambda x: result(gc.sum(x * x), x * 2), has_aux=True)(x)
    np.testing.assert_allclose(aux, 2 * x, rtol=1e-15)
    np.testing.assert_allclose(dx, 2 * x, rtol=1e-15)


def test_unannotated_defaults_of_an_annotated_function_are_constants():
    def total(x: gc.f32["B", 3], axis=1):
        return gc.sum(x, axis=axis)
    x = f32(2, 3)
    np.testing.assert_allclose(gc.jit(functools.partial(total, axis=0))(x), x.sum(0), rtol=1e-6)
    for call in (lambda: gc.jit(total)(x, 0), lambda: gc.jit(total)(x, axis=0)):
        with pytest.raises(TypeError, match=r"axis has a default and no annotation, so it is a Python constant"):
            call()
    with pytest.raises(gc.GradError, match=r"wrt='axis': in the annotated total, axis has a default"):
        gc.grad(total, wrt=-1)
    with pytest.raises(TypeError, match=r"argument 'b': None is not an array or a number"):
        gc.jit(lambda x, b=None: x * 2.0)(x, None)


def test_a_sequence_of_arrays_is_not_one_argument():
    x = rand(3)
    with pytest.raises(TypeError, match=r"argument 'x': a tuple of arrays; gradc takes one array per parameter"):
        gc.jit(lambda x: x * 1.0)((x, x))


def test_tensor_exponent():
    with pytest.raises(TypeError, match=r"x \*\* e needs a constant Python number"):
        gc.jit(lambda x: x ** x)(rand(3))


def test_gc_functions_outside_a_trace():
    with pytest.raises(TypeError, match="gc.sigmoid works on the traced arguments.*ndarray"):
        gc.sigmoid(rand(3))


def bad_matmul(U, x):
    h = x @ U
    return gc.sum(h)


def test_shape_mismatch_inside_the_model_points_at_the_users_line():
    line = line_of(bad_matmul, "h = x @ U")
    with pytest.raises(gc.ShapeError, match=rf"^test_api\.py:{line}: matmul: inner dimensions differ: "
                                            r"\(4, 5\) @ \(8, 5\) \(5 vs 8\) \(operands %x: f64\[4,5\], "
                                            r"%U: f64\[8,5\]\)$"):
        gc.grad(bad_matmul)(rand(8, 5), rand(4, 5))


def test_wrong_argument_shape_without_annotations_names_the_argument():
    U, V, x, y = seed_args()
    line = line_of(models.seed_loss, "f = x @ U.T")
    with pytest.raises(gc.ShapeError, match=rf"models\.py:{line}: matmul: inner dimensions differ.*\(4 vs 5\) "
                                            r"\(operands %x: f64\[4,4\], f64\[5,8\]\)"):
        gc.value_and_grad(models.seed_loss)(U, V, x[:, :4], y)
    with pytest.raises(gc.ShapeError, match=r"sub: shapes \(4, 3\), \(4, 2\) do not broadcast \(operands "
                                            r"f64\[4,3\], %y: f64\[4,2\]\)"):
        gc.value_and_grad(models.seed_loss)(U, V, x, y[:, :2])


def test_broadcast_mismatch_and_bad_axis_point_at_the_users_line():
    def model(a, b):
        c = a + b
        return gc.sum(c, axis=3)

    line = line_of(model, "c = a + b")
    with pytest.raises(gc.ShapeError, match=rf"test_api\.py:{line}: add: shapes \(2, 3\), \(4,\) do not broadcast"):
        gc.jit(model)(rand(2, 3), rand(4))
    with pytest.raises(gc.ShapeError, match=rf"test_api\.py:{line + 1}: axis 3 is out of range.*rank 2"):
        gc.jit(model)(rand(2, 3), rand(3))


def test_mixed_dtypes_inside_the_model():
    with pytest.raises(gc.ShapeError, match=r"dtypes f64 and f32 differ.*\(operands %a: f64\[3\], %b: f32\[3\]\)"):
        gc.jit(lambda a, b: a * b)(rand(3), f32(3))


def test_errors_leave_the_compiled_function_usable():
    fn = gc.jit(lambda x: gc.sum(x, axis=1))
    with pytest.raises(gc.ShapeError):
        fn(rand(3))
    np.testing.assert_allclose(fn(np.ones((2, 3))), [3.0, 3.0])


def test_partials_and_callable_objects():
    import functools

    def scaled(scale, W, x):
        return gc.sum((x @ W) * scale)

    class Model:
        def __call__(self, W, x):
            return gc.sum(x @ W)

    W, x = rand(3, 2), rand(4, 3)
    step = gc.grad(functools.partial(scaled, 2.0))
    np.testing.assert_allclose(step(W, x), 2.0 * x.T @ np.ones((4, 2)))
    assert gc.make_ir(functools.partial(scaled, 2.0))(W, x).name == "scaled"
    np.testing.assert_allclose(gc.grad(Model(), wrt="x")(W, x), np.ones((4, 2)) @ W.T)
    with pytest.raises(TypeError, match=r"scaled takes 2 arguments \(W, x\), got 1"):
        step(W)
    with pytest.raises(TypeError, match=r"Model takes 2 arguments \(W, x\), got 3"):
        gc.jit(Model())(W, x, x)
    with pytest.raises(ValueError, match=r"wrt='q' is not a parameter of Model\(W, x\)"):
        gc.grad(Model(), wrt="q")
    with pytest.raises(TypeError, match=r"numpy array of shape \(3, 2\)"):
        gc.jit(functools.partial(scaled, W))(W, x)  # an array bound by a partial is a constant


@pytest.mark.parametrize("dim", ["batch size", "3", "", "B-1"])
def test_annotation_symbols_must_be_names(dim):
    with pytest.raises(gc.ShapeError, match=rf"a symbolic dim is a name like 'B', got {re.escape(repr(dim))}"):
        gc.f32[dim, 3]


@pytest.mark.parametrize("dim", [-1, 2.5, None, True])
def test_annotation_dims_must_be_ints_or_names(dim):
    with pytest.raises(gc.ShapeError, match="bad dim"):
        gc.f64[3, dim]


def test_make_ir_checks_the_argument_count():
    with pytest.raises(TypeError, match=r"takes 2 arguments \(a, b\), got 1"):
        gc.make_ir(lambda a, b: a * b)(np.ones(3))
