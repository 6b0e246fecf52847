"""Tensor types: a dtype plus a shape whose dims are ints or symbols bound at call time."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Union

import numpy as np

Dim = Union[int, str]
Shape = tuple[Dim, ...]

NUMPY_DTYPES: dict[str, np.dtype] = {"f32": np.dtype(np.float32), "f64": np.dtype(np.float64)}
DTYPE_NAMES: dict[np.dtype, str] = {v: k for k, v in NUMPY_DTYPES.items()}


def rounded_to(value: float, dtype: str) -> float:
    """`value` as a `dtype` number holds it (1e300 is inf in f32), as numpy's `dtype.type(value)`."""
    with np.errstate(over="ignore"):
        return float(NUMPY_DTYPES[dtype].type(value))


class ShapeError(ValueError):
    """Operands whose shapes or dtypes an op cannot accept."""


@dataclass(frozen=True)
class TensorType:
    dtype: str
    shape: Shape

    def __post_init__(self) -> None:
        if self.dtype not in NUMPY_DTYPES:
            raise ShapeError(f"unsupported dtype {self.dtype!r}; expected one of {list(NUMPY_DTYPES)}")
        for d in self.shape:
            if isinstance(d, bool) or not isinstance(d, (int, str)) or (isinstance(d, int) and d < 0):
                raise ShapeError(f"bad dim {d!r} in shape {self.shape}: dims are ints >= 0 or names")

    @property
    def rank(self) -> int:
        return len(self.shape)

    @property
    def np_dtype(self) -> np.dtype:
        return NUMPY_DTYPES[self.dtype]

    @property
    def symbols(self) -> list[str]:
        return [d for d in self.shape if isinstance(d, str)]

    def with_shape(self, shape: Shape) -> TensorType:
        return TensorType(self.dtype, tuple(shape))

    def __str__(self) -> str:
        return f"{self.dtype}[{','.join(str(d) for d in self.shape)}]"


def broadcast_shapes(*shapes: Shape) -> Shape:
    """numpy broadcasting, where a symbol matches only itself or 1."""
    rank = max((len(s) for s in shapes), default=0)
    out: list[Dim] = []
    for axis in range(rank):
        dims = {s[axis - rank + len(s)] for s in shapes if axis - rank + len(s) >= 0}
        dims.discard(1)
        if len(dims) > 1:
            raise ShapeError(f"shapes {', '.join(format_shape(s) for s in shapes)} do not broadcast")
        out.append(dims.pop() if dims else 1)
    return tuple(out)


def format_shape(shape: Shape) -> str:
    return "(" + ", ".join(str(d) for d in shape) + ("," if len(shape) == 1 else "") + ")"


def num_elements(shape: Shape) -> tuple[int, list[str]]:
    """The element count as (product of the int dims, symbols to multiply in)."""
    static = 1
    symbols = []
    for d in shape:
        if isinstance(d, str):
            symbols.append(d)
        else:
            static *= d
    return static, symbols


def resolve_shape(shape: Shape, dims: dict[str, int]) -> tuple[int, ...]:
    return tuple(dims[d] if isinstance(d, str) else d for d in shape)


def normalize_axes(axes: int | tuple[int, ...] | list[int] | None, rank: int) -> tuple[int, ...]:
    if axes is None:
        return tuple(range(rank))
    if isinstance(axes, int):
        axes = (axes,)
    out = []
    for a in axes:
        if not -rank <= a < rank:
            raise ShapeError(f"axis {a} is out of range for a tensor of rank {rank}")
        out.append(a % rank)
    if len(set(out)) != len(out):
        raise ShapeError(f"repeated axis in {tuple(axes)}")
    return tuple(sorted(out))


def squeeze_pairs(src: Shape, dst: Shape) -> dict[int, int] | None:
    """For a reshape that only adds or drops size-1 axes: src axis -> dst axis for the other axes."""
    src_axes = [a for a, d in enumerate(src) if d != 1]
    dst_axes = [a for a, d in enumerate(dst) if d != 1]
    if [src[a] for a in src_axes] != [dst[a] for a in dst_axes]:
        return None
    return dict(zip(src_axes, dst_axes))
