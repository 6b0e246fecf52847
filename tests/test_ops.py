"""Table-driven tests of every op in the registry `gradc.ir.OPS`.

One table row (a `Case`) per op and attribute/shape variant. From the table:

* the VJP rule, appended by the autodiff pass, is checked against central finite differences of
  the reference interpreter in float64, with a random cotangent (loss = sum(w * op(x)));
* ops without a gradient are checked to have rules that return None and to get a zero gradient;
* the natively compiled graph is checked against the reference interpreter in float32 and
  float64, on static, 0-d, 1-D and symbolic ("B", ...) shapes;
* the optimized gradient graphs (forward + adjoint, after the simplification passes) are compiled
  and checked against the interpreter, so the backward graphs' ops run natively too.

Adding an op to the registry without adding a row here makes `test_table_covers_registry` fail.
"""
from __future__ import annotations

import re
import zlib
from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from gradc.backends.jit import NativeFunction
from gradc.ir import OPS, Builder, Graph, TensorType, interpret
from gradc.ir.autodiff import append_adjoint
from gradc.ir.ops import SOURCE
from gradc.ir.passes import optimize

NP_DTYPES = {"f32": np.float32, "f64": np.float64}

# --- input domains: (rng, shape, numpy dtype) -> array, chosen where each op is smooth -----------


def uniform(lo: float, hi: float):
    def sample(rng, shape, dtype):
        return rng.uniform(lo, hi, shape).astype(dtype)
    return sample


def away_from_zero(lo: float, hi: float):
    """Random sign times U(lo, hi): both signs, never within `lo` of 0."""
    def sample(rng, shape, dtype):
        return (rng.choice([-1.0, 1.0], shape) * rng.uniform(lo, hi, shape)).astype(dtype)
    return sample


def distinct(lo: float, hi: float):
    """Distinct values at least (hi - lo) / (2 n) apart, shuffled: no ties for max to split."""
    def sample(rng, shape, dtype):
        n = int(np.prod(shape, dtype=np.int64))
        grid = np.linspace(lo, hi, max(n, 1))[:n]
        jitter = rng.uniform(-0.25, 0.25, n) * ((hi - lo) / max(n, 2))
        return rng.permutation(grid + jitter).reshape(shape).astype(dtype)
    return sample


def small_integers(rng, shape, dtype):
    """Values in {0, 1, 2}: many exact ties, for eq."""
    return rng.integers(0, 3, shape).astype(dtype)


ANY = uniform(-2.0, 2.0)
POSITIVE = uniform(0.5, 3.0)
NONZERO = away_from_zero(0.5, 2.0)
NEAR_ZERO = uniform(-0.3, 0.3)  # with NONZERO on the other side: |a - b| >= 0.2, no ties


# --- tolerance classes (compiled vs interpreter): (rtol, atol) per dtype ------------------------

TOLERANCE = {
    # moving or selecting data, comparisons, IEEE-exact arithmetic (one correctly rounded op)
    "exact": {"f32": (0.0, 0.0), "f64": (0.0, 0.0)},
    "arith": {"f32": (1e-5, 1e-6), "f64": (1e-12, 1e-14)},
    # sums: the native loop and numpy's pairwise summation add in different orders
    "accumulate": {"f32": (1e-5, 1e-5), "f64": (1e-12, 1e-13)},
    # polynomial approximations within a few ULP (backends/mathlib.py)
    "transcendental": {"f32": (1e-6, 1e-7), "f64": (1e-13, 1e-15)},
}


@dataclass
class Case:
    op: str
    name: str
    shapes: tuple  # operand shapes; dims are ints or symbols
    attrs: dict = field(default_factory=dict)
    domains: tuple = ()  # one sampler per operand (default ANY)
    grad: str = "vjp"  # "vjp": checked against finite differences; "none": no gradient
    tol: str = "arith"
    build: Optional[Callable] = None  # (builder, dtype, *operands) -> result; default: the op itself
    sizes: tuple = ({},)  # symbol bindings to run with (every one on the same compiled function)

    @property
    def id(self) -> str:
        return f"{self.op}-{self.name}"


CASES: list[Case] = []


def case(op: str, name: str, shapes, **kw) -> None:
    CASES.append(Case(op, name, tuple(tuple(s) for s in shapes), **kw))


# elementwise unary ops, on a matrix, a 0-d and a 1-D operand
UNARY = {
    "neg": (ANY, "exact", "vjp"),
    "exp": (ANY, "transcendental", "vjp"),
    "log": (POSITIVE, "transcendental", "vjp"),
    "sqrt": (POSITIVE, "exact", "vjp"),  # llvm.sqrt and numpy are both correctly rounded
    "tanh": (ANY, "transcendental", "vjp"),
    "sigmoid": (uniform(-4.0, 4.0), "transcendental", "vjp"),
    "relu": (NONZERO, "exact", "vjp"),
    "abs": (NONZERO, "exact", "vjp"),
    "log1p": (uniform(-0.5, 3.0), "transcendental", "vjp"),
    "stop_gradient": (ANY, "exact", "none"),
}
for _op, (_dom, _tol, _grad) in UNARY.items():
    for _name, _shape in (("3x4", (3, 4)), ("0d", ()), ("1d", (5,))):
        case(_op, _name, [_shape], domains=(_dom,), tol=_tol, grad=_grad)

# elementwise binary ops with broadcasting operands
BROADCAST_PAIRS = {
    "same": ((3, 4), (3, 4)),
    "row": ((3, 4), (4,)),
    "row-left": ((4,), (3, 4)),
    "col": ((3, 4), (3, 1)),
    "outer": ((3, 1), (1, 4)),
    "scalar": ((3, 4), ()),
    "scalar-left": ((), (3, 4)),
    "0d": ((), ()),
    "1d": ((5,), (5,)),
}
BINARY = {
    "add": ((ANY, ANY), "exact", "vjp"),
    "sub": ((ANY, ANY), "exact", "vjp"),
    "mul": ((ANY, ANY), "exact", "vjp"),
    "div": ((ANY, NONZERO), "exact", "vjp"),
    "maximum": ((NONZERO, NEAR_ZERO), "exact", "vjp"),
    "minimum": ((NONZERO, NEAR_ZERO), "exact", "vjp"),
    "gt": ((NONZERO, NEAR_ZERO), "exact", "none"),
    "eq": ((small_integers, small_integers), "exact", "none"),
}
for _op, (_doms, _tol, _grad) in BINARY.items():
    for _name, _shapes in BROADCAST_PAIRS.items():
        case(_op, _name, _shapes, domains=_doms, tol=_tol, grad=_grad)

