"""The op registry: each op defined once, with everything every pass and backend needs to know.

An `OpDef` holds the op's shape rule (`infer`), its numpy reference (`reference`, the test oracle),
its vector-Jacobian product (`vjp`, written with ordinary arithmetic on graph values), its fusion
class (`kind`) and, for elementwise ops, its scalar formula (`scalar`) in a small vocabulary that
each backend implements (`e.add`, `e.exp`, `e.select`, ...). Printing, parsing, autodiff, the
interpreter and LLVM lowering all read this table; adding an elementwise op is one `_elementwise`
call below.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Optional

import numpy as np

from .types import ShapeError, TensorType, broadcast_shapes, format_shape, num_elements, rounded_to

ELEMENTWISE, REDUCTION, MATMUL, LAYOUT, SOURCE = "elementwise", "reduction", "matmul", "layout", "source"


@dataclass(frozen=True)
class OpDef:
    name: str
    kind: str
    """Fusion class: elementwise, reduction, matmul, layout (moves data), source (reads no data)."""
    attrs: tuple[str, ...]
    infer: Callable[[list[TensorType], dict], TensorType]
    reference: Callable[..., np.ndarray]
    """numpy implementation: (arrays..., **attrs, dims=symbol values) -> array."""
    vjp: Optional[Callable[..., tuple]]
    """(g, out, *operands, **attrs) -> one cotangent (or None) per operand, built from graph ops."""
    scalar: Optional[Callable[..., Any]] = None
    """Elementwise formula: (e, *scalars, **attrs) -> scalar, over the backend's vocabulary `e`."""
    arity: int = 1
    doc: str = ""

    def canonical_attrs(self, attrs: dict[str, Any]) -> dict[str, Any]:
        if set(attrs) != set(self.attrs):
            raise ShapeError(f"{self.name} takes attributes {sorted(self.attrs)}, got {sorted(attrs)}")
        return {k: list(attrs[k]) if isinstance(attrs[k], tuple) else attrs[k] for k in sorted(attrs)}


OPS: dict[str, OpDef] = {}


def _register(opdef: OpDef) -> OpDef:
    OPS[opdef.name] = opdef
    return opdef


def _check_arity(name: str, types: list[TensorType], n: int) -> None:
    if len(types) != n:
        raise ShapeError(f"{name} takes {n} operand(s), got {len(types)}")


def _same_dtype(name: str, types: list[TensorType]) -> str:
    dtypes = {t.dtype for t in types}
    if len(dtypes) != 1:
        raise ShapeError(f"{name}: operand dtypes {sorted(dtypes)} differ")
    return dtypes.pop()


def _infer_elementwise(name: str, arity: int):
    def infer(types: list[TensorType], attrs: dict) -> TensorType:
        _check_arity(name, types, arity)
        try:
            shape = broadcast_shapes(*(t.shape for t in types))
        except ShapeError as e:
            raise ShapeError(f"{name}: {e}") from None
        return TensorType(_same_dtype(name, types), shape)
    return infer


def _elementwise(name: str, arity: int, reference, scalar, vjp, attrs: tuple[str, ...] = (),
                 doc: str = "") -> OpDef:
    return _register(OpDef(name, ELEMENTWISE, attrs, _infer_elementwise(name, arity),
                           lambda *xs, dims_env=None, **a: reference(*xs, **a), vjp, scalar, arity, doc))


def _stable_sigmoid(x: np.ndarray) -> np.ndarray:
    z = np.exp(-np.abs(x))
    return np.where(x >= 0, 1 / (1 + z), z / (1 + z)).astype(x.dtype)


def _log1p_scalar(e, x):
    # Goldberg's trick: w = 1 + x rounds, but log(w) * x / (w - 1) cancels that rounding to a few ulp
    one = e.const(1.0)
    w = e.add(one, x)
    result = e.select(e.eq(w, one), x, e.mul(e.log(w), e.div(x, e.sub(w, one))))
    return e.select(e.eq(x, e.const(math.inf)), x, result)  # inf / inf would be NaN


