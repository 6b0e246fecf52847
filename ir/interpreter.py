"""The reference interpreter: runs any graph with each op's numpy reference. The test oracle."""
from __future__ import annotations

from typing import Sequence

import numpy as np

from .graph import Graph, Value
from .types import ShapeError


def bind_dims(graph: Graph, arrays: Sequence[np.ndarray]) -> dict[str, int]:
    """Symbol values from the input shapes, checking every input against its declared type."""
    if len(arrays) != len(graph.inputs):
        raise TypeError(f"{graph.name} takes {len(graph.inputs)} arguments, got {len(arrays)}")
    dims: dict[str, int] = {}
    for value, array in zip(graph.inputs, arrays):
        t = value.type
        if array.dtype != t.np_dtype or array.ndim != t.rank:
            raise ShapeError(f"argument {value.name!r}: expected {t}, got {array.dtype}{list(array.shape)}")
        for d, n in zip(t.shape, array.shape):
            if dims.setdefault(d, n) != n if isinstance(d, str) else d != n:
                raise ShapeError(f"argument {value.name!r}: expected {t}, got shape {list(array.shape)}"
                                 + (f" (dim {d} is already {dims[d]})" if isinstance(d, str) else ""))
    return dims


def interpret(graph: Graph, *arrays: np.ndarray) -> list[np.ndarray]:
    """Evaluate `graph` on numpy arrays; returns one array per graph output."""
    arrays = tuple(np.asarray(a) for a in arrays)
    dims = bind_dims(graph, arrays)
    env: dict[Value, np.ndarray] = dict(zip(graph.inputs, arrays))
    with np.errstate(all="ignore"):
        for op in graph.ops:
            result = op.opdef.reference(*(env[v] for v in op.operands), dims_env=dims, **op.attrs)
            env[op.result] = np.asarray(result, dtype=op.result.type.np_dtype)
    return [env[v].copy() for v in graph.outputs]