# where: a nonzero condition (away from 0, so finite differences never flip it) picks a; built on a
# mask (c > 0, either sign), it picks both sides, and only the chosen side gets a gradient
WHERE_TRIPLES = {"same": ((3, 4), (3, 4), (3, 4)), "broadcast": ((3, 1), (4,), ()), "0d": ((), (), ())}
for _name, _shapes in WHERE_TRIPLES.items():
    case("where", _name, _shapes, domains=(NONZERO, ANY, ANY), tol="exact")
    case("where", f"{_name}-mask", _shapes, domains=(NONZERO, ANY, ANY), tol="exact",
         build=lambda b, dt, c, x, y: b.op("where", b.op("gt", c, b.const(0.0, dt)), x, y))

# pow: x ** 1..4 products, -1 a division, 0.5/-0.5/1.5 sqrt, others e^(y log |x|) with y log x unrounded
for _e in (2.0, 3.0, -1.0, 0.5, 1.5, 0.0, -2.5, -0.5, 2.2):
    case("pow", f"e{_e:g}", [(3, 4)], attrs={"exponent": _e}, domains=(POSITIVE,), tol="transcendental")
case("pow", "e3-0d", [()], attrs={"exponent": 3.0}, domains=(POSITIVE,), tol="transcendental")
for _b in (2.0, 0.3):
    case("rpow", f"b{_b:g}", [(3, 4)], attrs={"base": _b}, tol="transcendental")
# integer exponents past 4 go through e^(y log |x|) with the sign of an odd power
for _e in (65.0, 66.0, -65.0):
    case("pow", f"e{_e:g}-signed", [(3, 4)], attrs={"exponent": _e}, domains=(uniform(-1.1, 1.1),),
         tol="transcendental")

# reductions over different axes, keepdims true and false
for _op, _dom in (("reduce_sum", ANY), ("reduce_max", distinct(-2.0, 2.0))):
    _tol = "accumulate" if _op == "reduce_sum" else "exact"
    for _axes in ([0], [1], [2], [0, 2], [1, 2], [0, 1, 2], []):
        for _keep in (False, True):
            case(_op, f"axes{''.join(map(str, _axes)) or '-none'}-{'keep' if _keep else 'drop'}",
                 [(2, 3, 4)], attrs={"axes": _axes, "keepdims": _keep}, domains=(_dom,), tol=_tol)
    case(_op, "1d", [(7,)], attrs={"axes": [0], "keepdims": False}, domains=(_dom,), tol=_tol)
    case(_op, "0d", [()], attrs={"axes": [], "keepdims": False}, domains=(_dom,), tol=_tol)

# layout ops
for _name, (_shape, _out, _dims) in {
    "row": ((4,), (3, 4), [1]),
    "col": ((3, 1), (3, 4), [0, 1]),
    "leading": ((3,), (3, 2, 4), [0]),
    "middle": ((1, 4), (2, 3, 4), [1, 2]),
    "scalar": ((), (2, 3), []),
    "ones": ((2, 1, 4), (2, 5, 4), [0, 1, 2]),
    "identity": ((3, 4), (3, 4), [0, 1]),
}.items():
    case("broadcast", _name, [_shape], attrs={"shape": list(_out), "dims": _dims}, tol="exact")
for _name, (_shape, _out) in {
    "2d-2d": ((2, 6), (3, 4)),
    "1d-3d": ((12,), (2, 2, 3)),
    "0d-2d": ((), (1, 1)),
    "2d-0d": ((1, 1), ()),
    "3d-1d": ((2, 3, 4), (24,)),
}.items():
    case("reshape", _name, [_shape], attrs={"shape": list(_out)}, tol="exact")
case("transpose", "2d", [(3, 4)], attrs={"perm": [1, 0]}, tol="exact")
for _perm in ([0, 1, 2], [0, 2, 1], [1, 0, 2], [1, 2, 0], [2, 0, 1], [2, 1, 0]):
    case("transpose", "3d-" + "".join(map(str, _perm)), [(2, 3, 4)], attrs={"perm": _perm}, tol="exact")

# matmul: (3, 4) @ (4, 5) in all four transpose combinations, and a 1x1 corner
for _ta in (False, True):
    for _tb in (False, True):
        case("matmul", f"{'T' if _ta else 'N'}{'T' if _tb else 'N'}",
             [(4, 3) if _ta else (3, 4), (5, 4) if _tb else (4, 5)],
             attrs={"transpose_a": _ta, "transpose_b": _tb}, tol="accumulate")
case("matmul", "1x1", [(1, 6), (6, 1)], attrs={"transpose_a": False, "transpose_b": False}, tol="accumulate")

# sources read no operand: the input x only gives the gradient check something to differentiate
for _name, _dims in (("static", [3, 4]), ("one-dim", [7]), ("empty", [])):
    case("size", _name, [(3,)], grad="none", tol="exact",
         build=lambda b, dt, x, dims=_dims: b.op("size", dims=dims, dtype=dt))
case("size", "times-x", [(3, 4)], tol="exact",
     build=lambda b, dt, x: x * b.op("size", dims=[3, 4], dtype=dt))
case("const", "output", [(3,)], grad="none", tol="exact",
     build=lambda b, dt, x: b.const(0.1, dt))
case("const", "elementwise-immediate", [(3, 4)], tol="arith",
     build=lambda b, dt, x: x * b.const(0.1, dt) + b.const(-2.5, dt))
case("const", "into-reduction", [(3,)], grad="none", tol="exact",
     build=lambda b, dt, x: b.op("reduce_sum", b.const(1.5, dt), axes=[], keepdims=False))
case("const", "broadcast", [(3,)], grad="none", tol="exact",
     build=lambda b, dt, x: b.op("broadcast", b.const(-0.7, dt), shape=[2, 3], dims=[]))

# large operands, so the vectorized main loops (not only their scalar remainders) run
for _op, (_dom, _tol, _grad) in UNARY.items():
    case(_op, "large", [(5, 67)], domains=(_dom,), tol=_tol, grad=_grad)
for _op, (_doms, _tol, _grad) in BINARY.items():
    case(_op, "large-row", [(37, 65), (65,)], domains=_doms, tol=_tol, grad=_grad)