def _pow_scalar(e, x, exponent: float):
    exponent = e.nearest(exponent)  # as numpy's reference has it: x.dtype.type(exponent)
    one = e.const(1.0)
    if exponent == 0:
        return one
    if not math.isfinite(exponent):
        # numpy: 1 ** y is 1; x ** inf grows for |x| > 1 and vanishes below (and the reverse for -inf)
        if math.isnan(exponent):
            return e.select(e.eq(x, one), one, e.const(math.nan))
        above, below = (math.inf, 0.0) if exponent > 0 else (0.0, math.inf)
        magnitude = e.abs(x)
        result = e.select(e.gt(magnitude, one), e.const(above), e.const(below))
        return e.select(e.eq(x, x), e.select(e.eq(magnitude, one), one, result), x)
    if exponent in (1.0, 2.0, 3.0, 4.0):
        # products: exact in sign, within 2 ulp, and the cheapest (squared errors); longer chains
        # of products lose an ulp a step (43 ulp at x ** 63), and 1 / x ** n underflows early
        if exponent == 1.0:
            return x
        square = e.mul(x, x)
        return {2.0: square, 3.0: e.mul(square, x), 4.0: e.mul(square, square)}[exponent]
    if exponent == -1.0:
        return e.div(one, x)
    if exponent == 0.5:
        return e.sqrt(x)  # numpy's own shortcut: sqrt(-0) is -0 and sqrt(-inf) NaN, unlike pow's
    if exponent == int(exponent):  # a negative base too, with the sign of an odd power
        result = e.pow(e.abs(x), e.const(exponent))
        return e.copysign(result, x) if int(exponent) % 2 else result
    if exponent in (-0.5, 1.5):
        # from the correctly rounded sqrt: as accurate as e^(y log x) and 3-4x faster (x ** -0.5
        # normalises layers)
        positive = e.add(x, e.const(0.0))  # -0 + 0 is +0: numpy's pow(-0, y) is +0 or +inf here
        root = e.sqrt(positive)
        result = e.div(one, root) if exponent < 0 else e.mul(positive, root)
    else:
        # e^(y log x) with y log x kept unrounded: within an ulp for moderate y (mathlib.emit_pow)
        result = e.pow(x, e.const(exponent))
    # numpy's pow(-inf, y) for a non-integer y is +inf (y > 0) or +0 (y < 0), not a negative base's NaN
    return e.select(e.eq(x, e.const(-np.inf)), e.const(np.inf if exponent > 0 else 0.0), result)


# --- elementwise ---------------------------------------------------------------------------------

_elementwise("add", 2, np.add, lambda e, a, b: e.add(a, b), lambda g, out, a, b: (g, g),
             doc="a + b with numpy broadcasting")
_elementwise("sub", 2, np.subtract, lambda e, a, b: e.sub(a, b), lambda g, out, a, b: (g, -g),
             doc="a - b")
_elementwise("mul", 2, np.multiply, lambda e, a, b: e.mul(a, b),
             lambda g, out, a, b: (g * b, g * a), doc="a * b")
_elementwise("div", 2, np.divide, lambda e, a, b: e.div(a, b),
             lambda g, out, a, b: (g / b, -(g * out) / b), doc="a / b")
_elementwise("maximum", 2, np.maximum, lambda e, a, b: e.maximum(a, b),
             lambda g, out, a, b: _extremum_vjp(g, a, b, larger=True),
             doc="elementwise max, NaN-propagating; a tie splits the gradient evenly")
_elementwise("minimum", 2, np.minimum, lambda e, a, b: e.minimum(a, b),
             lambda g, out, a, b: _extremum_vjp(g, a, b, larger=False),
             doc="elementwise min, NaN-propagating; a tie splits the gradient evenly")
_elementwise("gt", 2, lambda a, b: (a > b).astype(np.result_type(a, b)),
             lambda e, a, b: e.select(e.gt(a, b), e.const(1.0), e.const(0.0)),
             lambda g, out, a, b: (None, None), doc="1.0 where a > b else 0.0")
_elementwise("eq", 2, lambda a, b: (a == b).astype(np.result_type(a, b)),
             lambda e, a, b: e.select(e.eq(a, b), e.const(1.0), e.const(0.0)),
             lambda g, out, a, b: (None, None), doc="1.0 where a == b else 0.0")
_elementwise("neg", 1, np.negative, lambda e, x: e.neg(x), lambda g, out, x: (-g,), doc="-x")
_elementwise("exp", 1, np.exp, lambda e, x: e.exp(x), lambda g, out, x: (g * out,), doc="e**x")
_elementwise("log", 1, np.log, lambda e, x: e.log(x), lambda g, out, x: (g / x,),
             doc="natural log")
