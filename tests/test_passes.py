"""Every graph pass preserves the reference interpreter's results (on the models and on random graphs),
each does its rewrite, and the verifier rejects broken graphs."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings

import models
from gradc.ir import Builder, Graph, Op, TensorType, Value, VerificationError, interpret, parse, verify
from gradc.ir.passes import (PASSES, SIMPLIFICATION, Autodiff, CommonSubexpressionElimination,
                             ConstantFolding, DeadCodeElimination, FoldTransposes, Pass, Simplify,
                             optimize, run_passes)

LOWERED = models.lowered_models()
SINGLE_PASSES = [Simplify, ConstantFolding, FoldTransposes, CommonSubexpressionElimination,
                 DeadCodeElimination]
SETTINGS = settings(max_examples=30, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def assert_same_results(got, expected, dtype):
    assert len(got) == len(expected)
    tol = dict(rtol=2e-5, atol=1e-6) if dtype == np.float32 else dict(rtol=1e-11, atol=1e-13)
    for g, e in zip(got, expected):
        assert g.shape == e.shape and g.dtype == e.dtype
        np.testing.assert_allclose(g, e, **tol)


def check_pass_preserves(graph: Graph, passes, args, until_fixpoint=False) -> Graph:
    before = str(graph)
    expected = interpret(graph, *args)
    new = run_passes(graph, passes, until_fixpoint=until_fixpoint)
    assert str(graph) == before, "run_passes must leave its input graph alone"
    verify(new)
    assert [v.type for v in new.inputs] == [v.type for v in graph.inputs]
    assert [v.type for v in new.outputs] == [v.type for v in graph.outputs]
    assert_same_results(interpret(new, *args), expected, expected[0].dtype)
    return new


# --- every pass on every model ----------------------------------------------------------------------

@pytest.mark.parametrize("pass_type", SINGLE_PASSES, ids=lambda p: p.name)
@pytest.mark.parametrize("stage", ["traced", "grad"])
@pytest.mark.parametrize("name, lowered", LOWERED, ids=[name for name, _ in LOWERED])
def test_each_pass_preserves_results_on_models(name, lowered, stage, pass_type):
    graph = lowered.graphs[stage]
    check_pass_preserves(graph, [pass_type()], models.example_inputs(name))
    check_pass_preserves(graph, [pass_type()], models.example_inputs(name), until_fixpoint=True)


@pytest.mark.parametrize("name, lowered", LOWERED, ids=[name for name, _ in LOWERED])
def test_autodiff_keeps_the_forward_outputs(name, lowered):
    traced, grad = lowered.graphs["traced"], lowered.graphs["grad"]
    args = models.example_inputs(name)
    forward = interpret(traced, *args)
    both = interpret(grad, *args)
    assert len(both) == len(forward) + len(grad.outputs) - len(traced.outputs)
    for f, b in zip(forward, both):
        np.testing.assert_array_equal(f, b)
    assert str(run_passes(traced, [])) == str(traced)  # no passes: a plain copy


@pytest.mark.parametrize("name, lowered", LOWERED, ids=[name for name, _ in LOWERED])
def test_optimize_is_a_fixpoint_and_shrinks(name, lowered):
    grad, optimized = lowered.graphs["grad"], lowered.graphs["optimized"]
    assert len(optimized.ops) < len(grad.ops)
    assert str(optimize(optimized)) == str(optimized)
    args = models.example_inputs(name)
    assert_same_results(interpret(optimized, *args), interpret(grad, *args), args[0].dtype)
    for pass_type in SINGLE_PASSES:
        assert not pass_type().run(optimized.clone()), f"{pass_type.name} still changes the optimized graph"


def test_autodiff_gradients_match_finite_differences_on_models():
    for name in ("mix", "vectors", "seed_single"):
        lowered = dict(LOWERED)[name]
        args = [np.asarray(a, np.float64) for a in models.example_inputs(name)]
        grads = interpret(lowered.graphs["grad"], *args)[1:]
        forward = lambda *a: float(interpret(lowered.graphs["traced"], *a)[0])  # noqa: E731
        for i, g in enumerate(grads):
            np.testing.assert_allclose(g, models.finite_difference(forward, args, i), rtol=1e-6, atol=1e-8)


# --- random graphs -----------------------------------------------------------------------------------

@SETTINGS
@given(models.random_graphs())
def test_random_graphs_every_pass_preserves_results(graph):
    verify(graph)
    args = models.random_inputs(graph)
    for pass_type in SINGLE_PASSES:
        check_pass_preserves(graph, [pass_type()], args)
    optimized = check_pass_preserves(graph, SIMPLIFICATION, args, until_fixpoint=True)
    assert str(optimize(optimized)) == str(optimized)
    assert str(parse(str(optimized))) == str(optimized)


@SETTINGS
@given(models.random_graphs())
def test_random_graphs_autodiff_keeps_forward_and_optimizes_safely(graph):
    loss_graph = models.with_scalar_loss(graph)
    args = models.random_inputs(loss_graph, seed=1)
    wrt = list(range(len(loss_graph.inputs)))
    grad = check_forward_kept(loss_graph, wrt, args)
    check_pass_preserves(grad, SIMPLIFICATION, args, until_fixpoint=True)
    for pass_type in SINGLE_PASSES:
        check_pass_preserves(grad, [pass_type()], args)


@settings(max_examples=25, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(models.random_graphs(smooth=True, dtypes=("f64",), max_ops=8))
def test_random_smooth_graphs_autodiff_matches_finite_differences(graph):
    loss_graph = models.with_scalar_loss(graph)
    args = models.random_inputs(loss_graph, seed=2)
    wrt = list(range(len(loss_graph.inputs)))
    grad = optimize(check_forward_kept(loss_graph, wrt, args))
    grads = interpret(grad, *args)[len(loss_graph.outputs):]
    forward = lambda *a: float(interpret(loss_graph, *a)[0])  # noqa: E731
    for i, g in zip(wrt, grads):
        assert g.shape == args[i].shape
        np.testing.assert_allclose(g, models.finite_difference(forward, args, i, eps=1e-6),
                                   rtol=1e-5, atol=1e-6)


def check_forward_kept(graph: Graph, wrt, args) -> Graph:
    grad = run_passes(graph, [Autodiff(wrt)])
    assert len(grad.outputs) == len(graph.outputs) + len(wrt)
    results = interpret(grad, *args)
    for f, r in zip(interpret(graph, *args), results):
        np.testing.assert_array_equal(f, r)
    for i, g in zip(wrt, results[len(graph.outputs):]):
        assert g.shape == args[i].shape and g.dtype == args[i].dtype
    return grad


# --- what each pass does -------------------------------------------------------------------------------

def ir(body: str, signature: str = "%x: f64[2,3], %W: f64[3,2]") -> Graph:
    """A graph from IR text: `body` ops, returning the last op's value."""
    lines = [ln.strip() for ln in body.strip().splitlines()]
    last, result_type = lines[-1].split(" = ")[0], lines[-1].rsplit(" : ", 1)[1]
    body = "\n".join("  " + ln for ln in lines)
    return parse(f"func @t({signature}) -> ({result_type}) {{\n{body}\n  return {last}\n}}\n")


