"""The public entry points: gc.jit, gc.grad, gc.value_and_grad, gc.make_ir, and `.lower()`."""
from __future__ import annotations

import functools
import inspect
import os
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Sequence, Union

import numpy as np

from .backends.jit import NativeFunction
if TYPE_CHECKING:
    from .profiling import Profile
from .ir import Graph, Sym, TensorType
from .ir.types import DTYPE_NAMES, NUMPY_DTYPES
from .ir.autodiff import GradError
from .ir.dot import to_dot
from .dumping import dump_if_requested
from .ir.fusion import FusionResult, fuse, fused_graph, report, unfused
from .ir.passes import Autodiff, optimize, run_passes
from .tracing import (annotated_types, array_type, function_name, parameter_names, required_arguments, trace,
                      unflatten)

Wrt = Union[int, str, Sequence[Union[int, str]]]
RECENT = 4  # signatures a compiled function tries natively before it looks one up in Python


@dataclass
class Lowered:
    """Every stage of one compilation, for inspection. Graph stages print as gradc IR text."""

    graphs: dict[str, Graph]
    fusion: FusionResult
    timings: dict[str, float] = field(default_factory=dict)
    _native: NativeFunction | None = None
    _profiled: NativeFunction | None = None

    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def native(self) -> NativeFunction:
        if self._native is None:
            with self._lock:  # threads calling for the first time at once compile once
                if self._native is None:
                    start = time.perf_counter()
                    native = NativeFunction(self.graphs["optimized"], self.fusion)
                    self.timings["llvm"] = time.perf_counter() - start
                    self._native = native
        return self._native

    def as_text(self, stage: str = "optimized") -> str:
        if stage in self.graphs:
            return str(self.graphs[stage])
        if stage == "llvm":
            return self.native.llvm_ir
        if stage == "llvm-unoptimized":
            return self.native.llvm_ir_unoptimized
        if stage == "asm":
            return self.native.asm()
        raise ValueError(f"unknown stage {stage!r}; stages are {', '.join(self.stages)} and llvm-unoptimized")

    def as_dot(self, stage: str = "grad") -> str:
        if stage not in self.graphs:
            raise ValueError(f"as_dot takes a graph stage ({', '.join(self.graphs)}), got {stage!r}")
        return to_dot(self.graphs[stage])

    def explain(self, wrt: Sequence[str] | None = None, stage: str | None = None):
        """The requested gradients as matrix-calculus formulas (see gradc.explain)."""
        from .explain import explain
        return explain(self, wrt, stage)

    def profile(self, *args: Any, calls: int = 0, dims: dict[str, int] | None = None) -> "Profile":
        """Where a call's time goes, kernel by kernel (a gradc.profiling.Profile; print it): a
        second compilation, timed inside native code, called `calls` times (0: about 0.5 s worth).
        Without arguments, on random ones (symbolic dims from `dims`, else gradc.checking's default)."""
        from .profiling import profile
        if not args:
            from .checking import random_arguments
            args = random_arguments([v.type for v in self.graphs["optimized"].inputs], dims)
        with self._lock:
            if self._profiled is None:
                self._profiled = NativeFunction(self.graphs["optimized"], self.fusion, profile=True)
        return profile(self._profiled, args, calls)

    def fusion_report(self) -> str:
        """Each kernel, the ops it fused and what it stores; each op left out, and why."""
        return report(self.graphs["optimized"], self.fusion)

    @property
    def stages(self) -> list[str]:
        return list(self.graphs) + ["llvm", "asm"]


def _resolve_wrt(fn: Callable, wrt: Wrt) -> tuple[list[int], bool]:
    names = parameter_names(fn)
    single = not isinstance(wrt, (tuple, list))
    indices = []
    for w in ([wrt] if single else list(wrt)):
        if isinstance(w, str):
            if w not in names:
                raise ValueError(f"wrt={w!r} is not a parameter of {function_name(fn)}({', '.join(names)})")
            indices.append(names.index(w))
        elif isinstance(w, (int, np.integer)) and not isinstance(w, bool) and -len(names) <= w < len(names):
            indices.append(int(w) % len(names))
        else:
            raise ValueError(f"wrt={w!r}: expected a parameter index or name of "
                             f"{function_name(fn)}({', '.join(names)})")
    if not indices:
        raise ValueError("wrt names no argument")
    return indices, single