_elementwise("log1p", 1, np.log1p, lambda e, x: _log1p_scalar(e, x), lambda g, out, x: (g / (x + 1.0),),
             doc="log(1 + x), accurate for tiny x")
_elementwise("sqrt", 1, np.sqrt, lambda e, x: e.sqrt(x), lambda g, out, x: (g / (out * 2.0),),
             doc="square root")
_elementwise("tanh", 1, np.tanh, lambda e, x: e.tanh(x),
             lambda g, out, x: (g * (1.0 - out * out),), doc="hyperbolic tangent")
_elementwise("sigmoid", 1, _stable_sigmoid, lambda e, x: e.sigmoid(x),
             lambda g, out, x: (g * out * (1.0 - out),), doc="1 / (1 + exp(-x)), overflow-free")
_elementwise("relu", 1, lambda x: np.maximum(x, x.dtype.type(0)),
             lambda e, x: e.maximum(x, e.const(0.0)),
             # reads the output (out > 0 exactly where x > 0), so x need not be kept for the backward pass
             lambda g, out, x: (g * out.builder.op("gt", out, out.builder.const(0.0, out.dtype)),),
             doc="max(x, 0)")
_elementwise("pow", 1, lambda x, exponent: np.power(x, x.dtype.type(exponent)), _pow_scalar,
             # x ** 0 is constant: no cotangent, where 0 * x ** -1 would be NaN at x = 0
             lambda g, out, x, exponent: _pow_vjp(g, x, rounded_to(exponent, x.dtype)),
             attrs=("exponent",), doc="x ** exponent for a constant exponent")
_elementwise("rpow", 1, lambda x, base: np.power(x.dtype.type(base), x),
             lambda e, x, base: e.pow(e.const(base), x),
             lambda g, out, x, base: (g * out * math.log(rounded_to(base, x.dtype)),),
             attrs=("base",), doc="base ** x for a constant base > 0 (e^(x log base), unrounded)")
_elementwise("stop_gradient", 1, lambda x: x.copy(), lambda e, x: x,
             lambda g, out, x: (None,), doc="identity whose gradient is zero")
_elementwise("abs", 1, np.abs, lambda e, x: e.abs(x),
             # sign(x): 0 at the kink, as PyTorch's
             lambda g, out, x: (g * _sign(x),),
             doc="|x|")
_elementwise("where", 3, lambda c, a, b: np.where(c != 0, a, b).astype(np.result_type(a, b)),
             lambda e, c, a, b: e.select(e.eq(c, e.const(0.0)), b, a),
             lambda g, out, c, a, b: (None, _where(c, g, 0.0), _where(c, 0.0, g)),
             doc="a where c is nonzero (NaN included), else b: c is a mask such as gt's")


def _pow_vjp(g, x, exponent: float):
    # the exponent as the forward pass has it (x.dtype's), so both agree on odd or even
    return (g * exponent * x ** (exponent - 1.0) if exponent != 0 else None,)


def _sign(x):
    zero = x.builder.const(0.0, x.dtype)
    return x.builder.op("gt", x, zero) - x.builder.op("gt", zero, x)


def _where(c, a, b):
    """where(c, a, b) with either value side a Python number (a constant of the other's dtype)."""
    like = b if isinstance(a, float) else a
    return c.builder.op("where", c, c.builder.lift(a, like), c.builder.lift(b, like))


def _extremum_vjp(g, a, b, larger: bool):
    # the chosen side gets the gradient; a tie splits it evenly, as JAX and PyTorch do (and
    # reduce_max between its ties); with a NaN neither side is chosen, as in JAX
    op = a.builder.op
    half = op("eq", a, b) * 0.5
    a_wins, b_wins = (op("gt", a, b), op("gt", b, a)) if larger else (op("gt", b, a), op("gt", a, b))
    return g * (a_wins + half), g * (b_wins + half)


# --- sources: ops that read no tensor data -------------------------------------------------------

def _infer_const(types: list[TensorType], attrs: dict) -> TensorType:
    _check_arity("const", types, 0)
    return TensorType(attrs["dtype"], ())