case("pow", "large-e1.5", [(5, 67)], attrs={"exponent": 1.5}, domains=(POSITIVE,), tol="transcendental")
case("pow", "large-e-2", [(5, 67)], attrs={"exponent": -2.0}, domains=(POSITIVE,), tol="transcendental")
for _axes in ([1], [0, 2], [2]):
    case("reduce_sum", f"large-axes{''.join(map(str, _axes))}", [(6, 40, 17)],
         attrs={"axes": _axes, "keepdims": False}, tol="accumulate")
    case("reduce_max", f"large-axes{''.join(map(str, _axes))}", [(6, 40, 17)],
         attrs={"axes": _axes, "keepdims": True}, domains=(distinct(-2.0, 2.0),), tol="exact")
for _ta, _tb in ((False, False), (True, True), (False, True)):
    case("matmul", f"large-{'T' if _ta else 'N'}{'T' if _tb else 'N'}",
         [(33, 17) if _ta else (17, 33), (19, 33) if _tb else (33, 19)],
         attrs={"transpose_a": _ta, "transpose_b": _tb}, tol="accumulate")
for _ta, _tb in ((False, False), (True, True)):  # several row and column blocks, ragged edges
    case("matmul", f"tiles-{'T' if _ta else 'N'}{'T' if _tb else 'N'}",
         [(37, 13) if _ta else (13, 37), (70, 37) if _tb else (37, 70)],
         attrs={"transpose_a": _ta, "transpose_b": _tb}, tol="accumulate")
case("transpose", "large-3d", [(5, 7, 33)], attrs={"perm": [2, 0, 1]}, tol="exact")
case("broadcast", "large", [(65,)], attrs={"shape": [9, 65], "dims": [1]}, tol="exact")
case("reshape", "large", [(9, 65)], attrs={"shape": [65, 9]}, tol="exact")

# symbolic dims: one compiled function, called with several values of B (0: empty tensors)
B = {"sizes": ({"B": 3}, {"B": 1}, {"B": 6})}
B0 = {"sizes": ({"B": 3}, {"B": 0}, {"B": 1}, {"B": 40})}
case("exp", "sym", [("B", 4)], tol="transcendental", **B0)
case("add", "sym-row", [("B", 4), (4,)], tol="exact", **B0)
case("mul", "sym-col", [("B", 4), ("B", 1)], tol="exact", **B0)
case("maximum", "sym-scalar", [("B", 4), ()], domains=(NONZERO, NEAR_ZERO), tol="exact", **B)
case("reduce_sum", "sym-axis0", [("B", 4)], attrs={"axes": [0], "keepdims": False}, tol="accumulate", **B0)
case("reduce_sum", "sym-all-keep", [(2, "B")], attrs={"axes": [0, 1], "keepdims": True}, tol="accumulate", **B)
case("reduce_max", "sym-axis1", [("B", 4)], attrs={"axes": [1], "keepdims": True},
     domains=(distinct(-2.0, 2.0),), tol="exact", **B)
case("broadcast", "sym-leading", [("B",)], attrs={"shape": ["B", 3], "dims": [0]}, tol="exact", **B0)
case("broadcast", "sym-ones", [(1, 4), ("B", 4)], tol="exact",  # y supplies the value of B
     build=lambda b, dt, x, y: b.op("broadcast", x, shape=["B", 4], dims=[0, 1]) * y, **B)
case("reshape", "sym", [("B", 4)], attrs={"shape": ["B", 2, 2]}, tol="exact", **B0)
case("transpose", "sym-3d", [("B", 3, 4)], attrs={"perm": [2, 0, 1]}, tol="exact", **B0)
case("matmul", "sym-m", [("B", 4), (4, 5)], attrs={"transpose_a": False, "transpose_b": False},
     tol="accumulate", **B0)
case("matmul", "sym-k-TN", [("B", 3), ("B", 5)], attrs={"transpose_a": True, "transpose_b": False},
     tol="accumulate", **B0)
case("matmul", "sym-n-NT", [(5, 4), ("B", 4)], attrs={"transpose_a": False, "transpose_b": True},
     tol="accumulate", **B0)
case("size", "sym", [("B", 4)], grad="none", tol="exact",  # B is only known at run time
     build=lambda b, dt, x: b.op("size", dims=["B", 4], dtype=dt), **B0)
case("size", "sym-mean", [("B", 4)], tol="arith",  # a gradient through a run-time size
     build=lambda b, dt, x: x.sum(0) / b.op("size", dims=["B"], dtype=dt), **B)
case("size", "sym-mean-method", [(2, "B", 3)], tol="arith",  # Sym.mean divides by a size op
     build=lambda b, dt, x: x.mean((0, 1)), **B)


def case_params(cases):
    return [pytest.param(c, id=c.id) for c in cases]


def resolve(shape, sizes: dict) -> tuple:
    return tuple(sizes[d] if isinstance(d, str) else d for d in shape)


def rng_for(c: Case, *salt) -> np.random.Generator:
    return np.random.default_rng(zlib.crc32("/".join(map(str, (c.id,) + salt)).encode()))


def sample_inputs(c: Case, dtype: str, sizes: dict, rng) -> list[np.ndarray]:
    domains = c.domains or (ANY,) * len(c.shapes)
    return [np.asarray(dom(rng, resolve(s, sizes), NP_DTYPES[dtype]), NP_DTYPES[dtype])
            for dom, s in zip(domains, c.shapes)]


def forward_graph(c: Case, dtype: str) -> Graph:
    """The op (or the case's small expression) applied to one input per operand."""
    graph = Graph(c.id.replace("-", "_"))
    b = Builder(graph)
    xs = [b.wrap(graph.add_input(f"x{i}", TensorType(dtype, s))) for i, s in enumerate(c.shapes)]
    out = c.build(b, dtype, *xs) if c.build else b.op(c.op, *xs, **c.attrs)
    graph.outputs = [out.value]
    return graph


def loss_graph(c: Case, dtype: str) -> Graph:
    """loss = sum(w * op(x...)): a random cotangent w turns the VJP into a gradient."""
    graph = forward_graph(c, dtype)
    b = Builder(graph)
    y = b.wrap(graph.outputs[0])
    w = b.wrap(graph.add_input("w", y.type))
    graph.outputs = [(y * w).sum().value]
    return graph


