"""The functions a model definition calls: gc.sigmoid, gc.softmax, gc.mse, ...

Primitive ops map one to one onto IR ops; softmax, log_softmax, logsumexp and the losses are
compositions whose gradients come from the primitives' VJP rules. They subtract the running max
(behind stop_gradient, as JAX does) so inputs of ±1000 give finite values and gradients.
"""
from __future__ import annotations

from typing import Any

from .ir import Sym
from .ir.builder import matmul as _matmul
from .ir.types import normalize_axes

Axis = Any  # int, tuple of ints, or None


def _tensor(x: Any, fn: str) -> Sym:
    if not isinstance(x, Sym):
        raise TypeError(f"gc.{fn} works on the traced arguments of a function compiled with "
                        f"gc.jit/gc.grad/gc.value_and_grad, got {type(x).__name__}")
    return x


def _unary(name: str):
    def fn(x: Sym) -> Sym:
        x = _tensor(x, name)
        return x.builder.op(name, x)
    fn.__name__ = fn.__qualname__ = name
    fn.__doc__ = f"Elementwise {name}, recorded as the `{name}` IR op."
    return fn


sigmoid = _unary("sigmoid")
tanh = _unary("tanh")
relu = _unary("relu")
exp = _unary("exp")
log = _unary("log")
sqrt = _unary("sqrt")
log1p = _unary("log1p")
abs = _unary("abs")  # noqa: A001 - numpy's name
stop_gradient = _unary("stop_gradient")


def _extremum(name: str):
    def fn(a: Any, b: Any) -> Sym:
        if not isinstance(a, Sym):  # symmetric: a Python number on either side adopts the tensor's dtype
            a, b = b, a
        return _tensor(a, name)._binary(name, b)
    fn.__name__ = fn.__qualname__ = name
    fn.__doc__ = (f"Elementwise {name} with numpy broadcasting, NaN-propagating; a tie splits the gradient "
                  "evenly. A Python number adopts the tensor's dtype.")
    return fn


maximum = _extremum("maximum")
minimum = _extremum("minimum")


def where(condition: Any, a: Any, b: Any) -> Sym:
    """a where `condition` is nonzero, else b (numpy broadcasting). Comparisons (x > 0, x <= y, ...)
    give 1.0/0.0 masks of their operands' dtype to use as conditions; the gradient reaches a and b
    only where each is chosen, never the condition."""
    tensors = [x for x in (condition, a, b) if isinstance(x, Sym)]
    if not tensors:
        raise TypeError("gc.where needs at least one traced tensor argument")
    like = tensors[0]
    return like.builder.op("where", *(like.builder.lift(x, like) for x in (condition, a, b)))


def matmul(a: Sym, b: Sym) -> Sym:
    """numpy matmul semantics for 1-D and 2-D operands."""
    return _matmul(_tensor(a, "matmul"), _tensor(b, "matmul"))


def transpose(x: Sym, axes: tuple[int, ...] | None = None) -> Sym:
    return _tensor(x, "transpose").transpose(axes)


def sum(x: Sym, axis: Axis = None, keepdims: bool = False) -> Sym:  # noqa: A001 - numpy's name
    return _tensor(x, "sum").sum(axis, keepdims)


def mean(x: Sym, axis: Axis = None, keepdims: bool = False) -> Sym:
    return _tensor(x, "mean").mean(axis, keepdims)


def max(x: Sym, axis: Axis = None, keepdims: bool = False) -> Sym:  # noqa: A001
    return _tensor(x, "max").max(axis, keepdims)


def min(x: Sym, axis: Axis = None, keepdims: bool = False) -> Sym:  # noqa: A001
    """The smallest element over `axis`: -max(-x), ties sharing the gradient as max's do."""
    return -(-_tensor(x, "min")).max(axis, keepdims)


def _shifted(x: Sym, axis: Axis) -> tuple[Sym, tuple[int, ...]]:
    axes = normalize_axes(axis, x.ndim)
    return x - stop_gradient(x.max(axes, keepdims=True)), axes


def _drop_axes(x: Sym, axes: tuple[int, ...]) -> Sym:
    return x.reshape(tuple(d for a, d in enumerate(x.shape) if a not in axes))


def logsumexp(x: Sym, axis: Axis = None, keepdims: bool = False) -> Sym:
    """log(sum(exp(x))) over `axis`, computed as m + log(sum(exp(x - m))) with m the max, or 0
    where the max is not finite (as JAX: a row of -inf gives -inf, a row holding +inf gives +inf)."""
    x = _tensor(x, "logsumexp")
    axes = normalize_axes(axis, x.ndim)
    m = x.max(axes, keepdims=True)
    finite = m.builder.op("eq", m - m, m.builder.const(0.0, m.dtype))  # inf - inf and NaN are NaN
    m = stop_gradient(where(finite, m, 0.0))
    out = log(exp(x - m).sum(axes, keepdims=True)) + m
    return out if keepdims else _drop_axes(out, axes)


def softmax(x: Sym, axis: Axis = -1) -> Sym:
    shifted, axes = _shifted(_tensor(x, "softmax"), axis)
    e = exp(shifted)
    return e / e.sum(axes, keepdims=True)


def log_softmax(x: Sym, axis: Axis = -1) -> Sym:
    shifted, axes = _shifted(_tensor(x, "log_softmax"), axis)
    return shifted - log(exp(shifted).sum(axes, keepdims=True))


def softplus(x: Sym) -> Sym:
    """log(1 + e^x) without overflow, accurate in both tails: max(x, 0) + log1p(e^-|x|). At 0 the
    kinks' gradients (1/2 from maximum's tie, 0 from abs) add up to the true 1/2."""
    x = _tensor(x, "softplus")
    return maximum(x, 0.0) + log1p(exp(-abs(x)))


def mse(pred: Sym, target: Sym) -> Sym:
    """Mean squared error over all elements."""
    return mean((_tensor(pred, "mse") - target) ** 2)


def softmax_cross_entropy(logits: Sym, onehot: Sym) -> Sym:
    """Mean over the batch of -sum(onehot * log_softmax(logits)) along the last axis."""
    per_example = -(onehot * log_softmax(_tensor(logits, "softmax_cross_entropy"), -1)).sum(-1)
    return per_example.mean() if per_example.ndim else per_example
