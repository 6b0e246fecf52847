"""Builds graphs with ordinary Python arithmetic: the tracer and the VJP rules both write `g * y`."""
from __future__ import annotations

import math
from typing import Any, Callable, Union

import numpy as np

from .graph import Graph, Value
from .types import ShapeError, TensorType, normalize_axes, num_elements

Scalar = Union[int, float, np.floating, np.integer]


class Builder:
    """Appends ops to `graph`; `locate()` gives each new op its source location."""

    def __init__(self, graph: Graph, locate: Callable[[], str] = lambda: "",
                 sym_type: type | None = None) -> None:
        self.graph = graph
        self.locate = locate
        self.sym_type = sym_type or Sym

    def wrap(self, value: Value) -> Sym:
        return self.sym_type(value, self)

    def op(self, name: str, *operands: Sym | Value, **attrs: Any) -> Sym:
        values = [o.value if isinstance(o, Sym) else o for o in operands]
        try:
            return self.wrap(self.graph.add_op(name, values, attrs, loc=self.locate()))
        except ShapeError as e:  # say which values: the arguments have their parameter names
            if values and e.args and isinstance(e.args[0], str):
                e.args = (f"{e.args[0]} (operands {describe(values)})",) + e.args[1:]
            raise

    def const(self, value: float, dtype: str) -> Sym:
        return self.op("const", value=float(value), dtype=dtype)

    def lift(self, x: Sym | Scalar, like: Sym) -> Sym:
        """A Python number becomes a constant of `like`'s dtype, as in JAX's weak typing."""
        if isinstance(x, Sym):
            if x.builder is not self:
                raise TypeError("mixing tensors from different traces")
            return x
        if isinstance(x, np.ndarray):
            raise TypeError(f"cannot combine a traced tensor with a numpy array of shape {x.shape}: "
                            "constant arrays are not captured; pass it to the function as an argument")
        if isinstance(x, str) and any(x in v.type.symbols for v in self.graph.inputs):
            return self.op("size", dims=[x], dtype=like.dtype)  # a symbolic dim (x.shape[0]) as a number
        if isinstance(x, (bool, np.bool_)) or not isinstance(x, (int, float, np.floating, np.integer)):
            raise TypeError(f"cannot combine a traced tensor with {type(x).__name__} {x!r:.80}; "
                            "use a tensor argument or a Python number")
        return self.const(float(x), like.dtype)


def describe(values: list[Value]) -> str:
    """`%x: f32[4,5], f32[5,8]`: operands for an error message, named where they have a name."""
    return ", ".join(f"%{v.name}: {v.type}" if v.name else str(v.type) for v in values)