def gradient_graph(c: Case, dtype: str) -> Graph:
    graph = loss_graph(c, dtype)
    return append_adjoint(graph, wrt=list(range(len(c.shapes))))


def loss_inputs(c: Case, dtype: str, sizes: dict, rng) -> list[np.ndarray]:
    xs = sample_inputs(c, dtype, sizes, rng)
    out_shape = resolve(forward_graph(c, dtype).outputs[0].type.shape, sizes)
    return xs + [np.asarray(rng.standard_normal(out_shape), NP_DTYPES[dtype])]


def central_differences(graph: Graph, args: list[np.ndarray], i: int, indices, eps: float = 1e-6) -> np.ndarray:
    """d(graph output 0)/d(args[i][index]) for each index, by central differences of the interpreter."""
    grad = []
    for index in indices:
        shifted = []
        for sign in (1.0, -1.0):
            x = args[i].copy()
            x[index] += sign * eps
            shifted.append(float(interpret(graph, *args[:i], x, *args[i + 1:])[0]))
        grad.append((shifted[0] - shifted[1]) / (2 * eps))
    return np.array(grad)


def sample_indices(shape, rng, limit: int = 150) -> list[tuple]:
    """Every index of a small array; `limit` random ones of a large array."""
    every = list(np.ndindex(shape))
    if len(every) <= limit:
        return every
    return [every[j] for j in sorted(rng.choice(len(every), limit, replace=False))]


def assert_matches(actual, expected, tol: str, dtype: str, what: str = "") -> None:
    rtol, atol = TOLERANCE[tol][dtype]
    assert actual.dtype == expected.dtype, f"{what}: dtype {actual.dtype} != {expected.dtype}"
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    if rtol == atol == 0:
        np.testing.assert_array_equal(actual, expected, err_msg=what, strict=True)
    else:
        np.testing.assert_allclose(actual, expected, rtol=rtol, atol=atol, err_msg=what)


# --- the table itself -----------------------------------------------------------------------------


def test_table_covers_registry():
    covered = {c.op for c in CASES}
    assert covered == set(OPS), (f"ops without a test row: {sorted(set(OPS) - covered)}; "
                                 f"rows for unknown ops: {sorted(covered - set(OPS))}")
    ids = [c.id for c in CASES]
    assert len(ids) == len(set(ids)), "duplicate case ids"
    for c in CASES:
        if c.grad == "vjp":
            assert OPS[c.op].vjp is not None or c.build is not None, c.id
    for name, opdef in OPS.items():  # every VJP rule is applied to the bare op at least once
        assert opdef.vjp is None or any(c.op == name and c.build is None for c in CASES), name


def test_table_covers_attribute_variants():
    def attrs(op):
        return [c.attrs for c in CASES if c.op == op and c.attrs]
    assert {(a["transpose_a"], a["transpose_b"]) for a in attrs("matmul")} == \
        {(False, False), (False, True), (True, False), (True, True)}
    assert {2.0, 3.0, -1.0, 0.5, 1.5} <= {a["exponent"] for a in attrs("pow")}
    for op in ("reduce_sum", "reduce_max"):
        variants = {(tuple(a["axes"]), a["keepdims"]) for a in attrs(op)}
        assert {((1,), True), ((1,), False), ((0, 2), True), ((0, 1, 2), False)} <= variants
    assert sum(len(c.shapes[0]) == 3 for c in CASES if c.op == "transpose") >= 6
    for op in BINARY:
        pairs = {c.shapes for c in CASES if c.op == op}
        assert {((3, 4), (4,)), ((3, 4), (3, 1)), ((3, 4), ())} <= pairs, op
    assert any(c.sizes != ({},) for c in CASES), "no symbolic-dim rows"


def test_every_case_builds_a_valid_graph():
    from gradc.ir import verify
    for c in CASES:
        for dtype in NP_DTYPES:
            verify(forward_graph(c, dtype))
            verify(gradient_graph(c, dtype))


# --- gradients ------------------------------------------------------------------------------------


@pytest.mark.parametrize("c", case_params([c for c in CASES if c.grad == "vjp"]))
def test_vjp_matches_finite_differences(c: Case):
    loss, grad = loss_graph(c, "f64"), gradient_graph(c, "f64")
    n = len(c.shapes)
    for sizes in c.sizes:
        args = loss_inputs(c, "f64", sizes, rng_for(c, "vjp", sizes))
        outputs = interpret(grad, *args)
        np.testing.assert_allclose(outputs[0], interpret(loss, *args)[0], rtol=1e-15)
        for i in range(n):
            indices = sample_indices(args[i].shape, rng_for(c, "indices", i, sizes))
            expected = central_differences(loss, args, i, indices)
            actual = np.array([outputs[1 + i][index] for index in indices])
            scale = max(1.0, float(np.abs(expected).max(initial=0.0)))
            np.testing.assert_allclose(actual, expected, rtol=2e-7, atol=2e-8 * scale,
                                       err_msg=f"d loss / d x{i} at {indices} with {sizes}")
            # the scalar projection <grad, v> against a directional difference, as JAX's check_vjp
            v = rng_for(c, "direction", i, sizes).standard_normal(args[i].shape)
            eps = 1e-6
            plus = interpret(loss, *args[:i], args[i] + eps * v, *args[i + 1:])[0]
            minus = interpret(loss, *args[:i], args[i] - eps * v, *args[i + 1:])[0]
            projection = np.vdot(outputs[1 + i], v)
            np.testing.assert_allclose(projection, (plus - minus) / (2 * eps), rtol=2e-7,
                                       atol=2e-8 * max(1.0, float(np.sum(np.abs(outputs[1 + i] * v)))),
                                       err_msg=f"<d loss / d x{i}, v> with {sizes}")


@pytest.mark.parametrize("c", case_params([c for c in CASES if c.grad == "none"]))
def test_no_gradient(c: Case):
    opdef = OPS[c.op]
    graph = forward_graph(c, "f64")
    if c.build is None:  # the rule itself says "no cotangent" for every operand
        b = Builder(graph)
        result = b.wrap(graph.outputs[0])
        operands = [b.wrap(v) for v in graph.inputs]
        assert opdef.vjp(result, result, *operands, **c.attrs) == (None,) * len(operands)
    if opdef.vjp is None:
        assert opdef.kind == SOURCE and opdef.arity == 0
    grad = gradient_graph(c, "f64")
    for sizes in c.sizes:
        args = loss_inputs(c, "f64", sizes, rng_for(c, "none", sizes))
        outputs = interpret(grad, *args)
        for i in range(len(c.shapes)):
            np.testing.assert_array_equal(outputs[1 + i], np.zeros_like(args[i]), strict=True)
            if c.op != "stop_gradient":  # gt, eq, size, const really are locally constant
                indices = sample_indices(args[i].shape, rng_for(c, "indices", i, sizes))
                np.testing.assert_array_equal(central_differences(loss_graph(c, "f64"), args, i, indices),
                                              np.zeros(len(indices)))


