"""Fusion: each pattern's fused native code equals the interpreter, and the kernels formed are the intended ones."""
from __future__ import annotations

import re

import numpy as np
import pytest

import gradc as gc
from gradc.backends.jit import NativeFunction
from gradc.ir import OPS, interpret
from gradc.ir.fusion import fuse, unfused
from gradc.ir.ops import ELEMENTWISE

RNG = np.random.default_rng(7)
TOLERANCE = {"f32": dict(rtol=2e-5, atol=2e-6), "f64": dict(rtol=1e-12, atol=1e-13)}
DTYPES = {"f32": np.float32, "f64": np.float64}


def arrays(dtype: str, *shapes: tuple, positive: bool = False) -> list[np.ndarray]:
    out = []
    for s in shapes:
        a = RNG.standard_normal(s)
        out.append((np.abs(a) + 0.5 if positive else a).astype(DTYPES[dtype]))
    return out


def lowered_for(fn, args, wrt=None):
    compiled = gc.jit(fn) if wrt is None else gc.value_and_grad(fn, wrt=wrt)
    return compiled.lower(*args)


def check_against_interpreter(fn, args, dtype: str, wrt=None):
    """Fused native results equal the interpreter's on the optimized graph; returns the fusion result."""
    lowered = lowered_for(fn, args, wrt)
    graph = lowered.graphs["optimized"]
    expected = interpret(graph, *args)
    native = lowered.native(*args)
    for e, got in zip(expected, native):
        np.testing.assert_allclose(got, e, **TOLERANCE[dtype])
    return lowered


def kernel_ops(lowered) -> list[list[str]]:
    return [[op.name for op in k.ops] for k in lowered.fusion.kernels]


@pytest.mark.parametrize("dtype", ["f32", "f64"])
@pytest.mark.parametrize("activation", [gc.sigmoid, gc.tanh, gc.relu])
def test_matmul_bias_activation_is_one_kernel(dtype, activation):
    def layer(W, b, x):
        return activation(x @ W.T + b)
    lowered = check_against_interpreter(layer, arrays(dtype, (6, 5), (6,), (4, 5)), dtype)
    assert kernel_ops(lowered) == [["matmul", "add", activation.__name__]]


ELEMENTWISE_OPS = sorted(name for name, d in OPS.items() if d.kind == ELEMENTWISE)


@pytest.mark.parametrize("dtype", ["f32", "f64"])
@pytest.mark.parametrize("name", ELEMENTWISE_OPS)
def test_every_elementwise_op_fuses_into_a_matmul_epilogue(dtype, name):
    """Every registered elementwise op, applied to a matmul's output, runs in the matmul's kernel."""
    attrs = {"pow": {"exponent": 1.5}, "rpow": {"base": 0.7}}.get(name, {})
    arity = OPS[name].arity

    def model(a, b, c):
        out = a @ b
        positive = out * out + 0.25  # keeps log, sqrt and pow in their domain
        operands = [out > 0.0, positive, c] if name == "where" else [positive, c][:arity]
        return positive.builder.op(name, *operands, **attrs)
    lowered = check_against_interpreter(model, arrays(dtype, (5, 4), (4, 6), (5, 6)), dtype)
    assert len(lowered.fusion.kernels) == 1, lowered.fusion_report()


@pytest.mark.parametrize("dtype", ["f32", "f64"])
@pytest.mark.parametrize("fn", [gc.softmax, gc.log_softmax, lambda z: gc.logsumexp(z, axis=1)])
def test_softmax_family_is_one_multi_pass_kernel(dtype, fn):
    lowered = check_against_interpreter(lambda z: fn(z) * 1.0, arrays(dtype, (7, 9)), dtype)
    (kernel,) = lowered.fusion.kernels
    assert kernel.reduced == (1,) and "reduce_max" in [op.name for op in kernel.ops]


@pytest.mark.parametrize("dtype", ["f32", "f64"])
def test_cross_entropy_loss_and_gradient(dtype):
    def loss(W, x, t):
        return gc.softmax_cross_entropy(x @ W.T, t)
    W, x = arrays(dtype, (4, 6), (8, 6))
    t = np.eye(4, dtype=DTYPES[dtype])[RNG.integers(0, 4, 8)]
    lowered = check_against_interpreter(loss, [W, x, t], dtype, wrt="W")
    assert lowered.fusion.kernels[0].matmul is not None
    assert len(lowered.fusion.kernels) <= 4, lowered.fusion_report()


@pytest.mark.parametrize("dtype", ["f32", "f64"])
@pytest.mark.parametrize("axis,keepdims", [(0, False), (1, False), (None, False), (1, True), (0, True)])
def test_reductions_fuse_with_their_elementwise_producers_and_consumers(dtype, axis, keepdims):
    def model(x, y):
        s = gc.sum(gc.exp(x) * y, axis=axis, keepdims=keepdims)
        return gc.log(s * s + 1.0)
    lowered = check_against_interpreter(model, arrays(dtype, (5, 8), (5, 8)), dtype)
    assert len(lowered.fusion.kernels) == 1, lowered.fusion_report()


