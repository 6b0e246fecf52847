"""Tracing: run the user's Python function on tracer tensors and record the ops it applies."""
from __future__ import annotations

import inspect
import os
import sys
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np

from .ir import Builder, Graph, Sym, TensorType
from .ir.types import DTYPE_NAMES, ShapeError

import gradc.backends

_OWN_DIRS = tuple(os.path.dirname(os.path.abspath(m.__file__)) + os.sep
                  for m in (sys.modules["gradc"], sys.modules["gradc.ir"], gradc.backends))


class TracingError(TypeError):
    """Python used on a traced tensor in a way that cannot be recorded in a graph."""


class Tracer(Sym):
    """A tensor inside a traced function: arithmetic is recorded; asking for its value is an error."""

    __slots__ = ()

    def __bool__(self) -> bool:
        raise TracingError(
            "Python control flow (if, while, and, or, bool()) on a traced tensor: its value is not "
            "known while tracing. Choose values with gc.where(x > 0, a, b) (or gc.maximum, "
            "gc.minimum, gc.abs) instead; or pass the condition as a Python constant.")

    def _no_value(self, what: str) -> None:
        raise TracingError(f"{what} of a traced tensor is not known while tracing; "
                           "keep it as a tensor (gradc records the computation, not values)")

    def __float__(self): self._no_value("float()")
    def __int__(self): self._no_value("int()")
    def __index__(self): self._no_value("using as an index")
    def __iter__(self): self._no_value("iterating over the elements")

    def __getitem__(self, item: Any) -> Any:
        raise TracingError("indexing a traced tensor is not supported; use gc.sum/gc.mean over an "
                           "axis, or pass the slice as its own argument")

    def __array__(self, *args: Any, **kwargs: Any) -> Any:
        raise TracingError("a traced tensor cannot become a numpy array: numpy code cannot run on "
                           "it while tracing. Use the gc.* functions (gc.exp, gc.sum, ...) instead")

    def __array_ufunc__(self, ufunc: Any, method: str, *inputs: Any, **kwargs: Any) -> Any:
        if method == "__call__" and ufunc.__name__ in _UFUNC_OPERATORS and len(inputs) == 2:
            other = inputs[0] if inputs[1] is self else inputs[1]
            if isinstance(other, np.ndarray):
                raise TracingError(f"numpy array {_describe(other)} combined with a traced tensor: constant "
                                   "arrays are not captured; pass it to the function as an argument")
        raise TracingError(f"numpy.{ufunc.__name__} applied to a traced tensor; use {_suggestion(ufunc.__name__)} "
                           "instead")

    def __array_function__(self, func: Any, types: Any, args: Any, kwargs: Any) -> Any:
        raise TracingError(f"numpy.{func.__name__} applied to a traced tensor; use {_suggestion(func.__name__)} "
                           "instead")


_UFUNC_OPERATORS = {"add", "subtract", "multiply", "divide", "true_divide", "matmul", "power"}
_SUGGEST = {"add": "the + operator", "subtract": "the - operator", "multiply": "the * operator",
            "divide": "the / operator", "true_divide": "the / operator", "negative": "unary -",
            "power": "the ** operator", "matmul": "the @ operator", "absolute": "gc.abs or abs()",
            "amax": "gc.max", "amin": "gc.min", "fmax": "gc.maximum", "fmin": "gc.minimum",
            "greater": "the > operator", "less": "the < operator", "greater_equal": "the >= operator",
            "less_equal": "the <= operator"}


def _suggestion(numpy_name: str) -> str:
    """What to write instead of a numpy function: gradc's own of that name, if there is one."""
    import gradc
    if numpy_name in _SUGGEST:
        return _SUGGEST[numpy_name]
    return f"gc.{numpy_name}" if hasattr(gradc, numpy_name) else "the gc.* functions (gc.exp, gc.sum, ...)"


def _describe(x: Any) -> str:
    return f"of shape {x.shape}" if hasattr(x, "shape") else repr(x)


@dataclass(frozen=True)
class Annotation:
    """`gc.f32[128, "B"]`: the type of an argument, with string dims bound at call time."""

    type: TensorType

    def __repr__(self) -> str:
        return f"gc.{self.type}"