def ops_of(graph: Graph) -> list[str]:
    return [op.name for op in graph.ops]


def test_simplify_identities():
    graph = ir("""
        %one = const() {dtype=f64, value=1.0} : f64[]
        %zero = const() {dtype=f64, value=0.0} : f64[]
        %a = mul(%x, %one) : f64[2,3]
        %b = add(%zero, %a) : f64[2,3]
        %c = div(%b, %one) : f64[2,3]
        %d = sub(%c, %zero) : f64[2,3]
        %e = pow(%d) {exponent=1.0} : f64[2,3]
        %f = neg(%e) : f64[2,3]
        %g = neg(%f) : f64[2,3]
        %h = stop_gradient(%g) : f64[2,3]
        %i = reshape(%h) {shape=[2,3]} : f64[2,3]
        %j = transpose(%i) {perm=[0,1]} : f64[2,3]
        %k = broadcast(%j) {dims=[0,1], shape=[2,3]} : f64[2,3]
        %out = tanh(%k) : f64[2,3]""")
    new = check_pass_preserves(graph, [Simplify(), DeadCodeElimination()], models.random_inputs(graph),
                               until_fixpoint=True)
    assert ops_of(new) == ["tanh"] and new.ops[0].operands == [new.inputs[0]]


def test_simplify_keeps_what_is_not_an_identity():
    graph = ir("""
        %zero = const() {dtype=f64, value=0.0} : f64[]
        %two = const() {dtype=f64, value=2.0} : f64[]
        %a = mul(%x, %zero) : f64[2,3]
        %b = sub(%zero, %a) : f64[2,3]
        %c = div(%two, %b) : f64[2,3]
        %d = pow(%c) {exponent=2.0} : f64[2,3]
        %e = transpose(%d) {perm=[1,0]} : f64[3,2]
        %out = neg(%e) : f64[3,2]""")
    new = run_passes(graph, [Simplify()])
    assert ops_of(new) == ops_of(graph)
    x = np.array([[np.inf, -1.0, 0.0], [np.nan, 2.0, -0.0]])
    W = np.zeros((3, 2))
    # x * 0 is not 0 for inf and nan: not folding it keeps numpy's answer
    np.testing.assert_array_equal(interpret(optimize(graph), x, W)[0], interpret(graph, x, W)[0])
    assert np.isnan(interpret(optimize(graph), x, W)[0][0, 0])