class Sym:
    """A graph value with operator overloading; arithmetic appends ops to the builder's graph."""

    __slots__ = ("value", "builder")
    __array_priority__ = 1000  # so `ndarray * sym` defers to Sym.__rmul__ and raises its error

    def __init__(self, value: Value, builder: Builder) -> None:
        self.value = value
        self.builder = builder

    @property
    def type(self) -> TensorType:
        return self.value.type

    @property
    def shape(self) -> tuple:
        return self.value.type.shape

    @property
    def dtype(self) -> str:
        return self.value.type.dtype

    @property
    def ndim(self) -> int:
        return self.value.type.rank

    def _binary(self, name: str, other: Any, reverse: bool = False) -> Sym:
        other = self.builder.lift(other, self)
        a, b = (other, self) if reverse else (self, other)
        if a.dtype != b.dtype:
            raise ShapeError(f"{name}: dtypes {a.dtype} and {b.dtype} differ; gradc does not promote "
                             f"silently, so make both arguments the same dtype (operands "
                             f"{describe([a.value, b.value])})")
        return self.builder.op(name, a, b)

    def __add__(self, o): return self._binary("add", o)
    def __radd__(self, o): return self._binary("add", o, True)
    def __sub__(self, o): return self._binary("sub", o)
    def __rsub__(self, o): return self._binary("sub", o, True)
    def __mul__(self, o): return self._binary("mul", o)
    def __rmul__(self, o): return self._binary("mul", o, True)
    def __truediv__(self, o): return self._binary("div", o)
    def __rtruediv__(self, o): return self._binary("div", o, True)
    def __neg__(self): return self.builder.op("neg", self)
    def __pos__(self): return self
    def __abs__(self): return self.builder.op("abs", self)

    # comparisons give 1.0/0.0 masks of the operands' dtype (for gc.where, or to multiply by);
    # NaN compares false, as in numpy. == stays Python's identity: tensors are used as keys.
    def __gt__(self, o): return self._binary("gt", o)
    def __lt__(self, o): return self._binary("gt", o, True)
    def __ge__(self, o): return self._binary("gt", o) + self._binary("eq", o)
    def __le__(self, o): return self._binary("gt", o, True) + self._binary("eq", o)

    def __len__(self) -> int:
        if not self.shape:
            raise TypeError(f"len() of a traced 0-d {self.type}: it has no first dim")
        if not isinstance(self.shape[0], int):
            raise TypeError(f"len() of a traced {self.type}: its first dim is the symbolic {self.shape[0]}")
        return self.shape[0]

    def __pow__(self, exponent: Any) -> Sym:
        if isinstance(exponent, Sym) or isinstance(exponent, (bool, np.bool_)) or \
                not isinstance(exponent, (int, float, np.floating, np.integer)):
            raise TypeError("x ** e needs a constant Python number e; for a tensor exponent "
                            "write gc.exp(e * gc.log(x))")
        return self.builder.op("pow", self, exponent=float(exponent))

    def __rpow__(self, base: Any) -> Sym:
        if isinstance(base, (bool, np.bool_)) or not isinstance(base, (int, float, np.floating, np.integer)) \
                or not 0 < base < math.inf:
            raise TypeError(f"b ** x needs a positive finite constant Python number b, got {base!r}")
        return self.builder.op("rpow", self, base=float(base))

    @property
    def size(self) -> int:
        count, symbols = num_elements(self.shape)
        if symbols:
            raise TypeError(f"the size of a traced {self.type} depends on {', '.join(symbols)}; "
                            "use gc.mean, or x.shape's symbolic dims as numbers")
        return count

    def __matmul__(self, o): return matmul(self, self.builder.lift(o, self))
    def __rmatmul__(self, o): return matmul(self.builder.lift(o, self), self)

    @property
    def T(self) -> Sym:
        return self.transpose()

    def transpose(self, axes: tuple[int, ...] | None = None) -> Sym:
        perm = tuple(reversed(range(self.ndim))) if axes is None else tuple(a % max(self.ndim, 1) for a in axes)
        if perm == tuple(range(self.ndim)):
            return self
        return self.builder.op("transpose", self, perm=list(perm))

    def reshape(self, *shape: Any) -> Sym:
        """numpy's reshape; one dim may be -1, inferred from the rest (a symbolic dim included,
        when it is the only one the new shape leaves out)."""
        if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
            shape = tuple(shape[0])
        if -1 in shape:
            shape = self._infer_minus_one(tuple(shape))
        return self.builder.op("reshape", self, shape=list(shape))

    def _infer_minus_one(self, shape: tuple) -> tuple:
        have, have_symbols = num_elements(self.shape)
        rest = tuple(d for d in shape if d != -1)
        given, given_symbols = num_elements(rest)
        left = list(have_symbols)
        for symbol in given_symbols:
            if symbol in left:
                left.remove(symbol)
        if shape.count(-1) == 1 and given and len(left) <= 1 and len(left) + len(given_symbols) == len(have_symbols):
            if not left and have % given == 0:
                return tuple(have // given if d == -1 else d for d in shape)
            if left and have == given:
                return tuple(left[0] if d == -1 else d for d in shape)
        raise ShapeError(f"reshape: cannot infer the -1 in {list(shape)} from {self.type}: one -1 stands for "
                         "an int, or for a single symbolic dim the new shape leaves out")

    def sum(self, axis: int | tuple[int, ...] | None = None, keepdims: bool = False) -> Sym:
        axes = normalize_axes(axis, self.ndim)
        return self.builder.op("reduce_sum", self, axes=list(axes), keepdims=keepdims)

    def max(self, axis: int | tuple[int, ...] | None = None, keepdims: bool = False) -> Sym:
        axes = normalize_axes(axis, self.ndim)
        return self.builder.op("reduce_max", self, axes=list(axes), keepdims=keepdims)

    def mean(self, axis: int | tuple[int, ...] | None = None, keepdims: bool = False) -> Sym:
        axes = normalize_axes(axis, self.ndim)
        count = self.builder.op("size", dims=[self.shape[a] for a in axes], dtype=self.dtype)
        return self.sum(axes, keepdims) / count

    def broadcast_to(self, shape: tuple, dims: tuple[int, ...] | None = None) -> Sym:
        """Broadcast into `shape`, operand axis i going to output axis dims[i] (numpy-aligned by default)."""
        if dims is None:
            dims = tuple(range(len(shape) - self.ndim, len(shape)))
        if tuple(shape) == self.shape and tuple(dims) == tuple(range(self.ndim)):
            return self
        return self.builder.op("broadcast", self, shape=list(shape), dims=list(dims))

    def __repr__(self) -> str:
        return f"<traced {self.type} {self.value.name}>"


def matmul(a: Sym, b: Sym) -> Sym:
    """numpy matmul for 1-D and 2-D operands, lowered onto the 2-D matmul op with reshapes."""
    if a.dtype != b.dtype:
        raise ShapeError(f"matmul: dtypes {a.dtype} and {b.dtype} differ; gradc does not promote silently, so "
                         f"make both arguments the same dtype (operands {describe([a.value, b.value])})")
    if not (1 <= a.ndim <= 2 and 1 <= b.ndim <= 2):
        raise ShapeError(f"matmul takes 1-D or 2-D operands (operands {describe([a.value, b.value])})")
    a2 = a.reshape(1, a.shape[0]) if a.ndim == 1 else a
    b2 = b.reshape(b.shape[0], 1) if b.ndim == 1 else b
    out = a.builder.op("matmul", a2, b2, transpose_a=False, transpose_b=False)
    if a.ndim == 1 and b.ndim == 1:
        return out.reshape(())
    if a.ndim == 1:
        return out.reshape(out.shape[1])
    if b.ndim == 1:
        return out.reshape(out.shape[0])
    return out