@pytest.mark.parametrize("dtype", ["f32", "f64"])
@pytest.mark.parametrize("ta,tb", [(False, False), (False, True), (True, False), (True, True)])
def test_transposed_operands_are_read_in_place(dtype, ta, tb):
    def model(a, b):
        return gc.tanh((a.T if ta else a) @ (b.T if tb else b)) * 2.0
    a = arrays(dtype, (4, 3) if ta else (3, 4))[0]
    b = arrays(dtype, (5, 4) if tb else (4, 5))[0]
    lowered = check_against_interpreter(model, [a, b], dtype)
    assert "= transpose(" not in lowered.as_text("fused")
    assert kernel_ops(lowered) == [["matmul", "tanh", "mul"]]


@pytest.mark.parametrize("dtype", ["f32", "f64"])
def test_one_dimensional_operands(dtype):
    def single(U, V, x):
        return V @ gc.sigmoid(U @ x)
    check_against_interpreter(single, arrays(dtype, (6, 5), (3, 6), (5,)), dtype)


def seed_loss(U, V, x, y):
    f = x @ U.T
    g = gc.sigmoid(f)
    h = g @ V.T
    return gc.mean((h - y) ** 2)


@pytest.mark.parametrize("dtype", ["f32", "f64"])
def test_seed_step_forms_the_five_kernels(dtype):
    args = arrays(dtype, (8, 5), (3, 8), (4, 5), (4, 3))
    lowered = check_against_interpreter(seed_loss, args, dtype, wrt=("U", "V"))
    kernels = lowered.fusion.kernels
    stored = {v.name for k in kernels for v in k.writes} - {"dU", "dV", ""}
    assert len(kernels) == 5, lowered.fusion_report()
    assert stored == {"g", "dh", "df"}, stored  # never f, h, h − y, dg or a transpose
    backward = next(k for k in kernels if "dg" in {op.result.name for op in k.ops})
    assert [op.name for op in backward.ops] == ["matmul", "mul", "sub", "mul"]  # σ′ in the epilogue
    loss_kernel = next(k for k in kernels if "h" in {op.result.name for op in k.ops})
    assert {"reduce_sum", "sub", "pow"} <= {op.name for op in loss_kernel.ops}


def test_symbolic_batch_fused_step_serves_every_batch_size():
    def loss(U: gc.f32[8, 5], V: gc.f32[3, 8], x: gc.f32["B", 5], y: gc.f32["B", 3]):
        return seed_loss(U, V, x, y)
    step = gc.value_and_grad(loss, wrt=("U", "V"))
    lowered = step.lower()
    for batch in (1, 4, 33):
        args = arrays("f32", (8, 5), (3, 8), (batch, 5), (batch, 3))
        expected = interpret(lowered.graphs["optimized"], *args)
        (value, grads) = step(*args)
        for e, got in zip(expected, [value, *grads]):
            np.testing.assert_allclose(got, e, **TOLERANCE["f32"])
    assert len(step._cache) == 1


def test_fusion_switch_gives_the_same_results_with_more_kernels(monkeypatch):
    args = arrays("f64", (8, 5), (3, 8), (4, 5), (4, 3))
    fused = gc.value_and_grad(seed_loss, wrt=("U", "V"))
    plain = gc.value_and_grad(seed_loss, wrt=("U", "V"), fusion=False)
    monkeypatch.setenv("GRADC_NO_FUSION", "1")
    from_env = gc.value_and_grad(seed_loss, wrt=("U", "V"))
    results = [f(*args) for f in (fused, plain, from_env)]
    for other in results[1:]:
        np.testing.assert_allclose(other[0], results[0][0], rtol=1e-12)
        for a, b in zip(other[1], results[0][1]):
            np.testing.assert_allclose(a, b, rtol=1e-12)
    counts = [len(f.lower(*args).fusion.kernels) for f in (fused, plain, from_env)]
    assert counts[0] == 5 and counts[1] == counts[2] > 10


def test_memory_plan_reuses_workspace_and_matches_native_size():
    def loss(U: gc.f32[16, 12], V: gc.f32[4, 16], x: gc.f32["B", 12], y: gc.f32["B", 4]):
        return seed_loss(U, V, x, y)
    graph = gc.value_and_grad(loss, wrt=("U", "V")).lower().graphs["optimized"]
    plain = NativeFunction(graph, unfused(graph))
    fused = NativeFunction(graph, fuse(graph))
    dims = np.array([64], np.int64)
    for native in (plain, fused):  # Python's plan and the native workspace function agree
        assert native.memory.nbytes({"B": 64}) == native._workspace_size(dims.ctypes.data)
    assert plain.memory.nbytes({"B": 64}) < plain.memory.unshared_nbytes({"B": 64})  # slots are shared
    assert fused.memory.values_nbytes({"B": 64}) < plain.memory.values_nbytes({"B": 64}) / 2