def test_constant_folding():
    graph = ir("""
        %two = const() {dtype=f32, value=2.0} : f32[]
        %three = const() {dtype=f32, value=3.0} : f32[]
        %p = mul(%two, %three) : f32[]
        %q = exp(%p) : f32[]
        %r = gt(%q, %three) : f32[]
        %n = size() {dims=[2,B], dtype=f32} : f32[]
        %m = size() {dims=[2,3], dtype=f32} : f32[]
        %s = add(%r, %n) : f32[]
        %t = add(%s, %m) : f32[]
        %out = mul(%x, %t) : f32[B,3]""", signature="%x: f32[B,3]")
    args = [np.ones((4, 3), np.float32)]
    folded = check_pass_preserves(graph, [ConstantFolding()], args)
    consts = {op.result.name: op.attrs["value"] for op in folded.ops if op.name == "const"}
    assert consts["p"] == 6.0 and consts["m"] == 6.0 and consts["r"] == 1.0
    assert consts["q"] == pytest.approx(float(np.exp(np.float32(6.0))), rel=1e-7)
    new = check_pass_preserves(graph, [ConstantFolding(), DeadCodeElimination()], args, until_fixpoint=True)
    assert ops_of(new).count("size") == 1  # B is only known at call time
    assert ops_of(new).count("const") == 2  # r + m folded as far as they go: (1 + size) + 6


def test_fold_transposes():
    graph = ir("""
        %Wt = transpose(%W) {perm=[1,0]} : f64[2,3]
        %xt = transpose(%x) {perm=[1,0]} : f64[3,2]
        %a = matmul(%Wt, %xt) {transpose_a=false, transpose_b=false} : f64[2,2]
        %b = matmul(%xt, %Wt) {transpose_a=true, transpose_b=true} : f64[2,2]
        %c = add(%a, %b) : f64[2,2]
        %d = matmul(%x, %W) {transpose_a=false, transpose_b=false} : f64[2,2]
        %dt = transpose(%d) {perm=[1,0]} : f64[2,2]
        %e = add(%c, %dt) : f64[2,2]
        %tt = transpose(%xt) {perm=[1,0]} : f64[2,3]
        %f = matmul(%tt, %W) {transpose_a=false, transpose_b=false} : f64[2,2]
        %out = add(%e, %f) : f64[2,2]""")
    new = check_pass_preserves(graph, SIMPLIFICATION, models.random_inputs(graph), until_fixpoint=True)
    assert "transpose" not in ops_of(new)
    flags = sorted((op.attrs["transpose_a"], op.attrs["transpose_b"]) for op in new.ops if op.name == "matmul")
    assert (True, True) in flags and (False, False) in flags


def test_cse_and_dce():
    graph = ir("""
        %a = exp(%x) : f64[2,3]
        %b = exp(%x) : f64[2,3]
        %c = pow(%a) {exponent=2.0} : f64[2,3]
        %d = pow(%b) {exponent=3.0} : f64[2,3]
        %e = pow(%b) {exponent=2.0} : f64[2,3]
        %unused = matmul(%x, %W) {transpose_a=false, transpose_b=false} : f64[2,2]
        %f = add(%c, %d) : f64[2,3]
        %out = add(%f, %e) : f64[2,3]""")
    args = models.random_inputs(graph)
    cse = check_pass_preserves(graph, [CommonSubexpressionElimination()], args)
    dce = check_pass_preserves(cse, [DeadCodeElimination()], args)
    assert ops_of(dce) == ["exp", "pow", "pow", "add", "add"]
    assert ops_of(check_pass_preserves(graph, [DeadCodeElimination()], args)).count("matmul") == 0