class _DTypeAnnotator:
    def __init__(self, dtype: str) -> None:
        self.dtype = dtype

    def __getitem__(self, dims: Any) -> Annotation:
        dims = dims if isinstance(dims, tuple) else (dims,)
        for d in dims:
            if isinstance(d, str) and not d.isidentifier():
                raise ShapeError(f"gc.{self.dtype}[{', '.join(map(repr, dims))}]: a symbolic dim is a "
                                 f"name like 'B', got {d!r}")
        return Annotation(TensorType(self.dtype, tuple(dims)))

    def __repr__(self) -> str:
        return f"gc.{self.dtype}"


f32 = _DTypeAnnotator("f32")
f64 = _DTypeAnnotator("f64")


def user_location() -> str:
    """file:line of the innermost frame outside gradc: the user's line that made the op."""
    frame = sys._getframe(1)
    while frame is not None and frame.f_code.co_filename.startswith(_OWN_DIRS):
        frame = frame.f_back
    return f"{os.path.basename(frame.f_code.co_filename)}:{frame.f_lineno}" if frame else ""


def array_type(array: np.ndarray, name: str) -> TensorType:
    if array.dtype not in DTYPE_NAMES:
        raise TypeError(f"argument {name!r}: gradc computes in float32 or float64, got {array.dtype} "
                        f"(convert with .astype(np.float32))")
    return TensorType(DTYPE_NAMES[array.dtype], tuple(array.shape))


def function_name(fn: Callable) -> str:
    """fn's name for messages and the graph: its __name__, or (partials, callable objects) the
    wrapped function's or the type's."""
    return getattr(fn, "__name__", None) or getattr(getattr(fn, "func", None), "__name__", None) or \
        type(fn).__name__


def parameter_names(fn: Callable) -> list[str]:
    params = list(inspect.signature(fn).parameters.values())
    for p in params:
        # a keyword-only parameter with a default (as functools.partial leaves one) is a constant
        if p.kind not in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and \
                not (p.kind == p.KEYWORD_ONLY and p.default is not p.empty):
            raise TypeError(f"{function_name(fn)}: gradc traces positional tensor parameters only; "
                            f"parameter {p.name!r} is {p.kind.description}")
    return [p.name for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]


def annotated_types(fn: Callable) -> list[TensorType] | None:
    """The argument types from `gc.f32[...]` annotations, or None when the function has none."""
    names = parameter_names(fn)
    try:  # string annotations (from __future__ import annotations) are evaluated in fn's globals
        hints = inspect.get_annotations(fn, eval_str=True)
    except Exception:
        hints = getattr(fn, "__annotations__", {})
    found = [hints.get(n) for n in names]
    # trailing parameters with defaults may go unannotated: Python constants, as when left out
    tensors, required = len(names), required_arguments(fn)
    while tensors > required and not isinstance(found[tensors - 1], Annotation):
        tensors -= 1
    if all(isinstance(a, Annotation) for a in found[:tensors]) and tensors:
        return [a.type for a in found[:tensors]]
    if any(isinstance(a, Annotation) for a in found):
        missing = [n for n, a in zip(names[:tensors], found) if not isinstance(a, Annotation)]
        raise TypeError(f"{function_name(fn)}: annotate every parameter with gc.f32[...]/gc.f64[...] or "
                        f"none (those with defaults may go last, unannotated); missing: {', '.join(missing)}")
    return None


def required_arguments(fn: Callable) -> int:
    """How many leading parameters have no default: a call gives at least these. The parameters
    after them that a call leaves out are Python constants while tracing, their defaults, as in JAX."""
    return sum(p.default is p.empty and p.kind != p.KEYWORD_ONLY for p in inspect.signature(fn).parameters.values())