def test_fusion_report_names_every_kernel_and_every_op_left_out():
    args = arrays("f32", (8, 5), (3, 8), (4, 5), (4, 3))
    text = gc.value_and_grad(seed_loss, wrt=("U", "V")).lower(*args).fusion_report()
    assert text.startswith("5 kernels")
    assert len(re.findall(r"^  k\d \[", text, re.M)) == 5
    assert re.search(r"%g=sigmoid: it is a matmul operand", text)


MATMUL_READS_ITS_NEIGHBOURS = """func @random(%in0: f32[4,4]) -> (f32[], f32[4,4], f32[4,4]) {
  %t1 = tanh(%in0) : f32[4,4]
  %t2 = exp(%t1) : f32[4,4]
  %t3 = matmul(%in0, %t2) {transpose_a=true, transpose_b=false} : f32[4,4]
  %t4 = reduce_sum(%t3) {axes=[0,1], keepdims=false} : f32[]
  %t5 = const() {dtype=f32, value=1.0} : f32[]
  %t6 = broadcast(%t5) {dims=[], shape=[4,4]} : f32[4,4]
  %t7 = matmul(%in0, %t6) {transpose_a=false, transpose_b=false} : f32[4,4]
  %t8 = matmul(%t2, %t6) {transpose_a=false, transpose_b=true} : f32[4,4]
  %t9 = mul(%t7, %t2) : f32[4,4]
  %t10 = mul(%t1, %t1) : f32[4,4]
  %t11 = sub(%t5, %t10) : f32[4,4]
  %t12 = mul(%t9, %t11) : f32[4,4]
  %d = add(%t8, %t12) : f32[4,4]
  return %t4, %t3, %d
}
"""


@pytest.mark.parametrize("plan", [fuse, unfused])
def test_matmul_operands_stay_out_of_its_kernel(plan):
    """Found by the random-graph tests: a broadcast constant read by matmuls needs a buffer even
    unfused, and merging sibling kernels must not pull a matmul's operand (exp) into its kernel."""
    graph = gc.ir.parse(MATMUL_READS_ITS_NEIGHBOURS)
    x = arrays("f32", (4, 4))
    for got, want in zip(NativeFunction(graph, plan(graph))(*x), interpret(graph, *x)):
        np.testing.assert_allclose(got, want, **TOLERANCE["f32"])


def function_body(module_text: str, name: str) -> str:
    """The body of function `name` in LLVM IR text."""
    match = re.search(r'define [^\n]*@"' + re.escape(name) + r'"\(.*?\n\}', module_text, re.S)
    assert match, f"no function {name}"
    return match.group(0)


@pytest.mark.parametrize("dtype", ["f32", "f64"])
def test_matmul_epilogue_is_straight_line_vector_code(dtype):
    """The fused ops after a matmul run per row of a finished tile, on all its columns at once:
    a row function with no loop for LLVM to vectorize (the compile time that saves), its loads
    and stores masked to the columns that exist."""
    def layer(W, b, x):
        return gc.sigmoid(x @ W.T + b)
    lowered = check_against_interpreter(layer, arrays(dtype, (10, 5), (10,), (7, 5)), dtype)
    row = function_body(lowered.native.llvm_ir_unoptimized, "k0.matmul.row")
    element = "float" if dtype == "f32" else "double"
    from gradc.backends.codegen import FLOAT_TYPES
    from gradc.backends.gemm import gemm_nr
    nr = gemm_nr(FLOAT_TYPES[dtype])  # a tile's columns: 64 f32 lanes with AVX-512, 16 with AVX2
    lanes = {int(n) for n in re.findall(r"<(\d+) x " + element + ">", row)}
    assert len(lanes) == 1 and min(10, nr) <= lanes.pop() <= nr, "one vector width, covering the 10 columns"
    assert "phi" not in row and "br " not in row, "straight-line code"
    assert "llvm.masked.store" in row and "llvm.masked.load" in row


@pytest.mark.parametrize("dtype", ["f32", "f64"])
@pytest.mark.parametrize("columns", [1, 10, 40, 63, 64, 65, 130, "N"])
def test_matmul_epilogue_at_every_column_count(dtype, columns):
    """Rows of every width: a partial last vector, a lane count that is no power of two (40 f32
    columns: 48 lanes with AVX-512, summed with an odd lane out), a partial last panel, several
    panels (threads split the columns; with one panel, the rows), a symbolic width (all of a
    panel's lanes). The loss's sum over the output is taken per row into its part's partial result."""
    n = 130 if columns == "N" else columns
    element = gc.f32 if dtype == "f32" else gc.f64

    def loss(W: element[columns, 9], b: element[columns], x: element[13, 9]):
        return gc.mean(gc.sigmoid(x @ W.T + b) ** 2)  # lanes past the columns would add 0.25 each
    check_against_interpreter(loss, arrays(dtype, (n, 9), (n,), (13, 9)), dtype, wrt=("W", "b"))