def argument_types(fn: Callable, args: Sequence[Any]) -> list[TensorType]:
    """The tensor types of example arguments, checked against fn's parameters."""
    names = parameter_names(fn)
    if not required_arguments(fn) <= len(args) <= len(names):
        raise TypeError(f"{function_name(fn)} takes {len(names)} arguments ({', '.join(names)}), got {len(args)}")
    return [array_type(np.asarray(a), n) for a, n in zip(args, names)]


class Compiled:
    """A function compiled on first call for each signature; later calls reuse the native code."""

    def __init__(self, fn: Callable, mode: str, wrt: Wrt = 0, has_aux: bool = False,
                 fusion: bool | None = None) -> None:
        self.fn, self.mode, self.has_aux = fn, mode, has_aux
        self.fusion = fusion if fusion is not None else os.environ.get("GRADC_NO_FUSION", "") in ("", "0")
        self.names = parameter_names(fn)
        self._defaults = {name: p.default for name, p in inspect.signature(fn).parameters.items()
                          if p.default is not p.empty}
        self.wrt, self.single = _resolve_wrt(fn, wrt) if mode != "jit" else ([], False)
        self.annotated = annotated_types(fn)
        # a call complete without keywords: the annotated parameters, or those without defaults
        self._complete = len(self.annotated) if self.annotated is not None else required_arguments(fn)
        constants = self.names[self._complete:] if self.annotated is not None else []
        for i in self.wrt:
            if self.names[i] in constants:
                raise GradError(f"wrt={self.names[i]!r}: {self._constant(self.names[i])}")
        self._annotated_dtypes = [NUMPY_DTYPES[t.dtype] for t in self.annotated or ()]
        self._cache: dict[tuple, tuple[Lowered, Any]] = {}
        self._by_signature: dict[tuple, tuple[Lowered, Any]] = {}  # keyed on (dtype, shape) per argument
        self._annotated_compiled: tuple[Lowered, Any] | None = None
        # (hot path, packer) of the signatures called most recently, the last first: a caller
        # alternating between shapes (a last, smaller batch; train and eval) stays on the hot path
        self._recent: tuple[tuple[Callable, Callable], ...] = ()
        self._lock = threading.RLock()
        functools.update_wrapper(self, fn)

    def _types_of(self, args: Sequence[Any]) -> list[TensorType]:
        return argument_types(self.fn, args)

    def _compile(self, types: Sequence[TensorType]) -> tuple[Lowered, Any]:
        key = tuple(types)
        if key in self._cache:
            return self._cache[key]
        with self._lock:  # one trace per signature, even when threads make the first call together
            if key not in self._cache:
                self._cache[key] = self._trace_and_optimize(types)
                dump_if_requested(self._cache[key][0])
            return self._cache[key]

    def _trace_and_optimize(self, types: Sequence[TensorType]) -> tuple[Lowered, Any]:
        timings: dict[str, float] = {}
        start = time.perf_counter()
        traced, structure = trace(self.fn, types)
        timings["trace"] = time.perf_counter() - start
        graphs = {"traced": traced}
        n_out = len(traced.outputs)
        if self.mode != "jit":
            if self.has_aux and (structure is None or len(structure[1]) != 2 or structure[1][0] != (1, None)):
                raise GradError(f"has_aux=True: {function_name(self.fn)} must return (loss, aux) with loss "
                                "a single scalar tensor")
            if not self.has_aux and structure is not None:
                raise GradError(f"{function_name(self.fn)} returns {n_out} values; grad needs a single scalar "
                                "(use has_aux=True to return (loss, aux))")
            for i in self.wrt:
                if i >= len(traced.inputs):
                    raise GradError(f"wrt={self.names[i]!r}: the call leaves {self.names[i]} out, so it is its "
                                    "default, a Python constant; pass it to differentiate with respect to it")
                if traced.inputs[i].type.dtype not in ("f32", "f64"):
                    raise GradError(f"cannot differentiate with respect to {self.names[i]!r}")
            graphs["grad"] = run_passes(traced, [Autodiff(self.wrt)], timings=timings)
        start = time.perf_counter()
        graphs["optimized"] = optimize(graphs.get("grad", traced), timings=timings)
        timings["optimize"] = time.perf_counter() - start
        start = time.perf_counter()
        fusion = (fuse if self.fusion else unfused)(graphs["optimized"])
        graphs["fused"] = fused_graph(graphs["optimized"], fusion)
        timings["fuse"] = time.perf_counter() - start
        return Lowered(graphs, fusion, timings), (structure, n_out)

    def lower(self, *args: Any, **kwargs: Any) -> Lowered:
        """The compilation for these arguments (or, with annotations, for the annotated types)."""
        if self.annotated is not None and not args and not kwargs:
            return self._compile(self.annotated)[0]
        return self._compile(self._types_of(self._arrays(self._positional(args, kwargs))))[0]

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        recent = self._recent
        if recent and not kwargs:  # native code checks that the arguments fit, or refuses
            hot, packer = recent[0]
            outputs = hot(*args)
            if outputs is not None:
                return packer(outputs)
            outputs = self._call_recent(args, first=1)
            if outputs is not None:
                return outputs
        given = args
        args = self._positional(args, kwargs)
        if any(isinstance(a, Sym) for a in args):  # called inside another function being traced
            if self.mode != "jit":
                raise TypeError(f"gc.{self.mode}({function_name(self.fn)}) called inside a function being "
                                f"traced: gradc does not nest gradients in traced code (gc.jit nests); "
                                f"compile the outer function with gc.{self.mode} instead")
            return self.fn(*args)  # as JAX inlines a nested jit: its ops join the outer graph
        arrays = self._arrays(args)
        if arrays is not given and recent:  # keywords in order, numbers as arrays, may fit a recent signature
            outputs = self._call_recent(arrays, first=0)
            if outputs is not None:
                return outputs
        return self._call_compiled(arrays)

    def _call_recent(self, args: Sequence[Any], first: int) -> Any:
        recent = self._recent
        for i in range(first, len(recent)):
            hot, packer = recent[i]
            outputs = hot(*args)
            if outputs is not None:
                self._recent = (recent[i],) + recent[:i] + recent[i + 1:]  # tried first next time
                return packer(outputs)
        return None

    def _call_compiled(self, args: Sequence[Any]) -> Any:
        if self.annotated is not None:
            if self._annotated_compiled is None:
                self._annotated_compiled = self._compile(self.annotated)
            lowered, shape = self._annotated_compiled
        else:
            try:
                signature = tuple((a.dtype, a.shape) for a in args)
            except AttributeError:
                args = tuple(np.asarray(a) for a in args)
                signature = tuple((a.dtype, a.shape) for a in args)
            compiled = self._by_signature.get(signature)
            if compiled is None:
                compiled = self._by_signature[signature] = self._compile(self._types_of(args))
            lowered, shape = compiled
        native = lowered.native
        outputs = native(*args)
        hot, packer = native.hot_path(), self._packer(shape)
        self._recent = ((hot, packer),) + tuple(e for e in self._recent if e[0] is not hot)[:RECENT - 1]
        return packer(outputs)

    def _positional(self, args: tuple, kwargs: dict[str, Any]) -> tuple:
        """The arguments in parameter order, keywords by name, up to the last one given (and every
        annotated one): a parameter skipped before it takes its default as an argument; those after
        it are left out, so tracing uses their defaults as Python constants."""
        if self.annotated is not None:
            extra = self.names[self._complete:len(args)] + [n for n in kwargs if n in self.names[self._complete:]]
            if extra:
                raise TypeError(f"{function_name(self.fn)}() got {extra[0]!r}: {self._constant(extra[0])}")
        if not kwargs and len(args) >= self._complete:
            return args
        unknown = set(kwargs) - set(self.names)
        if unknown:
            raise TypeError(f"{function_name(self.fn)}() got an unexpected keyword argument {sorted(unknown)[0]!r}")
        clash = next((n for n in self.names[:len(args)] if n in kwargs), None)
        if clash is not None:
            raise TypeError(f"{function_name(self.fn)}() got multiple values for argument {clash!r}")
        last = max([len(args), self._complete] + [self.names.index(n) + 1 for n in kwargs])
        given = list(args)
        for name in self.names[len(args):last]:
            if name in kwargs:
                given.append(kwargs[name])
            elif name in self._defaults:
                given.append(self._defaults[name])
            else:
                raise TypeError(f"{function_name(self.fn)} takes {len(self.names)} arguments "
                                f"({', '.join(self.names)}), got {len(args) + len(kwargs)}: {name!r} is missing")
        return tuple(given)

    def _constant(self, name: str) -> str:
        return (f"in the annotated {function_name(self.fn)}, {name} has a default and no annotation, so it is "
                f"a Python constant, its default; annotate it to pass it, or fix another value with "
                f"functools.partial")

    def _arrays(self, args: tuple) -> tuple:
        """`args` with Python numbers and lists as arrays of the parameter's annotated dtype, or else
        of the array arguments' float dtype if they share one (float64 if not): like JAX's weak
        types, a number has no dtype of its own. numpy scalars become 0-d arrays of their dtype.
        `args` itself when every argument is an array already."""
        if all(type(a) is np.ndarray for a in args):
            return args
        if self.annotated is not None and len(args) == len(self.annotated):
            weak = self._annotated_dtypes
        else:
            floats = {a.dtype for a in args if isinstance(a, (np.ndarray, np.generic)) and a.dtype in DTYPE_NAMES}
            weak = [floats.pop() if len(floats) == 1 else np.dtype(np.float64)] * len(args)
        arrays = []
        for name, a, dtype in zip(self.names, args, weak):
            if isinstance(a, (list, tuple)) and any(isinstance(v, (np.ndarray, Sym)) for v in a):
                raise TypeError(f"argument {name!r}: a {type(a).__name__} of arrays; gradc takes one array per "
                                "parameter (no pytree arguments), so pass them as parameters of their own")
            if a is None or isinstance(a, (str, bytes, bool)):
                raise TypeError(f"argument {name!r}: {a!r} is not an array or a number; a parameter is a Python "
                                "constant (None, a flag, a string) only as its default, when a call leaves it out")
            if isinstance(a, np.generic):
                a = np.asarray(a)
            elif isinstance(a, (int, float, list, tuple)) and not isinstance(a, bool):
                try:
                    a = np.asarray(a, dtype=dtype)
                except (TypeError, ValueError, OverflowError):
                    pass  # left as it is, for the argument check to say what is wrong with it
            arrays.append(a)
        return tuple(arrays)

    def _packer(self, shape: tuple) -> Callable[[list[np.ndarray]], Any]:
        """`_package` for one signature, the common cases spelled out: it runs on every call."""
        structure, n_out = shape
        if self.mode == "value_and_grad" and not self.has_aux and n_out == 1:
            return (lambda o: (o[0], o[1])) if self.single else (lambda o: (o[0], tuple(o[1:])))
        if self.mode == "grad" and not self.has_aux and n_out == 1:
            return (lambda o: o[1]) if self.single else (lambda o: tuple(o[1:]))
        return functools.partial(self._package, shape=shape)

    def _package(self, outputs: list[np.ndarray], shape: tuple) -> Any:
        """The native outputs in the structure fn returns (and its gradients after them)."""
        structure, n_out = shape
        if self.mode == "jit":
            return unflatten(outputs, structure)
        value, grads = outputs[:n_out], outputs[n_out:]
        grads = grads[0] if self.single else tuple(grads)
        if self.has_aux:
            loss, aux = value[0], unflatten(value[1:], (tuple, structure[1][1:]))  # what follows the loss
            aux = aux[0] if isinstance(aux, (tuple, list)) and len(aux) == 1 else aux
            return ((loss, aux), grads) if self.mode == "value_and_grad" else (grads, aux)
        return (value[0], grads) if self.mode == "value_and_grad" else grads


