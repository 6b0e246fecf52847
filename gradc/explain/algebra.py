"""Formulas as trees (`Expr`) kept in one normal form, so that equal math compares equal.

The smart constructors (`add`, `mul`, `transpose`, `reduce`, `bcast`) normalise as they build;
`rewrite` applies the recognisers that give autodiff's primitives their textbook names; `evaluate`
computes any tree with numpy, which is what lets an explanation check itself against the graph.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np

from ..ir import OPS
from ..ir.types import Shape, broadcast_shapes


# --- the expression tree -----------------------------------------------------------------------------

class Expr:
    """A tensor-valued formula. Nodes are frozen dataclasses, so equal formulas compare equal."""

    shape: Shape


@dataclass(frozen=True)
class Leaf(Expr):
    name: str
    shape: Shape
    role: str
    """input, forward (a named intermediate), loss, or adjoint (∂L/∂name)."""


@dataclass(frozen=True)
class Num(Expr):
    value: float
    shape: Shape = ()


@dataclass(frozen=True)
class Size(Expr):
    """The product of some dims (the count a mean divides by); symbolic dims make it a letter."""

    dims: tuple
    shape: Shape = ()


@dataclass(frozen=True, eq=False)
class Sum(Expr):
    terms: tuple

    # a + b equals b + a: terms are unique after `add`, so a frozenset is the canonical form
    def __eq__(self, other: object) -> bool:
        return isinstance(other, Sum) and frozenset(self.terms) == frozenset(other.terms)

    def __hash__(self) -> int:
        return hash(("Sum", frozenset(self.terms)))

    @property
    def shape(self) -> Shape:
        return broadcast_shapes(*(t.shape for t in self.terms))


@dataclass(frozen=True, eq=False)
class Prod(Expr):
    """coef · Π factorᵖ, elementwise; p = -1 is division."""

    coef: float
    factors: tuple  # of (Expr, power)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Prod) and self.coef == other.coef and \
            frozenset(self.factors) == frozenset(other.factors)

    def __hash__(self) -> int:
        return hash(("Prod", self.coef, frozenset(self.factors)))

    @property
    def shape(self) -> Shape:
        return broadcast_shapes(*(f.shape for f, _ in self.factors))


@dataclass(frozen=True)
class MatMul(Expr):
    a: Expr
    b: Expr

    @property
    def shape(self) -> Shape:
        return (self.a.shape[0], self.b.shape[1])


@dataclass(frozen=True)
class Transpose(Expr):
    x: Expr
    perm: tuple

    @property
    def shape(self) -> Shape:
        return tuple(self.x.shape[p] for p in self.perm)


@dataclass(frozen=True)
class Fn(Expr):
    """An elementwise function (σ, tanh, 𝟙(a > b), ...), softmax, or any other registered op."""

    name: str
    args: tuple
    attrs: tuple = ()
    out_shape: Shape | None = None

    @property
    def shape(self) -> Shape:
        return self.out_shape if self.out_shape is not None else \
            broadcast_shapes(*(a.shape for a in self.args))


@dataclass(frozen=True)
class Reduce(Expr):
    op: str  # sum or max
    x: Expr
    axes: tuple
    keepdims: bool

    @property
    def shape(self) -> Shape:
        if self.keepdims:
            return tuple(1 if a in self.axes else d for a, d in enumerate(self.x.shape))
        return tuple(d for a, d in enumerate(self.x.shape) if a not in self.axes)


@dataclass(frozen=True)
class Bcast(Expr):
    """Operand axis i goes to axis dims[i]; rendered implicitly, as numpy broadcasting reads."""

    x: Expr
    shape: Shape
    dims: tuple


@dataclass(frozen=True)
class Reshape(Expr):
    x: Expr
    shape: Shape


# --- smart constructors: every tree they build is in the one normal form ----------------------------

def _aligned(x_rank: int, shape: Shape, dims: tuple) -> bool:
    return tuple(dims) == tuple(range(len(shape) - x_rank, len(shape)))


def bcast(x: Expr, shape: Shape, dims: tuple | None = None) -> Expr:
    shape = tuple(shape)
    dims = tuple(range(len(shape) - len(x.shape), len(shape))) if dims is None else tuple(dims)
    if x.shape == shape and dims == tuple(range(len(shape))):
        return x
    if isinstance(x, Bcast):
        return bcast(x.x, shape, tuple(dims[d] for d in x.dims))
    return Bcast(x, shape, dims)


def strip(x: Expr) -> Expr:
    """Drop broadcasts that numpy broadcasting in an elementwise op would do anyway."""
    while isinstance(x, Bcast) and (x.x.shape == () or _aligned(len(x.x.shape), x.shape, x.dims)):
        x = x.x
    return x


def split_coefficient(t: Expr) -> tuple[float, Expr]:
    """A term as (numeric coefficient, the rest); numbers have the rest Num(1)."""
    if isinstance(t, Num):
        return t.value, Num(1.0)
    if isinstance(t, Prod):
        return t.coef, mul(*t.factors)
    return 1.0, t


def is_constant(x: Expr) -> bool:
    return isinstance(x, (Num, Size))


def mul(*items: Any, coef: float = 1.0) -> Expr:
    """Elementwise product of Exprs or (Expr, power) pairs; merges equal factors into powers."""
    factors: dict[Expr, float] = {}
    for item in items:
        x, p = item if isinstance(item, tuple) else (item, 1.0)
        x = strip(x)
        if isinstance(x, Num):
            coef *= x.value ** p
        elif isinstance(x, Prod):
            coef *= x.coef ** p
            for f, q in x.factors:
                factors[f] = factors.get(f, 0.0) + q * p
        else:
            factors[x] = factors.get(x, 0.0) + p
    factors = {f: p for f, p in factors.items() if p != 0}
    if coef == 0 or not factors:
        return Num(coef)
    if coef == 1 and len(factors) == 1 and next(iter(factors.values())) == 1:
        return next(iter(factors))
    return Prod(coef, tuple(factors.items()))


def add(*terms: Expr) -> Expr:
    """A sum with like terms combined, positive terms first, and common constant factors pulled out."""
    coefs: dict[Expr, float] = {}
    for t in map(strip, terms):
        for u in (t.terms if isinstance(t, Sum) else (t,)):
            c, rest = split_coefficient(u)
            coefs[rest] = coefs.get(rest, 0.0) + c
    kept = [mul(rest, coef=c) for rest, c in coefs.items() if c != 0]
    kept.sort(key=lambda t: split_coefficient(t)[0] < 0)  # stable: graph order within each sign
    if not kept:
        return Num(0.0)
    return kept[0] if len(kept) == 1 else _factor(kept)


def _factor(terms: list[Expr]) -> Expr:
    """a/N + b/N -> (a + b)/N: pull out constant factors and a coefficient that every term shares."""
    def constants(t: Expr) -> dict[Expr, float]:
        return {f: p for f, p in t.factors if is_constant(f)} if isinstance(t, Prod) else {}
    common = constants(terms[0])
    for t in terms[1:]:
        other = constants(t)
        common = {f: p for f, p in common.items() if other.get(f) == p}
    magnitude = abs(split_coefficient(terms[0])[0])
    shared = magnitude if all(abs(split_coefficient(t)[0]) == magnitude for t in terms) else 1.0
    if not common and shared == 1.0:
        return Sum(tuple(terms))
    inner = [mul(t, *((f, -p) for f, p in common.items()), coef=1 / shared) for t in terms]
    return mul(add(*inner), *common.items(), coef=shared)


def transpose(x: Expr, perm: tuple) -> Expr:
    perm = tuple(perm)
    if perm == tuple(range(len(perm))) or is_constant(x):
        return x
    if isinstance(x, Transpose):
        return transpose(x.x, tuple(x.perm[p] for p in perm))
    if isinstance(x, MatMul):  # (a b)ᵀ = bᵀ aᵀ
        return MatMul(transpose(x.b, (1, 0)), transpose(x.a, (1, 0)))
    if isinstance(x, Bcast) and x.x.shape == ():
        return bcast(x.x, tuple(x.shape[p] for p in perm), ())
    if isinstance(x, Reshape) and len(x.x.shape) == 1 and len(perm) == 2 and 1 in x.shape:
        return Reshape(x.x, x.shape[::-1])  # a row vector's transpose is the column
    return Transpose(x, perm)


def reduce(op: str, x: Expr, axes: tuple, keepdims: bool) -> Expr:
    axes = tuple(axes)
    if not axes:
        return x
    if op == "sum" and isinstance(x, Prod) and any(is_constant(f) for f, _ in x.factors):
        # Σ (c X) = c Σ X for a constant c, so coefficients collect outside the sums
        constants = [(f, p) for f, p in x.factors if is_constant(f)]
        rest = mul(*((f, p) for f, p in x.factors if not is_constant(f)))
        rest = bcast(rest, x.shape) if rest.shape != x.shape else rest
        return mul(reduce(op, rest, axes, keepdims), *constants, coef=x.coef)
    if op == "sum" and isinstance(x, Prod) and x.coef != 1:
        return mul(reduce(op, mul(*x.factors), axes, keepdims), coef=x.coef)
    if op == "sum" and isinstance(x, Reduce) and x.op == "sum" and not x.keepdims and not keepdims:
        kept = [a for a in range(len(x.x.shape)) if a not in x.axes]
        return reduce("sum", x.x, tuple(sorted(x.axes + tuple(kept[a] for a in axes))), False)
    return Reduce(op, x, axes, keepdims)


# --- walking and rewriting trees -----------------------------------------------------------------

def _children(e: Expr) -> list[Expr]:
    if isinstance(e, Sum):
        return list(e.terms)
    if isinstance(e, Prod):
        return [f for f, _ in e.factors]
    if isinstance(e, MatMul):
        return [e.a, e.b]
    if isinstance(e, Fn):
        return list(e.args)
    if isinstance(e, (Transpose, Reduce, Bcast, Reshape)):
        return [e.x]
    return []


def _rebuild(e: Expr, kids: list[Expr]) -> Expr:
    if isinstance(e, Sum):
        return add(*kids)
    if isinstance(e, Prod):
        return mul(*((k, p) for k, (_, p) in zip(kids, e.factors)), coef=e.coef)
    if isinstance(e, MatMul):
        return MatMul(*kids)
    if isinstance(e, Fn):
        return Fn(e.name, tuple(kids), e.attrs, e.out_shape)
    if isinstance(e, Transpose):
        return transpose(kids[0], e.perm)
    if isinstance(e, Reduce):
        return reduce(e.op, kids[0], e.axes, e.keepdims)
    if isinstance(e, Bcast):
        return bcast(kids[0], e.shape, e.dims)
    if isinstance(e, Reshape):
        return Reshape(kids[0], e.shape)
    return e


def walk(e: Expr):
    yield e
    for k in _children(e):
        yield from walk(k)


def node_count(e: Expr) -> int:
    return sum(1 for _ in walk(e))


def substitute(e: Expr, target: Expr, leaf: Leaf) -> Expr:
    if e == target:
        return leaf
    kids = _children(e)
    new = [substitute(k, target, leaf) for k in kids]
    return _rebuild(e, new) if new != kids else e


def contains(e: Expr, leaf: Leaf) -> bool:
    return any(x == leaf for x in walk(e))


def rewrite(e: Expr, rules: Sequence[Callable[[Expr], Expr | None]]) -> Expr:
    """Apply `rules` bottom-up until none fires."""
    kids = _children(e)
    if kids:
        new = [rewrite(k, rules) for k in kids]
        if new != kids:
            e = _rebuild(e, new)
    for rule in rules:
        out = rule(e)
        if out is not None and out != e:
            return rewrite(out, rules)
    return e


# --- recognisers: textbook names for patterns that autodiff writes out in primitives ----------------

def _row_reduce(e: Expr, op: str) -> tuple[Expr, int] | None:
    e = strip(e)
    if isinstance(e, Reduce) and e.op == op and e.keepdims and len(e.axes) == 1:
        return e.x, e.axes[0]
    return None


def _unshift(a: Expr, axis: int) -> Expr:
    """X − max(X) -> X: softmax and log-softmax do not change under the stabilising shift."""
    if isinstance(a, Sum):
        for t in a.terms:
            c, rest = split_coefficient(t)
            found = _row_reduce(rest, "max")
            if c == -1 and found and found[1] == axis:
                others = [u for u in a.terms if u is not t]
                if add(*others) == found[0]:
                    return found[0]
    return a


def softmax_rule(e: Expr) -> Expr | None:
    """exp(a) / Σ exp(a) along one axis -> softmax(a)."""
    if not isinstance(e, Prod):
        return None
    for f, p in e.factors:
        for g, q in e.factors:
            found = _row_reduce(g, "sum")
            if p == 1 and q == -1 and isinstance(f, Fn) and f.name == "exp" and found and found[0] == f:
                axis = found[1]
                sm = Fn("softmax", (_unshift(f.args[0], axis),), (("axis", axis),))
                rest = [(h, r) for h, r in e.factors if h is not f and h is not g]
                return mul(sm, *rest, coef=e.coef)
    return None


def log_softmax_rule(e: Expr) -> Expr | None:
    """a − log Σ exp(a) along one axis -> log softmax(a)."""
    if not isinstance(e, Sum):
        return None
    for t in e.terms:
        c, rest = split_coefficient(t)
        if c != -1 or not (isinstance(rest, Fn) and rest.name == "log"):
            continue
        found = _row_reduce(rest.args[0], "sum")
        if not found or not (isinstance(found[0], Fn) and found[0].name == "exp"):
            continue
        a, axis = found[0].args[0], found[1]
        others = [u for u in e.terms if u is not t]
        a_terms = list(a.terms) if isinstance(a, Sum) else [a]
        if all(u in others for u in a_terms):
            remaining = [u for u in others if u not in a_terms]
            return add(Fn("log_softmax", (_unshift(a, axis),), (("axis", axis),)), *remaining)
    return None


@dataclass(frozen=True)
class Assumption:
    """A condition on an input under which a formula takes its textbook form."""

    input: str
    axis: int
    text: str

    def prepare(self, array: np.ndarray) -> np.ndarray:
        """Random data that satisfies it: positive entries normalised to sum to 1 along `axis`."""
        positive = np.abs(array) + 0.1
        return (positive / positive.sum(axis=self.axis, keepdims=True)).astype(array.dtype)


def cross_entropy_rule(found: list[Assumption]) -> Callable[[Expr], Expr | None]:
    """softmax(z) ⊙ Σⱼ tⱼ − t -> softmax(z) − t, assuming each row of the target t sums to 1."""
    def rule(e: Expr) -> Expr | None:
        if not isinstance(e, Sum):
            return None
        for t in e.terms:
            c, rest = split_coefficient(t)
            if not isinstance(rest, Prod) or len(rest.factors) != 2:
                continue
            (f, p), (g, q) = rest.factors
            sm, total = (f, g) if isinstance(f, Fn) and f.name == "softmax" else (g, f)
            row = _row_reduce(total, "sum")
            if p != 1 or q != 1 or not (isinstance(sm, Fn) and sm.name == "softmax") or not row:
                continue
            target, axis = row
            if axis != dict(sm.attrs)["axis"] or not isinstance(target, Leaf) or \
                    mul(target, coef=-c) not in e.terms:
                continue
            found.append(Assumption(target.name, axis, f"each row of {target.name} sums to 1 "
                                                       "(one-hot or probability targets)"))
            return add(*[mul(sm, coef=c) if u is t else u for u in e.terms])
        return None
    return rule


EXACT_RULES = (softmax_rule, log_softmax_rule)


# --- numeric evaluation of a tree: what keeps the displayed formulas honest -------------------------

def concrete_shape(shape: Shape, dims: dict[str, int]) -> tuple[int, ...]:
    return tuple(dims[d] if isinstance(d, str) else d for d in shape)


def evaluate(e: Expr, env: dict[Leaf, np.ndarray], dims: dict[str, int]) -> np.ndarray:
    """The value of `e` in float64, given the leaves' values and the symbols' sizes."""
    ev = lambda x: evaluate(x, env, dims)
    if isinstance(e, Leaf):
        return env[e]
    if isinstance(e, Num):
        return np.array(e.value)
    if isinstance(e, Size):
        return np.array(float(np.prod(concrete_shape(e.dims, dims))))
    if isinstance(e, Sum):
        return sum((ev(t) for t in e.terms), np.array(0.0))
    if isinstance(e, Prod):
        out = np.array(e.coef)
        for f, p in e.factors:
            v = ev(f)
            out = out * (v if p == 1 else 1 / v if p == -1 else v ** p)
        return out
    if isinstance(e, MatMul):
        return ev(e.a) @ ev(e.b)
    if isinstance(e, Transpose):
        return np.transpose(ev(e.x), e.perm)
    if isinstance(e, Reduce):
        return (np.sum if e.op == "sum" else np.max)(ev(e.x), axis=e.axes, keepdims=e.keepdims)
    if isinstance(e, Bcast):
        x, full = ev(e.x), [1] * len(e.shape)
        for i, d in enumerate(e.dims):
            full[d] = x.shape[i]
        return np.broadcast_to(x.reshape(full), concrete_shape(e.shape, dims))
    if isinstance(e, Reshape):
        return ev(e.x).reshape(concrete_shape(e.shape, dims))
    if isinstance(e, Fn):
        args, attrs = [ev(a) for a in e.args], dict(e.attrs)
        if e.name in ("softmax", "log_softmax"):
            shifted = args[0] - args[0].max(axis=attrs["axis"], keepdims=True)
            log_total = np.log(np.exp(shifted).sum(axis=attrs["axis"], keepdims=True))
            return np.exp(shifted - log_total) if e.name == "softmax" else shifted - log_total
        with np.errstate(all="ignore"):
            return np.asarray(OPS[e.name].reference(*args, dims_env=dims, **attrs), np.float64)
    raise TypeError(f"cannot evaluate {type(e).__name__}")

