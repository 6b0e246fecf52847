"""Gradient checking: the compiled gradient against central finite differences, in float64.

`check_grad(fn, *arrays, wrt=...)` compiles `fn` again in float64 (whatever its annotations say),
then compares the gradient with central differences at a sample of coordinates and along random
directions (which cover every coordinate at once). Float64 matters: in float32 the round-off of a
difference quotient is as large as the errors one is looking for.
"""
from __future__ import annotations

import types
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

from .ir.types import TensorType
from .tracing import annotated_types, f32, f64, parameter_names

DEFAULT_DIM = 4


class GradientCheckError(AssertionError):
    """The compiled gradient disagrees with finite differences."""


def with_dtype(fn: Callable, dtype: str) -> Callable:
    """`fn` with its gc.f32/gc.f64 annotations switched to `dtype` (the same code, so its variable
    names and source lines still name the IR). Unannotated functions compile from the arrays
    they are given and come back unchanged."""
    retype = getattr(fn, "__dict__", {}).get("__gradc_retype__")
    if retype is not None:  # a function built from IR text carries its constants' dtype itself
        return retype(dtype)
    annotated = annotated_types(fn)
    if annotated is None:
        return fn
    clone = types.FunctionType(fn.__code__, fn.__globals__, fn.__name__, fn.__defaults__, fn.__closure__)
    clone.__kwdefaults__, clone.__qualname__ = fn.__kwdefaults__, fn.__qualname__
    clone.__module__, clone.__doc__ = fn.__module__, fn.__doc__
    clone.__dict__.update(fn.__dict__)
    make = {"f32": f32, "f64": f64}[dtype]
    clone.__annotations__ = {n: make[tuple(t.shape)] for n, t in zip(parameter_names(fn), annotated)}
    return clone


def bind_symbols(types_: Sequence[TensorType], dims: dict[str, int] | None = None) -> dict[str, int]:
    """A size for every symbolic dim: those given, DEFAULT_DIM for the rest."""
    dims = dict(dims or {})
    for t in types_:
        for d in t.symbols:
            dims.setdefault(d, DEFAULT_DIM)
    return dims


def random_arguments(types_: Sequence[TensorType], dims: dict[str, int] | None = None,
                     seed: int = 0) -> list[np.ndarray]:
    """Normal arrays of these types, with symbolic dims bound by `bind_symbols`. Matrices are
    scaled by 1/√(last dim), as weights are initialised, so that a wide layer does not saturate
    its activation: there derivatives vanish and a gradient check would compare noise."""
    rng = np.random.default_rng(seed)
    dims = bind_symbols(types_, dims)
    arrays = []
    for t in types_:
        shape = tuple(dims[d] if isinstance(d, str) else d for d in t.shape)
        scale = 1 / np.sqrt(shape[-1]) if len(shape) >= 2 and shape[-1] else 1.0
        # asarray, not astype: arithmetic on a 0-d array gives a numpy scalar, which would take
        # the slow path of gradc's call boundary (and time it, in a profile)
        arrays.append(np.asarray(rng.standard_normal(shape) * scale, dtype=t.np_dtype))
    return arrays


@dataclass
class GradCheck:
    """Worst relative error of each gradient; `ok` when all are within `tolerance`."""

    function: str
    errors: dict[str, float]
    tolerance: float
    coordinates: dict[str, int] = field(default_factory=dict)
    worst_at: dict[str, str] = field(default_factory=dict)
    setting: str = "float64"
    """How the inputs were made, for the report's first line."""

    @property
    def ok(self) -> bool:
        return all(e <= self.tolerance for e in self.errors.values())

    def __str__(self) -> str:
        width = max((len(n) for n in self.errors), default=0)
        lines = [f"{self.function}: compiled gradient vs central differences ({self.setting})"]
        for name, err in self.errors.items():
            verdict = "ok" if err <= self.tolerance else f"MISMATCH {self.worst_at.get(name, '')}"
            lines.append(f"  ∂L/∂{name.ljust(width)}  worst relative error {err:8.1e}  {verdict}")
        checked = f"{max(self.coordinates.values(), default=0)} coordinates and random directions each"
        n = len(self.errors)
        verdict = ("the gradient agrees" if n == 1 else f"all {n} gradients agree") if self.ok else \
            ("the gradient does NOT agree" if n == 1 else f"NOT all {n} gradients agree")
        lines.append(f"  {verdict} within {self.tolerance:g} ({checked})")
        return "\n".join(lines)


def _relative(a: float, b: float, floor: float) -> float:
    # relative to the larger value, floored so coordinates whose derivative is ~0 do not dominate
    return abs(a - b) / max(abs(a), abs(b), floor)