_register(OpDef("const", SOURCE, ("dtype", "value"), _infer_const,
                lambda dims_env=None, value=0.0, dtype="f32": np.array(value, TensorType(dtype, ()).np_dtype),
                None, arity=0, doc="a scalar constant; broadcasting makes it any shape"))


def _infer_size(types: list[TensorType], attrs: dict) -> TensorType:
    _check_arity("size", types, 0)
    return TensorType(attrs["dtype"], ())


def _size_reference(dims: list, dtype: str, dims_env: dict | None = None) -> np.ndarray:
    return np.array(np.prod(_resolve(dims, dims_env or {})), TensorType(dtype, ()).np_dtype)


_register(OpDef("size", SOURCE, ("dims", "dtype"), _infer_size, _size_reference, None, arity=0,
                doc="the product of `dims` as a scalar; symbolic dims make it a run-time value "
                    "(the element count that mean divides by)"))


# --- reductions ----------------------------------------------------------------------------------

def _check_axes(name: str, t: TensorType, axes: list[int]) -> None:
    if sorted(set(axes)) != list(axes) or any(not 0 <= a < t.rank for a in axes):
        raise ShapeError(f"{name}: axes {axes} must be sorted, unique and within rank {t.rank}")


def _infer_reduce(name: str):
    def infer(types: list[TensorType], attrs: dict) -> TensorType:
        _check_arity(name, types, 1)
        (t,) = types
        _check_axes(name, t, attrs["axes"])
        axes = attrs["axes"]
        if attrs["keepdims"]:
            shape = tuple(1 if a in axes else d for a, d in enumerate(t.shape))
        else:
            shape = tuple(d for a, d in enumerate(t.shape) if a not in axes)
        return t.with_shape(shape)
    return infer


def _kept_dims(x, axes: list[int], keepdims: bool) -> list[int]:
    return list(range(x.ndim)) if keepdims else [a for a in range(x.ndim) if a not in axes]


def _sum_vjp(g, out, x, axes, keepdims):
    return (g.broadcast_to(x.shape, _kept_dims(x, axes, keepdims)),)


def _max_vjp(g, out, x, axes, keepdims):
    kept = _kept_dims(x, axes, keepdims)
    mask = x.builder.op("eq", x, out.broadcast_to(x.shape, kept))
    share = g / mask.sum(axes, keepdims)  # ties split the gradient evenly, as in JAX
    return (mask * share.broadcast_to(x.shape, kept),)


_register(OpDef("reduce_sum", REDUCTION, ("axes", "keepdims"), _infer_reduce("reduce_sum"),
                lambda x, axes, keepdims, dims_env=None: np.asarray(
                    np.sum(x, axis=tuple(axes), keepdims=keepdims), x.dtype),
                _sum_vjp, doc="sum over `axes`"))
_register(OpDef("reduce_max", REDUCTION, ("axes", "keepdims"), _infer_reduce("reduce_max"),
                lambda x, axes, keepdims, dims_env=None: np.asarray(
                    np.max(x, axis=tuple(axes), keepdims=keepdims), x.dtype),
                _max_vjp, doc="max over `axes`; ties share the gradient"))


# --- layout --------------------------------------------------------------------------------------

def _infer_broadcast(types: list[TensorType], attrs: dict) -> TensorType:
    _check_arity("broadcast", types, 1)
    (t,) = types
    shape, dims = tuple(attrs["shape"]), attrs["dims"]
    ok = len(dims) == t.rank and all(0 <= d < len(shape) for d in dims) and list(dims) == sorted(set(dims))
    if not ok or any(t.shape[i] not in (1, shape[d]) for i, d in enumerate(dims)):
        raise ShapeError(f"broadcast: cannot place {format_shape(t.shape)} into "
                         f"{format_shape(shape)} along dims {dims}")
    return t.with_shape(shape)


def _broadcast_ref(x: np.ndarray, shape: list, dims: list[int], dims_env: dict | None = None) -> np.ndarray:
    full = [1] * len(shape)
    for i, d in enumerate(dims):
        full[d] = x.shape[i]
    return np.broadcast_to(x.reshape(full), tuple(_resolve(shape, dims_env))).copy()


def _resolve(shape, env) -> list[int]:
    return [env[d] if isinstance(d, str) else d for d in shape]