def jit(fn: Callable, *, fusion: bool | None = None) -> Compiled:
    """Compile `fn` (returning a tensor or a tuple/list of tensors) to native code.

    `fusion=False` (or the environment variable GRADC_NO_FUSION=1) runs every op as its own kernel.
    """
    return Compiled(fn, "jit", fusion=fusion)


def grad(fn: Callable, wrt: Wrt = 0, has_aux: bool = False, *, fusion: bool | None = None) -> Compiled:
    """The gradient of scalar-valued `fn` with respect to the argument(s) `wrt` (indices or names)."""
    return Compiled(fn, "grad", wrt, has_aux, fusion)


def value_and_grad(fn: Callable, wrt: Wrt = 0, has_aux: bool = False, *,
                   fusion: bool | None = None) -> Compiled:
    """Like `grad`, but returns (value, grads), or ((value, aux), grads) with has_aux."""
    return Compiled(fn, "value_and_grad", wrt, has_aux, fusion)


def make_ir(fn: Callable) -> Callable[..., Graph]:
    """`make_ir(fn)(*arrays)` is the traced graph of fn; its str() is the IR text."""
    def build(*args: Any) -> Graph:
        types = annotated_types(fn) if not args else argument_types(fn, args)
        if types is None:
            raise TypeError(f"make_ir({function_name(fn)}) needs example arrays or gc.f32[...] annotations")
        return trace(fn, types)[0]
    return build