def test_stop_gradient_blocks_only_its_own_path():
    graph = Graph("sg")
    b = Builder(graph)
    x = b.wrap(graph.add_input("x", TensorType("f64", (4,))))
    graph.outputs = [(x * b.op("stop_gradient", x * x)).sum().value]
    x0 = np.array([0.5, -1.0, 2.0, 3.0])
    (_, dx) = interpret(append_adjoint(graph, [0]), x0)
    np.testing.assert_allclose(dx, x0 * x0, rtol=1e-15)  # d/dx (x * c) with c = x*x held fixed


# --- compiled vs interpreter ----------------------------------------------------------------------


@pytest.mark.parametrize("dtype", ["f32", "f64"])
@pytest.mark.parametrize("c", case_params(CASES))
def test_compiled_matches_interpreter(c: Case, dtype: str):
    graph = forward_graph(c, dtype)
    native = NativeFunction(graph)
    for sizes in c.sizes:
        args = sample_inputs(c, dtype, sizes, rng_for(c, "forward", dtype, sizes))
        (expected,) = interpret(graph, *args)
        (actual,) = native(*args)
        assert_matches(actual, expected, c.tol, dtype, f"{c.id} {dtype} {sizes}")


def test_interpreter_matches_numpy_semantics():
    """Spot checks of the oracle itself against plain numpy expressions (not gradc code)."""
    rng = np.random.default_rng(0)
    x = rng.uniform(0.5, 2.0, (2, 3, 4))

    def run(op, *arrays, **attrs):
        graph = Graph("t")
        b = Builder(graph)
        xs = [b.wrap(graph.add_input(f"x{i}", TensorType("f64", a.shape))) for i, a in enumerate(arrays)]
        graph.outputs = [b.op(op, *xs, **attrs).value]
        return interpret(graph, *arrays)[0]

    np.testing.assert_array_equal(run("transpose", x, perm=[2, 0, 1]), np.moveaxis(x, 2, 0))
    np.testing.assert_array_equal(run("reduce_max", x, axes=[0, 2], keepdims=True),
                                  x.max(axis=(0, 2), keepdims=True))
    a, bm = x[0], x[1]
    np.testing.assert_allclose(run("matmul", a, bm, transpose_a=True, transpose_b=False), a.T @ bm)
    np.testing.assert_allclose(run("pow", x, exponent=1.5), x * np.sqrt(x), rtol=1e-15)
    np.testing.assert_array_equal(run("broadcast", x[0, :, 0], shape=[3, 5], dims=[0]),
                                  np.repeat(x[0, :, :1], 5, axis=1))
    np.testing.assert_array_equal(run("size", dims=[2, 4], dtype="f64"), np.float64(8))


# the gradient graphs, optimized as gc.grad does, compiled and compared with the interpreter: every
# op's backward graph in float64 (all symbolic-dim rows, and a selection of the others to keep the
# suite fast), a smaller selection in float32
GRAD_F64 = {
    "exp-3x4", "log-3x4", "sqrt-3x4", "tanh-3x4", "sigmoid-3x4", "relu-3x4", "neg-0d", "exp-1d",
    "tanh-large", "stop_gradient-3x4", "abs-3x4", "log1p-3x4", "rpow-b0.3", "where-same", "where-broadcast-mask",
    "add-row", "sub-scalar-left", "mul-outer", "div-col", "div-row-left", "maximum-row",
    "maximum-scalar", "minimum-outer", "mul-0d", "add-large-row", "gt-row", "eq-col",
    "pow-e2", "pow-e3", "pow-e-1", "pow-e0.5", "pow-e1.5", "pow-e0", "pow-e-2.5",
    "reduce_sum-axes1-drop", "reduce_sum-axes02-keep", "reduce_sum-axes012-drop", "reduce_sum-0d",
    "reduce_max-axes1-keep", "reduce_max-axes02-drop", "reduce_max-axes012-keep", "reduce_max-1d",
    "broadcast-middle", "broadcast-scalar", "broadcast-col", "reshape-1d-3d", "reshape-0d-2d",
    "transpose-2d", "transpose-3d-120", "transpose-3d-021",
    "matmul-NN", "matmul-NT", "matmul-TN", "matmul-TT", "matmul-large-TT",
    "size-times-x", "size-static", "const-elementwise-immediate",
} | {c.id for c in CASES if c.sizes != ({},)}
GRAD_F32 = {"exp-3x4", "log-3x4", "tanh-3x4", "sigmoid-3x4", "relu-3x4", "div-row", "maximum-col", "abs-1d",
            "where-0d-mask",
            "pow-e1.5", "pow-e-1", "reduce_max-axes02-keep", "reduce_sum-axes1-drop", "broadcast-middle",
            "transpose-3d-120", "matmul-TN", "matmul-NT", "size-sym-mean", "matmul-sym-k-TN", "add-sym-row"}
GRADIENT_TOLERANCE = {"f32": (2e-6, 1e-6), "f64": (1e-13, 1e-14)}  # sums, then transcendental ops


@pytest.mark.parametrize("c,dtype", [pytest.param(c, dtype, id=f"{c.id}-{dtype}")
                                     for dtype, ids in (("f64", GRAD_F64), ("f32", GRAD_F32))
                                     for c in CASES if c.id in ids])
def test_compiled_gradient_graph(c: Case, dtype: str):
    unoptimized = gradient_graph(c, dtype)
    graph = optimize(unoptimized)
    native = NativeFunction(graph)
    rtol, atol = GRADIENT_TOLERANCE[dtype]
    for sizes in c.sizes:
        args = loss_inputs(c, dtype, sizes, rng_for(c, "grad", dtype, sizes))
        expected = interpret(graph, *args)
        actual = native(*args)
        assert len(actual) == len(expected) == 1 + len(c.shapes)
        for j, (a, e) in enumerate(zip(actual, expected)):
            assert a.dtype == e.dtype and a.shape == e.shape, f"output {j}: {a.dtype}{a.shape} vs {e.dtype}{e.shape}"
            np.testing.assert_allclose(a, e, rtol=rtol, atol=atol, err_msg=f"{c.id} {dtype} {sizes} output {j}")
        # the simplification passes must not change the gradient either
        for j, (a, e) in enumerate(zip(expected, interpret(unoptimized, *args))):
            np.testing.assert_allclose(a, e, rtol=rtol, atol=atol,
                                       err_msg=f"{c.id} {dtype} {sizes} optimized vs unoptimized output {j}")