def test_passes_registry_and_names():
    assert set(PASSES) == {"autodiff", "dce", "cse", "constant-fold", "simplify", "fold-transposes"}
    for name, p in PASSES.items():
        assert p.name == name


def test_run_passes_records_timings_and_verifies_each_pass():
    graph = dict(LOWERED)["seed"].graphs["grad"]
    timings = {}
    run_passes(graph, SIMPLIFICATION, until_fixpoint=True, timings=timings)
    assert set(timings) == {p.name for p in SIMPLIFICATION}

    class Breaks(Pass):
        name = "breaks"

        def run(self, graph):
            graph.ops.reverse()
            return True

    with pytest.raises(VerificationError, match="not defined before"):
        run_passes(graph, [Breaks()])


# --- the verifier ---------------------------------------------------------------------------------

def small_graph() -> Graph:
    graph = Graph("g")
    b = Builder(graph)
    x = b.wrap(graph.add_input("x", TensorType("f32", ("B", 3))))
    y = b.op("exp", x)
    z = b.op("reduce_sum", y, axes=[1], keepdims=False)
    graph.outputs = [z.value]
    verify(graph)
    return graph


def test_verify_accepts_a_good_graph():
    verify(small_graph())


def test_verify_rejects_use_before_define():
    graph = small_graph()
    graph.ops.reverse()
    with pytest.raises(VerificationError, match="reduce_sum reads a value that is not defined before it"):
        verify(graph)


def test_verify_rejects_a_value_from_another_graph():
    graph, other = small_graph(), small_graph()
    graph.ops[1].operands = [other.ops[0].result]
    with pytest.raises(VerificationError, match="not defined before"):
        verify(graph)


def test_verify_rejects_wrong_result_type():
    graph = small_graph()
    graph.ops[0].result.type = TensorType("f32", ("B", 4))
    with pytest.raises(VerificationError, match=r"exp: result type f32\[B,4\], shape rule says f32\[B,3\]"):
        verify(graph)
    graph = small_graph()
    graph.ops[1].result.type = TensorType("f64", ("B",))
    with pytest.raises(VerificationError, match="reduce_sum: result type f64"):
        verify(graph)


def test_verify_rejects_bad_attributes():
    graph = small_graph()
    graph.ops[1].attrs["axes"] = [2]
    with pytest.raises(Exception, match="axes"):
        verify(graph)


def test_verify_rejects_duplicated_and_orphaned_results():
    graph = small_graph()
    graph.ops.insert(1, graph.ops[0])
    with pytest.raises(VerificationError, match="defined twice"):
        verify(graph)
    graph = small_graph()
    graph.ops[0].result.producer = None
    with pytest.raises(VerificationError, match="does not point back"):
        verify(graph)


def test_verify_rejects_undefined_outputs_and_unknown_ops():
    graph = small_graph()
    graph.outputs = [Value(TensorType("f32", ()), "ghost")]
    with pytest.raises(VerificationError, match="output .* is not defined"):
        verify(graph)
    graph = small_graph()
    graph.ops[0].name = "frobnicate"
    with pytest.raises(VerificationError, match="unknown op 'frobnicate'"):
        verify(graph)


def test_verify_rejects_bad_input_names_and_unbound_dims():
    graph = small_graph()
    graph.add_input("x", TensorType("f32", ()))
    with pytest.raises(VerificationError, match="unique, non-empty names"):
        verify(graph)
    graph = small_graph()
    graph.add_input("", TensorType("f32", ()))
    with pytest.raises(VerificationError, match="unique, non-empty names"):
        verify(graph)
    graph = small_graph()
    b = Builder(graph)
    w = b.wrap(graph.ops[1].result).broadcast_to(("C", "B"), (1,))
    graph.outputs = [w.value]
    with pytest.raises(VerificationError, match=r"dim that no input binds \(\['C'\]\)"):
        verify(graph)


def test_verify_rejects_an_op_whose_result_is_another_ops():
    graph = small_graph()
    op = graph.ops[0]
    graph.ops.append(Op("tanh", [op.result], {}, op.result))
    with pytest.raises(VerificationError):
        verify(graph)