def trace(fn: Callable, types: Sequence[TensorType]) -> tuple[Graph, Any]:
    """Trace `fn` on tracers of `types`. Returns the graph and the structure of what fn returned."""
    names = parameter_names(fn)
    if not required_arguments(fn) <= len(types) <= len(names):
        raise TypeError(f"{function_name(fn)} takes {len(names)} arguments, got {len(types)}")
    graph = Graph(function_name(fn).replace("<", "").replace(">", "") or "fn")
    builder = Builder(graph, user_location, Tracer)
    args = [builder.wrap(graph.add_input(n, t)) for n, t in zip(names, types)]
    local_names: dict[int, str] = {}

    def remember_locals(frame, event, arg):  # names intermediates after the Python variables
        if event == "return" and frame.f_code is fn.__code__:
            for name, value in frame.f_locals.items():
                if isinstance(value, Sym):
                    local_names.setdefault(id(value.value), name)

    previous = sys.getprofile()
    sys.setprofile(remember_locals if hasattr(fn, "__code__") else previous)
    try:
        result = fn(*args)  # parameters past `types` take their defaults
    except (ShapeError, TypeError) as e:  # TracingError is a TypeError
        _point_at_user_line(e)
        if isinstance(e, ShapeError) and "dtypes" in str(e) and len({t.dtype for t in types}) > 1:
            # the clash is often between derived values (W.T, x @ W): say which arguments differ
            e.args = (f"{e.args[0]}; the arguments' dtypes: "
                      + ", ".join(f"{n} {t.dtype}" for n, t in zip(names, types)),) + e.args[1:]
        raise
    finally:
        sys.setprofile(previous)
    for op in graph.ops:
        if not op.result.name and id(op.result) in local_names:
            op.result.name = local_names[id(op.result)]
    outputs, structure = _flatten(result, fn)
    graph.outputs = [o.value for o in outputs]
    return graph, structure


def _point_at_user_line(error: Exception) -> None:
    """Prefix the message of an error gradc raised while tracing with the user's `file.py:line`."""
    location, tb, raised_by_gradc = "", error.__traceback__, False
    while tb is not None:
        code = tb.tb_frame.f_code
        raised_by_gradc = code.co_filename.startswith(_OWN_DIRS)
        if not raised_by_gradc:
            location = f"{os.path.basename(code.co_filename)}:{tb.tb_lineno}"
        tb = tb.tb_next
    if raised_by_gradc and location and error.args and isinstance(error.args[0], str) and \
            not error.args[0].startswith(location + ":"):
        error.args = (f"{location}: {error.args[0]}",) + error.args[1:]


def _flatten(result: Any, fn: Callable) -> tuple[list[Sym], Any]:
    """The tensors of what fn returned, in order, and its structure: tensors (None), and tuples,
    lists, dicts and None (no tensor, as in JAX's pytrees) nested."""
    flat, structure = _flatten_tree(result, fn)
    if not flat:
        raise TracingError(f"{function_name(fn)} must return at least one traced tensor, got {result!r:.80}")
    return flat, structure


def _flatten_tree(result: Any, fn: Callable) -> tuple[list[Sym], Any]:
    if isinstance(result, Sym):
        return [result], None
    if result is None:
        return [], (_builder(lambda items: None, "None"), [])
    if isinstance(result, (tuple, list, dict)):
        items = result.values() if isinstance(result, dict) else result
        flat, spec = [], []
        for item in items:
            sub, s = _flatten_tree(item, fn)
            flat += sub
            spec.append((len(sub), s))
        return flat, (_rebuilder(result), spec)
    raise TracingError(f"{function_name(fn)} must return traced tensors (in tuples, lists or dicts), "
                       f"got {type(result).__name__} {result!r:.80}")


def _builder(build: Callable[[list], Any], name: str) -> Callable[[list], Any]:
    build.__name__ = name  # what the structure is called in messages ("a dict", "a tuple")
    return build


def _rebuilder(container: tuple | list | dict) -> Callable[[list], Any]:
    """What makes a container of `container`'s kind from its items, decided once while tracing:
    `unflatten` runs on every call."""
    kind = type(container)
    if kind in (tuple, list):
        return kind
    if isinstance(container, tuple):  # a namedtuple takes its fields as arguments
        return _builder(lambda items: kind._make(items), kind.__name__)
    keys, cls = tuple(container), kind if kind in (dict, OrderedDict) else dict
    return _builder(lambda items: cls(zip(keys, items)), cls.__name__)


def unflatten(arrays: list[np.ndarray], structure: Any) -> Any:
    if structure is None:
        return arrays[0]
    build, spec = structure
    out, i = [], 0
    for count, s in spec:
        out.append(unflatten(arrays[i:i + count], s))
        i += count
    return build(out)