def test_compiled_gradient_selection_names_real_cases():
    ids = {c.id for c in CASES}
    assert GRAD_F64 <= ids and GRAD_F32 <= ids, (GRAD_F64 | GRAD_F32) - ids
    assert {c.op for c in CASES if c.id in GRAD_F64} == set(OPS), "every op's backward graph runs natively"


@pytest.mark.parametrize("dtype", ["f32", "f64"])
@pytest.mark.parametrize("exponent", [2.0, 3.0, 4.0, -1.0, -2.0, -3.0, 5.0, 63.0, 64.0, 0.5, 1.5, -0.5, -2.5, 4.5])
def test_pow_integer_and_half_integer_exponents_within_a_few_ulp(exponent, dtype):
    """Over 13 orders of magnitude (|x| up to 1.3 for the 63rd and 64th powers, which overflow
    beyond), negative bases too: products, sqrt and e^(y log |x|) with y log x unrounded stay within
    a few ULP, where 63 products lost 43 and e^(y log x) with log x rounded |y log x|."""
    c = Case("pow", "wide", ((2001,),), attrs={"exponent": exponent})
    graph = forward_graph(c, dtype)
    top = 0.25 if abs(exponent) > 5 else 15.0
    x = np.exp(np.linspace(-top, top, 2001)).astype(NP_DTYPES[dtype])
    if exponent == int(exponent):
        x[::2] *= -1
    (actual,) = NativeFunction(graph)(x)
    wide = np.longdouble if dtype == "f64" else np.float64
    exact = np.power(x.astype(wide), wide(exponent))
    ulps = np.abs(actual.astype(wide) - exact) / (np.abs(exact) * np.finfo(NP_DTYPES[dtype]).eps)
    assert float(ulps.max()) <= 2.5, f"max error {float(ulps.max()):.1f} ULP at x = {x[np.argmax(ulps)]}"
    np.testing.assert_allclose(actual, interpret(graph, x)[0], rtol=5 * np.finfo(NP_DTYPES[dtype]).eps)


@pytest.mark.parametrize("dtype, x, exponent", [
    ("f32", [1e-3, 1e-30, 1e30, 0.9, 1.1, 2.0, -2.0], 3e38), ("f32", [1e-3, 1e-30, 1e30, 0.9, 1.1], -3e38),
    ("f32", [1.9e19, -1.9e19, 3e-20], -2.0), ("f64", [5e-324, 1e-300, 10.0, 0.9, 1.1, 1.0], 1e306),
    ("f64", [10.0, -10.0, 0.5, -0.5], -1.7e308), ("f64", [1.5e154, 1e103], -2.0), ("f64", [1e103, -1e103], -3.0)])
def test_pow_results_past_the_float_range_are_numpys_zero_or_inf(dtype, x, exponent):
    """y log x beyond the floats (inf * 0 and inf - inf in its sums) still gives inf or 0 by the sides
    of 1 x and y are on; 1 / x ** n does not underflow before the denormal result it should give."""
    x = np.array(x, NP_DTYPES[dtype])
    (actual,) = NativeFunction(forward_graph(Case("pow", "range", ((len(x),),), attrs={"exponent": exponent}),
                                             dtype))(x)
    with np.errstate(all="ignore"):
        expected = np.power(x, NP_DTYPES[dtype](exponent))
    np.testing.assert_allclose(actual, expected, rtol=2 * np.finfo(NP_DTYPES[dtype]).eps, atol=0)
    assert np.all(expected[actual == 0] == 0) and np.all(np.signbit(actual) == np.signbit(expected))


@pytest.mark.parametrize("dtype", ["f32", "f64"])
def test_a_constant_to_a_tensor_power_within_a_few_ulp_and_exact_for_powers_of_two(dtype):
    """b ** x is mathlib's pow with the exponent a tensor: 10 ** x over the whole range of results
    (it was e^(x log 10), 937 ulp off in float64), 2 ** n exact, and numpy's values at ±inf, NaN, 0."""
    np_dtype = NP_DTYPES[dtype]
    x = np.concatenate([np.linspace(-300, 300, 20_001), [0.0, -0.0, np.inf, -np.inf, np.nan]]).astype(np_dtype)
    for base, bound in ((10.0, 1.0 if dtype == "f32" else 4.0), (0.5, 1.0)):
        (actual,) = NativeFunction(forward_graph(Case("rpow", "sweep", ((len(x),),), attrs={"base": base}),
                                                 dtype))(x)
        wide = np.longdouble if dtype == "f64" else np.float64
        with np.errstate(over="ignore", under="ignore"):
            exact = np.power(wide(np_dtype(base)), x.astype(wide))
            rounded = exact.astype(np_dtype)
        finite = np.isfinite(rounded) & (rounded != 0)
        np.testing.assert_array_equal(actual[~finite], rounded[~finite])
        ulps = np.abs(actual[finite].astype(wide) - exact[finite]) / np.spacing(np.abs(rounded[finite])).astype(wide)
        assert float(ulps.max()) <= bound, f"{base} ** x: {float(ulps.max()):.2f} ULP"
    n = np.arange(-60, 61).astype(np_dtype)
    (powers,) = NativeFunction(forward_graph(Case("rpow", "n", ((len(n),),), attrs={"base": 2.0}), dtype))(n)
    np.testing.assert_array_equal(powers, np.ldexp(np_dtype(1), n.astype(int)))