def reduce_to_shape(g, shape: tuple, dims: list[int]):
    """Sum a cotangent of a broadcast result back to the operand's `shape` (axis i came from dims[i])."""
    expanded = [dims[i] for i in range(len(shape)) if shape[i] == 1 and g.shape[dims[i]] != 1]
    if expanded:
        g = g.sum(tuple(expanded), keepdims=True)
    new_axes = [a for a in range(g.ndim) if a not in dims]
    if new_axes:
        g = g.sum(tuple(new_axes))
    return g


def _broadcast_vjp(g, out, x, shape, dims):
    return (reduce_to_shape(g, x.shape, dims),)


_register(OpDef("broadcast", LAYOUT, ("dims", "shape"), _infer_broadcast,
                lambda x, shape, dims, dims_env=None: _broadcast_ref(x, shape, dims, dims_env),
                _broadcast_vjp, doc="operand axis i goes to output axis dims[i]; size-1 axes repeat"))


def _infer_reshape(types: list[TensorType], attrs: dict) -> TensorType:
    _check_arity("reshape", types, 1)
    (t,) = types
    shape = tuple(attrs["shape"])
    a, b = num_elements(t.shape), num_elements(shape)
    if a[0] != b[0] or sorted(a[1]) != sorted(b[1]):
        raise ShapeError(f"reshape: cannot reshape {format_shape(t.shape)} into {format_shape(shape)}")
    return t.with_shape(shape)


_register(OpDef("reshape", LAYOUT, ("shape",), _infer_reshape,
                lambda x, shape, dims_env=None: x.reshape(_resolve(shape, dims_env)).copy(),
                lambda g, out, x, shape: (g.reshape(x.shape),), doc="same elements, new shape"))


def _infer_transpose(types: list[TensorType], attrs: dict) -> TensorType:
    _check_arity("transpose", types, 1)
    (t,) = types
    perm = attrs["perm"]
    if sorted(perm) != list(range(t.rank)):
        raise ShapeError(f"transpose: {perm} is not a permutation of the axes of a rank-{t.rank} tensor")
    return t.with_shape(tuple(t.shape[p] for p in perm))


_register(OpDef("transpose", LAYOUT, ("perm",), _infer_transpose,
                lambda x, perm, dims_env=None: np.ascontiguousarray(np.transpose(x, perm)),
                lambda g, out, x, perm: (g.transpose(tuple(int(i) for i in np.argsort(perm))),),
                doc="output axis i is operand axis perm[i]"))


# --- matmul --------------------------------------------------------------------------------------

def _infer_matmul(types: list[TensorType], attrs: dict) -> TensorType:
    _check_arity("matmul", types, 2)
    a, b = types
    dtype = _same_dtype("matmul", types)
    if a.rank != 2 or b.rank != 2:
        raise ShapeError(f"matmul op takes 2-D operands, got {format_shape(a.shape)} and {format_shape(b.shape)}")
    (m, ka) = a.shape[::-1] if attrs["transpose_a"] else a.shape
    (kb, n) = b.shape[::-1] if attrs["transpose_b"] else b.shape
    if ka != kb:
        raise ShapeError(f"matmul: inner dimensions differ: {format_shape(a.shape)}"
                         f"{'ᵀ' if attrs['transpose_a'] else ''} @ {format_shape(b.shape)}"
                         f"{'ᵀ' if attrs['transpose_b'] else ''} ({ka} vs {kb})")
    return TensorType(dtype, (m, n))


def _matmul_reference(a, b, transpose_a, transpose_b, dims_env=None):
    return np.matmul(a.T if transpose_a else a, b.T if transpose_b else b)


def _matmul_vjp(g, out, a, b, transpose_a, transpose_b):
    mm = lambda x, y, ta, tb: x.builder.op("matmul", x, y, transpose_a=ta, transpose_b=tb)
    if not transpose_a and not transpose_b:
        return mm(g, b, False, True), mm(a, g, True, False)
    if not transpose_a and transpose_b:
        return mm(g, b, False, False), mm(g, a, True, False)
    if transpose_a and not transpose_b:
        return mm(b, g, False, True), mm(a, g, False, False)
    return mm(b, g, True, True), mm(g, a, True, True)


_register(OpDef("matmul", MATMUL, ("transpose_a", "transpose_b"), _infer_matmul, _matmul_reference,
                _matmul_vjp, arity=2, doc="2-D matrix product of op(a) and op(b), op = transpose or not"))