def _worst_error(loss_at: Callable[[np.ndarray], float], x: np.ndarray, grad: np.ndarray, name: str,
                 rng: np.random.Generator, samples: int, directions: int, eps: float) -> tuple[float, str, int]:
    """(worst relative error, where it occurred, coordinates checked) for one argument x, where
    loss_at(delta) is the loss with x + delta in place of x."""
    floor = max(float(np.max(np.abs(grad), initial=0.0)), 1e-12) * 1e-3
    picks = set()
    if x.size:
        picks = {int(np.argmax(np.abs(grad)))}  # the largest entry, where a wrong factor shows most
        picks |= set(rng.choice(x.size, size=min(samples, x.size), replace=False).tolist())
    worst, where = 0.0, ""
    for k in sorted(picks):
        index = tuple(int(j) for j in np.unravel_index(k, x.shape))
        delta = np.zeros_like(x)
        delta[index] = h = eps * max(1.0, abs(float(x[index])))
        numeric = (loss_at(delta) - loss_at(-delta)) / (2 * h)
        err = _relative(float(grad[index]), numeric, floor)
        if err > worst or not where:
            worst, where = err, f"at {name}{list(index)}: gradc {float(grad[index]):.10g}, differences {numeric:.10g}"
    for _ in range(directions if x.size else 0):  # a direction covers every entry at once
        v = rng.standard_normal(x.shape)
        h = eps * max(1.0, float(np.max(np.abs(x))))
        numeric = (loss_at(h * v) - loss_at(-h * v)) / (2 * h)
        exact = float(np.sum(grad * v))
        err = _relative(exact, numeric, floor * np.sqrt(x.size))
        if err > worst:
            worst, where = err, f"along a random direction: gradc {exact:.10g}, differences {numeric:.10g}"
    return worst, where, len(picks)


def check_grad(fn: Callable, *arrays: Any, wrt: Any = None, samples: int = 12, directions: int = 2,
               tolerance: float = 1e-5, eps: float = 1e-5, seed: int = 0,
               raise_on_mismatch: bool = True) -> GradCheck:
    """Compare gradc's gradient of scalar `fn` at `arrays` with central differences, in float64.

    `wrt`: parameter names or indices (default: every argument given). Up to `samples` coordinates per
    gradient (the largest entry always among them) and `directions` random directions are checked;
    an entry's error is relative to the larger of the two values, but at least 1e-3 of the
    gradient's largest entry, so entries that are zero up to round-off do not count as mismatches.
    `eps` is the step relative to each entry (1e-5 balances truncation against round-off).
    Raises `GradientCheckError` naming the gradient, coordinate and both values on a mismatch,
    unless `raise_on_mismatch` is False; returns the `GradCheck` either way.
    """
    from .api import Compiled, jit, value_and_grad
    if isinstance(fn, Compiled):
        wrt = [fn.names[i] for i in fn.wrt] if wrt is None and fn.wrt else wrt
        fn = fn.fn
    names = parameter_names(fn)
    if not arrays:
        annotated = annotated_types(fn)
        if annotated is None:
            raise TypeError(f"check_grad({fn.__name__}) needs example arrays or gc.f32[...] annotations")
        arrays = tuple(random_arguments(annotated, seed=seed))
    # by default every argument given: parameters left out are their defaults, Python constants
    wrt = names[:len(arrays)] if wrt is None else [wrt] if isinstance(wrt, (str, int)) else list(wrt)
    wrt = [names[w] if isinstance(w, int) else w for w in wrt]
    args = [np.array(a, dtype=np.float64) for a in arrays]
    fn64 = with_dtype(fn, "f64")
    loss, grads = value_and_grad(fn64, wrt=tuple(wrt))(*args)
    forward = jit(fn64)
    rng = np.random.default_rng(seed + 1)

    result = GradCheck(fn.__name__, {}, tolerance)
    for name, grad in zip(wrt, grads):
        i = names.index(name)

        def loss_at(delta: np.ndarray, i: int = i) -> float:  # asarray: x + delta is a scalar when 0-d
            return float(forward(*args[:i], np.asarray(args[i] + delta), *args[i + 1:]))
        worst, where, count = _worst_error(loss_at, args[i], grad, name, rng, samples, directions, eps)
        if not np.isfinite(loss) or not np.all(np.isfinite(grad)):
            worst, where = float("inf"), "the loss or gradient is not finite at these inputs"
        result.errors[name], result.worst_at[name], result.coordinates[name] = worst, where, count
    if raise_on_mismatch and not result.ok:
        bad = [n for n, e in result.errors.items() if not e <= tolerance]
        raise GradientCheckError(
            f"gradient check of {fn.__name__} failed for {', '.join(bad)} (tolerance {tolerance:g}): " +
            "; ".join(f"∂L/∂{n}: relative error {result.errors[n]:.3g} {result.worst_at[n]}" for n in bad))
    return result