@pytest.mark.parametrize("dtype", ["f32", "f64"])
def test_log1p_within_a_few_ulp_over_its_whole_domain(dtype):
    """Every float above -1 (random bit patterns) and dense tiny and moderate x, against the exact
    log1p: Goldberg's log(w) * x / (w - 1) cancels the rounding of w = 1 + x."""
    np_dtype = NP_DTYPES[dtype]
    bits = np.uint32 if dtype == "f32" else np.uint64
    raw = np.random.default_rng(5).integers(0, np.iinfo(bits).max, 400_000, dtype=bits).view(np_dtype)
    x = np.concatenate([raw[np.isfinite(raw) & (raw > -1)], np.linspace(-0.99, 3.0, 20_001, dtype=np_dtype),
                        (10.0 ** np.linspace(-30, 0, 5_001)).astype(np_dtype)])
    (actual,) = NativeFunction(forward_graph(Case("log1p", "sweep", ((len(x),),)), dtype))(x)
    wide = np.longdouble if dtype == "f64" else np.float64
    exact = np.log1p(x.astype(wide))
    rounded = exact.astype(np_dtype)
    ulps = np.abs(actual.astype(wide) - exact) / np.spacing(np.abs(rounded)).astype(wide)
    worst = int(np.argmax(ulps))
    assert float(ulps[worst]) <= 2.5, f"{float(ulps[worst]):.2f} ULP at x = {x[worst]!r}"


@pytest.mark.parametrize("dtype", ["f32", "f64"])
@pytest.mark.parametrize("exponent, bound", [(1 / 3, 1.0), (-0.7, 1.0), (0.1, 1.0), (2.2, 1.0), (-3.7, 1.0),
                                             (0.75, 1.0), (10.3, 1.5), (-25.1, 2.5)])
def test_pow_other_exponents_within_an_ulp_over_the_whole_range(exponent, bound, dtype):
    """x ** y as e^(y log x) with y log x kept unrounded: every positive float (random bit patterns,
    denormals, results that overflow or underflow) within an ulp of the exact power for moderate y,
    where rounding log x first cost up to |y log x| ulp (over a thousand in float64)."""
    np_dtype = NP_DTYPES[dtype]
    bits = np.uint32 if dtype == "f32" else np.uint64
    rng = np.random.default_rng(3)
    x = np.concatenate([rng.integers(1, np.iinfo(bits).max // 2, 300_000, dtype=bits).view(np_dtype),
                        np.linspace(0.5, 2.0, 20_001, dtype=np_dtype)])
    x = x[np.isfinite(x)]
    c = Case("pow", "sweep", ((len(x),),), attrs={"exponent": exponent})
    native = NativeFunction(forward_graph(c, dtype))
    (actual,) = native(x)
    assert not re.findall(r"call [^@]*@(pow|exp|log)f?\(", native.llvm_ir), "a libm call, which LLVM scalarizes"
    wide = np.longdouble if dtype == "f64" else np.float64
    with np.errstate(over="ignore", under="ignore"):
        exact = np.power(x.astype(wide), wide(np_dtype(exponent)))
        rounded = exact.astype(np_dtype)
    finite = np.isfinite(rounded) & (rounded != 0)
    np.testing.assert_array_equal(actual[~finite], rounded[~finite])
    ulps = np.abs(actual[finite].astype(wide) - exact[finite]) / np.spacing(np.abs(rounded[finite])).astype(wide)
    worst = int(np.argmax(ulps))
    assert float(ulps[worst]) <= bound, f"{float(ulps[worst]):.2f} ULP at x = {x[finite][worst]!r}"


# --- hypothesis: random broadcasting shapes, random reductions ------------------------------------

_native_cache: dict[str, NativeFunction] = {}


def compiled(graph: Graph) -> NativeFunction:
    """Compile once per distinct graph text, so repeated hypothesis examples reuse native code."""
    key = str(graph)
    if key not in _native_cache:
        _native_cache[key] = NativeFunction(graph)
    return _native_cache[key]


@st.composite
def broadcast_operands(draw):
    """Two shapes that broadcast (size-1 and missing leading axes on either side) and their sizes."""
    rank = draw(st.integers(0, 3))
    out = draw(st.lists(st.integers(1, 5), min_size=rank, max_size=rank))
    shapes = []
    for _ in range(2):
        lead = draw(st.integers(0, rank))
        shapes.append(tuple(1 if draw(st.booleans()) else d for d in out[lead:]))
    return shapes


HYPOTHESIS = settings(max_examples=25, deadline=None, derandomize=True, database=None,
                      suppress_health_check=[HealthCheck.too_slow])


@HYPOTHESIS
@given(shapes=broadcast_operands(), op=st.sampled_from(sorted(BINARY)), dtype=st.sampled_from(["f32", "f64"]),
       seed=st.integers(0, 2**32 - 1))
def test_broadcasting_compiled_matches_interpreter(shapes, op, dtype, seed):
    c = next(c for c in CASES if c.op == op)
    c = Case(op, "hyp", tuple(shapes), domains=c.domains, tol=c.tol)
    graph = forward_graph(c, dtype)
    args = sample_inputs(c, dtype, {}, np.random.default_rng(seed))
    (expected,) = interpret(graph, *args)
    np.testing.assert_array_equal(expected, getattr(np, {"add": "add", "sub": "subtract", "mul": "multiply",
                                                        "div": "divide", "maximum": "maximum", "minimum": "minimum",
                                                        "gt": "greater", "eq": "equal"}[op])(*args)
                                  .astype(NP_DTYPES[dtype]))
    (actual,) = compiled(graph)(*args)
    assert_matches(actual, expected, c.tol, dtype, f"{op} {shapes}")


@HYPOTHESIS
@given(data=st.data(), op=st.sampled_from(["reduce_sum", "reduce_max"]), dtype=st.sampled_from(["f32", "f64"]))
def test_reductions_compiled_match_interpreter(data, op, dtype):
    shape = tuple(data.draw(st.lists(st.integers(1, 5), min_size=0, max_size=4), label="shape"))
    axes = sorted(data.draw(st.sets(st.integers(0, max(len(shape) - 1, 0)), max_size=len(shape)), label="axes"))
    keep = data.draw(st.booleans(), label="keepdims")
    c = Case(op, "hyp", (shape,), attrs={"axes": axes, "keepdims": keep},
             tol="accumulate" if op == "reduce_sum" else "exact")
    graph = forward_graph(c, dtype)
    (x,) = sample_inputs(c, dtype, {}, np.random.default_rng(data.draw(st.integers(0, 2**32 - 1))))
    (actual,) = compiled(graph)(x)
    expected = (np.sum if op == "reduce_sum" else np.max)(x, axis=tuple(axes), keepdims=keep)
    assert_matches(actual, np.asarray(expected, x.dtype), c.tol, dtype, f"{op} {shape} {axes} {keep}")


@HYPOTHESIS
@given(perm=st.permutations(range(4)), shape=st.lists(st.integers(1, 4), min_size=4, max_size=4),
       dtype=st.sampled_from(["f32", "f64"]))
def test_transpose_4d_compiled(perm, shape, dtype):
    c = Case("transpose", "hyp", (tuple(shape),), attrs={"perm": list(perm)}, tol="exact")
    graph = forward_graph(c, dtype)
    (x,) = sample_inputs(c, dtype, {}, np.random.default_rng(1))
    (actual,) = compiled(graph)(x)
    np.testing.assert_array_equal(actual, np.transpose(x, perm), strict=True)


# --- symbolic dims, end to end --------------------------------------------------------------------


def test_symbolic_dims_reuse_one_native_function():
    """A ("B", 4) input: the output shape, workspace and loops follow B at run time."""
    graph = Graph("sym")
    b = Builder(graph)
    x = b.wrap(graph.add_input("x", TensorType("f64", ("B", 4))))
    v = b.wrap(graph.add_input("v", TensorType("f64", (4,))))
    h = b.op("tanh", x * v + 1.0)  # temporaries of symbolic size live in the workspace
    graph.outputs = [h.value, h.sum(1).value, h.mean(0).value]
    native = NativeFunction(graph)
    rng = np.random.default_rng(3)
    vv = rng.standard_normal(4)
    for n in (5, 1, 17, 2):
        xv = rng.standard_normal((n, 4))
        out = native(xv, vv)
        ref = np.tanh(xv * vv + 1.0)
        assert [o.shape for o in out] == [(n, 4), (n,), (4,)]
        np.testing.assert_allclose(out[0], ref, rtol=1e-13)
        np.testing.assert_allclose(out[1], ref.sum(1), rtol=1e-12)
        np.testing.assert_allclose(out[2], ref.mean(0), rtol=1e-12)
    with pytest.raises(ValueError):
        native(np.zeros((3, 5)), vv)  # the static dim is checked


# --- gradients at ties and kinks: the conventions the rules document, with hand-derived values ----


def _interpreted_and_compiled_gradients(build, shapes, args, dtype="f64"):
    graph = Graph("ties")
    b = Builder(graph)
    xs = [b.wrap(graph.add_input(f"x{i}", TensorType(dtype, s))) for i, s in enumerate(shapes)]
    graph.outputs = [build(b, *xs).value]
    grad = append_adjoint(graph, list(range(len(shapes))))
    interpreted = interpret(grad, *args)[1:]
    compiled_ = NativeFunction(optimize(grad))(*args)[1:]
    return interpreted, compiled_


@pytest.mark.parametrize("dtype", ["f32", "f64"])
def test_reduce_max_ties_share_the_gradient(dtype):
    x = np.array([[1.0, 3.0, 3.0, 0.0], [2.0, 2.0, 2.0, 2.0], [-1.0, 5.0, 0.0, 5.0]], NP_DTYPES[dtype])
    w = np.array([1.0, 2.0, -4.0], NP_DTYPES[dtype])
    expected = np.array([[0, 0.5, 0.5, 0], [0.5, 0.5, 0.5, 0.5], [0, -2, 0, -2]], NP_DTYPES[dtype])
    for keep in (False, True):
        def build(b, x, w, keep=keep):
            m = b.op("reduce_max", x, axes=[1], keepdims=keep)
            return (m * (w.reshape(3, 1) if keep else w)).sum()
        interpreted, compiled_ = _interpreted_and_compiled_gradients(build, [(3, 4), (3,)], [x, w], dtype)
        np.testing.assert_array_equal(interpreted[0], expected)
        np.testing.assert_array_equal(compiled_[0], expected)
    # over every axis: the 4 copies of the maximum 5 each get a quarter
    y = np.array([[5.0, 1.0], [5.0, 5.0], [0.0, 5.0]], NP_DTYPES[dtype])
    for grads in _interpreted_and_compiled_gradients(lambda b, y: b.op("reduce_max", y, axes=[0, 1], keepdims=False),
                                                     [(3, 2)], [y], dtype):
        np.testing.assert_array_equal(grads[0], np.array([[0.25, 0], [0.25, 0.25], [0, 0.25]], NP_DTYPES[dtype]))


@pytest.mark.parametrize("dtype", ["f32", "f64"])
def test_maximum_tie_splits_the_gradient_and_relu_kink_gives_zero(dtype):
    """As in JAX and PyTorch: d max(a, b) is 1/2 to each side of a tie; relu'(0) = 0."""
    a = np.array([1.0, 2.0, -3.0, 0.0], NP_DTYPES[dtype])
    bb = np.array([1.0, 1.0, -3.0, 0.5], NP_DTYPES[dtype])
    for da, db in _interpreted_and_compiled_gradients(lambda b, x, y: b.op("maximum", x, y).sum(),
                                                      [(4,), (4,)], [a, bb], dtype):
        np.testing.assert_array_equal(da, np.array([0.5, 1, 0.5, 0], NP_DTYPES[dtype]))
        np.testing.assert_array_equal(db, np.array([0.5, 0, 0.5, 1], NP_DTYPES[dtype]))
    x = np.array([0.0, -0.0, 1.0, -1.0], NP_DTYPES[dtype])
    for (dx,) in _interpreted_and_compiled_gradients(lambda b, x: b.op("relu", x).sum(), [(4,)], [x], dtype):
        np.testing.assert_array_equal(dx, np.array([0, 0, 1, 0], NP_DTYPES[dtype]))


@pytest.mark.parametrize("dtype", ["f32", "f64"])
def test_pow_gradients_at_zero(dtype):
    """d/dx x**e at x = 0 (and 1): e = 0 is constant, so 0 (not 0 * 0**-1 = NaN); e * 0**(e-1) otherwise."""
    x = np.array([0.0, 1.0], NP_DTYPES[dtype])
    for exponent, expected in ((0.0, [0, 0]), (1.0, [1, 1]), (2.0, [0, 2]), (3.0, [0, 3]),
                               (1.5, [0, 1.5]), (2.5, [0, 2.5])):
        for (dx,) in _interpreted_and_compiled_gradients(lambda b, x: (x ** exponent).sum(), [(2,)], [x], dtype):
            np.testing.assert_array_equal(dx, np.array(expected, NP_DTYPES[dtype]), err_msg=f"x ** {exponent}")
