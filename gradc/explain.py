"""The gradient as matrix calculus: the adjoint graph read back as the formulas a person would write.

`explain(lowered)` walks a compiled graph: every named forward value (`f = x Uᵀ`) and every
adjoint value that autodiff named after a forward value (`∂L/∂h`), plus each requested gradient,
becomes an equation; the ops between them are inlined into one expression tree (`Expr`), which
algebraic normalisation and a few recognisers (softmax, log-softmax, the softmax-cross-entropy
gradient) bring into textbook form. Nothing is written per network: the formulas are whatever the
graph computes. Because each tree also evaluates with numpy, `Explanation.verify` compares every
displayed line with the graph's own value, so the math on screen cannot drift from the code.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any, Callable, Sequence

import networkx as nx
import numpy as np

from .ir import OPS, Graph, Value
from .ir.interpreter import bind_dims, interpret
from .ir.text import value_names
from .ir.types import Shape, broadcast_shapes


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


# --- algebra: smart constructors keep every tree in one normal form ---------------------------------

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


def _split(t: Expr) -> tuple[float, Expr]:
    """A term as (numeric coefficient, the rest); numbers have the rest Num(1)."""
    if isinstance(t, Num):
        return t.value, Num(1.0)
    if isinstance(t, Prod):
        return t.coef, mul(*t.factors)
    return 1.0, t


def _is_constant(x: Expr) -> bool:
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
            c, rest = _split(u)
            coefs[rest] = coefs.get(rest, 0.0) + c
    kept = [mul(rest, coef=c) for rest, c in coefs.items() if c != 0]
    kept.sort(key=lambda t: _split(t)[0] < 0)  # stable: graph order within each sign
    if not kept:
        return Num(0.0)
    return kept[0] if len(kept) == 1 else _factor(kept)


def _factor(terms: list[Expr]) -> Expr:
    """a/N + b/N -> (a + b)/N: pull out constant factors and a coefficient that every term shares."""
    def constants(t: Expr) -> dict[Expr, float]:
        return {f: p for f, p in t.factors if _is_constant(f)} if isinstance(t, Prod) else {}
    common = constants(terms[0])
    for t in terms[1:]:
        other = constants(t)
        common = {f: p for f, p in common.items() if other.get(f) == p}
    magnitude = abs(_split(terms[0])[0])
    shared = magnitude if all(abs(_split(t)[0]) == magnitude for t in terms) else 1.0
    if not common and shared == 1.0:
        return Sum(tuple(terms))
    inner = [mul(t, *((f, -p) for f, p in common.items()), coef=1 / shared) for t in terms]
    return mul(add(*inner), *common.items(), coef=shared)


def transpose(x: Expr, perm: tuple) -> Expr:
    perm = tuple(perm)
    if perm == tuple(range(len(perm))) or _is_constant(x):
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
    if op == "sum" and isinstance(x, Prod) and any(_is_constant(f) for f, _ in x.factors):
        # Σ (c X) = c Σ X for a constant c, so coefficients collect outside the sums
        constants = [(f, p) for f, p in x.factors if _is_constant(f)]
        rest = mul(*((f, p) for f, p in x.factors if not _is_constant(f)))
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


def _walk(e: Expr):
    yield e
    for k in _children(e):
        yield from _walk(k)


def _size(e: Expr) -> int:
    return sum(1 for _ in _walk(e))


def _substitute(e: Expr, target: Expr, leaf: Leaf) -> Expr:
    if e == target:
        return leaf
    kids = _children(e)
    new = [_substitute(k, target, leaf) for k in kids]
    return _rebuild(e, new) if new != kids else e


def _uses(e: Expr, leaf: Leaf) -> bool:
    return any(x == leaf for x in _walk(e))


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
            c, rest = _split(t)
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
        c, rest = _split(t)
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
            c, rest = _split(t)
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

def _resolve(shape: Shape, dims: dict[str, int]) -> tuple[int, ...]:
    return tuple(dims[d] if isinstance(d, str) else d for d in shape)


def evaluate(e: Expr, env: dict[Leaf, np.ndarray], dims: dict[str, int]) -> np.ndarray:
    """The value of `e` in float64, given the leaves' values and the symbols' sizes."""
    ev = lambda x: evaluate(x, env, dims)
    if isinstance(e, Leaf):
        return env[e]
    if isinstance(e, Num):
        return np.array(e.value)
    if isinstance(e, Size):
        return np.array(float(np.prod(_resolve(e.dims, dims))))
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
        return np.broadcast_to(x.reshape(full), _resolve(e.shape, dims))
    if isinstance(e, Reshape):
        return ev(e.x).reshape(_resolve(e.shape, dims))
    if isinstance(e, Fn):
        args, attrs = [ev(a) for a in e.args], dict(e.attrs)
        if e.name in ("softmax", "log_softmax"):
            shifted = args[0] - args[0].max(axis=attrs["axis"], keepdims=True)
            log_total = np.log(np.exp(shifted).sum(axis=attrs["axis"], keepdims=True))
            return np.exp(shifted - log_total) if e.name == "softmax" else shifted - log_total
        with np.errstate(all="ignore"):
            return np.asarray(OPS[e.name].reference(*args, dims_env=dims, **attrs), np.float64)
    raise TypeError(f"cannot evaluate {type(e).__name__}")


# --- reading a graph into trees ---------------------------------------------------------------------

_ELEMENTWISE_ALGEBRA: dict[str, Callable[..., Expr]] = {
    "add": lambda a, b, **_: add(a, b),
    "sub": lambda a, b, **_: add(a, mul(b, coef=-1.0)),
    "mul": lambda a, b, **_: mul(a, b),
    "div": lambda a, b, **_: mul(a, (b, -1.0)),
    "neg": lambda a, **_: mul(a, coef=-1.0),
    "pow": lambda a, exponent, **_: mul((a, float(exponent))),
    "stop_gradient": lambda a, **_: a,  # same value; only the derivative differs
}


class _Reader:
    """Turns graph values into trees, stopping at `leaves` (inputs, named values, cut cotangents).

    A value read more than once whose formula grew past `spill_size` nodes becomes a leaf of its
    own, named as in the printed IR (`spilled`): inlining it everywhere would make a loop like
    `x = tanh(x) * x` double the formula at every turn."""

    def __init__(self, leaves: dict[Value, Leaf], graph: Graph, primal: set[Value],
                 spill_size: int = 40) -> None:
        self.leaves = leaves
        self.memo: dict[Value, Expr] = {}
        self.readers = {v: len(ops) for v, ops in graph.users().items()}
        self.printed = value_names(graph)
        self.primal, self.spill_size = primal, spill_size
        self.spilled: dict[Value, Leaf] = {}

    def operand(self, v: Value) -> Expr:
        if v in self.leaves:
            return self.leaves[v]
        if v not in self.memo:
            e = self.definition(v)
            if self.readers.get(v, 0) > 1 and _size(e) > self.spill_size:
                role = "forward" if v in self.primal else "delta"
                e = self.leaves[v] = self.spilled[v] = Leaf(self.printed[v], v.type.shape, role)
            self.memo[v] = e
        return self.memo[v]

    def definition(self, v: Value) -> Expr:
        op = v.producer
        if op is None:
            raise ValueError(f"graph input {v.name!r} has no leaf")
        xs, a = [self.operand(o) for o in op.operands], op.attrs
        if op.name in _ELEMENTWISE_ALGEBRA:
            e = _ELEMENTWISE_ALGEBRA[op.name](*xs, **a)
        elif op.name == "const":
            e = Num(float(a["value"]))
        elif op.name == "size":
            dims = tuple(a["dims"])
            e = Num(float(math.prod(dims))) if all(isinstance(d, int) for d in dims) else Size(dims)
        elif op.name in ("reduce_sum", "reduce_max"):
            e = reduce(op.name[len("reduce_"):], xs[0], tuple(a["axes"]), a["keepdims"])
        elif op.name == "broadcast":
            e = bcast(xs[0], tuple(a["shape"]), tuple(a["dims"]))
        elif op.name == "transpose":
            e = transpose(xs[0], tuple(a["perm"]))
        elif op.name == "reshape":
            x, shape = xs[0], tuple(a["shape"])
            if isinstance(x, Bcast) and x.x.shape == ():
                x = x.x
            e = x if shape == x.shape else bcast(x, shape, ()) if x.shape == () else Reshape(x, shape)
        elif op.name == "matmul":
            e = MatMul(transpose(xs[0], (1, 0)) if a["transpose_a"] else xs[0],
                       transpose(xs[1], (1, 0)) if a["transpose_b"] else xs[1])
        elif op.opdef.kind == "elementwise":
            e = Fn(op.name, tuple(strip(x) for x in xs), tuple(sorted(a.items())))
        else:  # an op this file has no notation for still evaluates and prints generically
            e = Fn(op.name, tuple(xs), tuple(sorted(a.items())), v.type.shape)
        return e if e.shape == v.type.shape else bcast(e, v.type.shape)


# --- names for repeated subexpressions -----------------------------------------------------------

def _name_repeats(forward: list[Equation], backward: list[Equation], taken: set[str],
                  min_size: int = 6) -> tuple[list[Equation], list[Equation]]:
    """Give a big subexpression that occurs more than once a name of its own, as a textbook does:
    u₁, u₂ for forward values the source left unnamed, δ₁, δ₂ for backward ones."""
    extra: list[Equation] = []
    while True:
        counts: dict[Expr, int] = {}
        for eq in forward + backward + extra:
            for node in _walk(eq.expr):
                if not isinstance(node, (Leaf, Num, Size, Bcast, Reshape, Transpose)):
                    counts[node] = counts.get(node, 0) + 1
        repeated = [n for n, c in counts.items() if c >= 2 and _size(n) >= min_size]
        if not repeated:
            break
        best = max(repeated, key=_size)  # largest first, so the smaller repeats inside it stay visible
        backward_value = any(isinstance(x, Leaf) and x.role in ("adjoint", "delta") for x in _walk(best))
        leaf = Leaf(f"\0{len(extra)}", best.shape, "delta" if backward_value else "forward")  # named below
        for eq in forward + backward + extra:
            eq.expr = _substitute(eq.expr, best, leaf)
        extra.append(Equation(leaf, best, None, leaf.name))

    def place(block: list[Equation], pool: list[Equation]) -> list[Equation]:
        """`block` in order, each auxiliary from `pool` just before its first reader."""
        out: list[Equation] = []

        def emit(eq: Equation) -> None:
            if any(eq is o for o in out):
                return
            pool[:] = [a for a in pool if a is not eq]
            for aux in [a for a in pool if _uses(eq.expr, a.lhs)]:
                emit(aux)
            out.append(eq)
        for eq in block:
            emit(eq)
        return out
    pool = [e for e in extra if e.lhs.role == "forward"]
    body = place(forward[:-1], pool)
    # forward names that only the backward pass reads come just before the loss
    forward = body + place(list(pool), pool) + place(forward[-1:], pool)
    backward = place(backward, [e for e in extra if e.lhs.role == "delta"])
    _name_in_reading_order(forward + backward, extra, taken)
    return forward, backward


def _name_in_reading_order(equations: list[Equation], extra: list[Equation], taken: set[str]) -> None:
    counters = {"forward": 0, "delta": 0}
    for aux in [e for e in equations if any(e is x for x in extra)]:
        old = aux.lhs
        while True:
            counters[old.role] += 1
            name = ("u" if old.role == "forward" else "δ") + str(counters[old.role])
            if name not in taken:
                break
        new = Leaf(name, old.shape, old.role)
        for eq in equations:
            eq.expr = _substitute(eq.expr, old, new)
        aux.lhs, aux.key = new, name


# --- the explanation ---------------------------------------------------------------------------------

@dataclass
class Equation:
    lhs: Leaf
    expr: Expr
    value: Value | None
    """The graph value the formula computes (None for an auxiliary name explain introduced)."""
    key: str
    """The value's name in the printed IR (`%dV`), also the key of `Explanation.evaluate`."""
    loc: str = ""
    general: Expr | None = None
    """The formula before an assumption simplified it (None when no assumption was used)."""


@dataclass
class Explanation:
    """Forward and gradient formulas of one compiled function; str() is Unicode, `latex()` LaTeX."""

    function: str
    stage: str
    graph: Graph
    inputs: list[Leaf]
    forward: list[Equation]
    backward: list[Equation]
    gradients: dict[str, str]
    """Input name -> key of its gradient's equation."""
    assumptions: list[Assumption] = field(default_factory=list)

    @property
    def equations(self) -> list[Equation]:
        return self.forward + self.backward

    def evaluate(self, *arrays: np.ndarray) -> dict[str, np.ndarray]:
        """Every equation's value computed from its formula alone, in float64, keyed by IR name."""
        typed = [np.asarray(a, v.type.np_dtype) for a, v in zip(arrays, self.graph.inputs)]
        dims = bind_dims(self.graph, typed)
        env: dict[Leaf, np.ndarray] = {leaf: np.asarray(a, np.float64) for leaf, a in zip(self.inputs, arrays)}
        out = {}
        for eq in self.equations:
            value = np.broadcast_to(evaluate(eq.expr, env, dims), _resolve(eq.lhs.shape, dims))
            env[eq.lhs] = out[eq.key] = value
        return out

    def verify(self, *arrays: np.ndarray) -> dict[str, float]:
        """Each formula's relative error against the graph's value of the same IR value."""
        typed = [np.asarray(a, v.type.np_dtype) for a, v in zip(arrays, self.graph.inputs)]
        checked = [e for e in self.equations if e.value is not None]
        probe = Graph(self.graph.name, self.graph.inputs, self.graph.ops, [e.value for e in checked])
        reference = interpret(probe, *typed)
        mine = self.evaluate(*arrays)
        errors = {}
        for eq, ref in zip(checked, reference):
            ref = np.asarray(ref, np.float64)
            scale = max(float(np.max(np.abs(ref), initial=0.0)), 1e-30)
            errors[eq.key] = float(np.max(np.abs(mine[eq.key] - ref), initial=0.0)) / scale
        return errors

    def example_inputs(self, dims: dict[str, int] | None = None, seed: int = 0) -> list[np.ndarray]:
        """Random inputs of the right shapes that satisfy the explanation's assumptions."""
        from .checking import random_arguments
        arrays = random_arguments([v.type for v in self.graph.inputs], dims, seed)
        for a in self.assumptions:
            i = [leaf.name for leaf in self.inputs].index(a.input)
            arrays[i] = a.prepare(arrays[i])
        return arrays

    def formulas(self, latex: bool = False) -> dict[str, str]:
        """Each equation as rendered: left-hand side -> right-hand side, e.g. '∂L/∂V': '(∂L/∂h)ᵀ g'."""
        return {lhs: rhs for lhs, rhs, _, _ in _lines(self, latex)[0]}

    def text(self, verbose: bool = False) -> str:
        """Unicode formulas with their shapes; `verbose` adds each one's IR value and source line."""
        return _render_text(self, verbose)

    def latex(self) -> str:
        return _render_latex(self)

    def __str__(self) -> str:
        return self.text()

    def _repr_latex_(self) -> str:  # Jupyter shows the formulas typeset
        return "$$" + _latex_block(self) + "$$"


def _infer_wrt(graph: Graph, grads: list[Value]) -> list[str]:
    """Which input each gradient output belongs to: autodiff names it d<input>; else the type decides."""
    names, used = [], set()
    for g in grads:
        candidates = [v for v in graph.inputs if v.type == g.type and v.name not in used]
        by_name = [v for v in candidates if g.name == f"d{v.name}"]
        if not candidates:
            raise ValueError(f"cannot tell which input the gradient output {g.name or g.type} belongs to")
        chosen = (by_name or candidates)[0]
        used.add(chosen.name)
        names.append(chosen.name)
    return names


def explain(lowered: Any, wrt: Sequence[str] | None = None, stage: str | None = None) -> Explanation:
    """Read the forward and gradient formulas out of `lowered` (a `gc.Lowered`).

    `wrt` names the inputs the gradient outputs belong to, in order (found from the graph when
    None); `stage` is the graph stage to read ("optimized" by default, or "grad").
    """
    stage = stage or ("optimized" if "optimized" in lowered.graphs else "grad")
    if stage not in lowered.graphs:
        raise ValueError(f"explain reads a graph stage ({', '.join(lowered.graphs)}), got {stage!r}")
    graph = lowered.graphs[stage]
    n_primal = len(lowered.graphs["traced"].outputs)
    grads = graph.outputs[n_primal:]
    # a stage before autodiff has no gradient outputs: explain its forward formulas only
    wrt = [] if not grads else list(wrt) if wrt is not None else _infer_wrt(graph, grads)
    if len(wrt) != len(grads):
        raise ValueError(f"{len(grads)} gradient outputs but wrt names {len(wrt)} inputs")

    flow = graph.to_networkx()
    primal = set(graph.outputs[:n_primal]).union(*(nx.ancestors(flow, v) for v in graph.outputs[:n_primal]))
    printed = value_names(graph)
    loss = graph.outputs[0]
    leaves: dict[Value, Leaf] = {v: Leaf(v.name, v.type.shape, "input") for v in graph.inputs}
    named: dict[str, Value] = {v.name: v for v in graph.inputs}
    forward_values = []
    for op in graph.ops:
        v = op.result
        if v in primal and (v.name or v is loss):
            role = "loss" if v is loss else "forward"
            leaves[v] = Leaf("L" if v is loss else v.name, v.type.shape, role)
            forward_values.append(v)
            if v.name:
                named[v.name] = v
    # autodiff names the cotangent of a named value x "dx": those become ∂L/∂x
    cuts: dict[Value, Leaf] = {}
    for op in graph.ops:
        v, base = op.result, op.result.name[1:]
        # (the cotangent of the loss itself is the seed 1, not worth an equation)
        if v not in primal and v.name.startswith("d") and base in named and named[base] is not loss \
                and named[base].type == v.type and v not in cuts:
            cuts[v] = Leaf("L" if named[base] is loss else base, v.type.shape, "adjoint")
    gradient_of = {g: name for g, name in zip(grads, wrt)}

    reader = _Reader({**leaves, **cuts}, graph, primal)
    assumptions: list[Assumption] = []
    approximate = EXACT_RULES + (cross_entropy_rule(assumptions),)

    def equation(v: Value, lhs: Leaf) -> Equation:
        exact = rewrite(reader.definition(v), EXACT_RULES)
        before = len(assumptions)
        final = rewrite(exact, approximate)
        general = exact if len(assumptions) > before else None
        return Equation(lhs, final, v, printed[v], v.producer.loc if v.producer else "", general)

    forward = [equation(v, leaves[v]) for v in forward_values]
    backward = []
    for op in graph.ops:
        v = op.result
        if v in cuts and v not in gradient_of:
            backward.append(equation(v, cuts[v]))
    gradients = {}
    for g, name in gradient_of.items():
        lhs = Leaf(name, g.type.shape, "adjoint")
        if g.producer is None:  # the gradient is an input itself
            backward.append(Equation(lhs, leaves[g], g, printed[g]))
        else:
            eq = equation(g, lhs)
            if g in cuts and cuts[g] != lhs:  # also the cotangent of a named value: say so
                backward.append(Equation(cuts[g], eq.expr, g, eq.key, eq.loc, eq.general))
                eq = Equation(lhs, cuts[g], g, eq.key, eq.loc)
            backward.append(eq)
        gradients[name] = printed[g]
    done: set[Value] = set()
    while set(reader.spilled) - done:  # spilled values get equations, which may spill more
        for v in [v for v in reader.spilled if v not in done]:
            done.add(v)
            (forward if v in primal else backward).append(equation(v, reader.spilled[v]))
    order = {op.result: i for i, op in enumerate(graph.ops)}
    forward.sort(key=lambda e: order.get(e.value, -1))
    backward.sort(key=lambda e: order.get(e.value, -1))
    taken = {v.name for v in graph.inputs} | {e.lhs.name for e in forward + backward}
    forward, backward = _name_repeats(forward, backward, taken)
    unique = list(dict.fromkeys(assumptions))
    return Explanation(graph.name, stage, graph, [leaves[v] for v in graph.inputs], forward,
                       backward, gradients, unique)


# --- rendering: one notation, spelled in Unicode or LaTeX --------------------------------------------

_SUBSCRIPT = str.maketrans("0123456789", "₀₁₂₃₄₅₆₇₈₉")


_SUPERSCRIPT = str.maketrans("0123456789-.", "⁰¹²³⁴⁵⁶⁷⁸⁹⁻·")

# Unicode and LaTeX spellings of each elementwise function; {0}, {1} are the arguments


_FUNCTIONS = {
    "sigmoid": ("σ({0})", r"\sigma({0})"), "tanh": ("tanh({0})", r"\tanh({0})"),
    "exp": ("exp({0})", r"\exp({0})"), "log": ("log({0})", r"\log({0})"),
    "sqrt": ("√({0})", r"\sqrt{{{0}}}"), "relu": ("relu({0})", r"\operatorname{{relu}}({0})"),
    "maximum": ("max({0}, {1})", r"\max({0}, {1})"), "gt": ("𝟙({0} > {1})", r"\mathbb{{1}}[{0} > {1}]"),
    "eq": ("𝟙({0} = {1})", r"\mathbb{{1}}[{0} = {1}]"),
    "softmax": ("softmax({0})", r"\operatorname{{softmax}}({0})"),
    "log_softmax": ("log softmax({0})", r"\log\operatorname{{softmax}}({0})"),
}


def shape_text(shape: Shape, latex: bool = False) -> str:
    if not shape:
        return r"\mathbb{R}" if latex else "scalar"
    dims = (r" \times " if latex else "×").join(str(d) for d in shape)
    return rf"\mathbb{{R}}^{{{dims}}}" if latex else dims


def _number(v: float) -> str:
    return str(int(v)) if float(v).is_integer() and abs(v) < 1e15 else f"{v:.6g}"


def _fraction(v: float) -> tuple[int, int] | None:
    """p/q when v is a simple fraction up to float32 rounding (constant folding turns 1/12 into
    0.0833333358): the mean over 12 elements should read 1/12."""
    f = Fraction(v).limit_denominator(1000)
    if f.denominator > 1 and abs(f.numerator) < 1000 and abs(float(f) - v) <= 1e-7 * abs(v):
        return f.numerator, f.denominator
    return None


class _Notation:
    """Renders trees; `kind` of a rendered piece decides where it needs parentheses."""

    def __init__(self, latex: bool, loss: str, sizes: dict[Size, str]) -> None:
        self.latex, self.loss, self.sizes = latex, loss, sizes
        self.minus = "-" if latex else "−"
        self.odot = r" \odot " if latex else " ⊙ "
        self.top = r"^{\top}" if latex else "ᵀ"
        self.one = r"\mathbf{1}" if latex else "1"

    def symbol(self, name: str) -> str:
        m = re.fullmatch(r"([^\W\d]\w*?)_?(\d+)", name)
        base, index = (m.group(1), m.group(2)) if m else (name, "")
        if self.latex:
            base = {"δ": r"\delta"}.get(base, base)
            base = base if len(base) == 1 or base.startswith("\\") else r"\mathrm{" + base.replace("_", r"\_") + "}"
            return base + (f"_{{{index}}}" if index else "")
        return base + index.translate(_SUBSCRIPT)

    def leaf(self, leaf: Leaf) -> str:
        if leaf.role != "adjoint":
            return self.symbol(leaf.name)
        wrt = self.symbol(leaf.name)
        return rf"\frac{{\partial {self.loss}}}{{\partial {wrt}}}" if self.latex else f"∂{self.loss}/∂{wrt}"

    def paren(self, text: str) -> str:
        return rf"\left({text}\right)" if self.latex else f"({text})"

    def wrap(self, e: Expr, allowed: tuple[str, ...]) -> str:
        text, kind = self.render(e)
        return text if kind in allowed else self.paren(text)

    def power(self, e: Expr, p: float) -> str:
        if abs(p) == 0.5:
            inner = self.render(e)[0]
            return rf"\sqrt{{{inner}}}" if self.latex else "√" + self.wrap(e, ("atom",))
        base = self.wrap(e, ("atom",))
        if p == 1:
            return base
        if self.latex:
            return f"{base}^{{{_number(p)}}}"
        return base + (_number(p).translate(_SUPERSCRIPT) if p == int(p) else f"^({_number(p)})")

    def render(self, e: Expr) -> tuple[str, str]:
        """(text, kind); kind is atom, adjoint, power, prod, signed, sum, matmul or reduce."""
        if isinstance(e, Leaf):
            return self.leaf(e), "adjoint" if e.role == "adjoint" else "atom"
        if isinstance(e, Num):
            if _fraction(abs(e.value)):
                return self.prod(Prod(e.value, ()))
            return (self.minus + _number(-e.value), "signed") if e.value < 0 else (_number(e.value), "atom")
        if isinstance(e, Size):
            return self.sizes[e], "atom"
        if isinstance(e, Sum):
            return self.sum(e), "sum"
        if isinstance(e, Prod):
            return self.prod(e)
        if isinstance(e, MatMul):
            return f"{self.operand(e.a)} {self.operand(e.b)}", "matmul"
        if isinstance(e, Transpose):
            if len(e.perm) == 2:
                return self.wrap(e.x, ("atom",)) + self.top, "atom"
            return f"transpose({self.render(e.x)[0]}, {list(e.perm)})", "atom"
        if isinstance(e, Fn):
            return self.function(e), "atom"
        if isinstance(e, Reduce):
            return self.reduction(e)
        if isinstance(e, Bcast):
            if len(e.x.shape) == 1 and len(e.shape) == 2 and e.dims == (0,):  # a column repeated: x 1ᵀ
                return f"{self.wrap(e.x, ('atom', 'matmul'))} {self.one}{self.top}", "matmul"
            return self.render(e.x)
        if isinstance(e, Reshape):
            if [d for d in e.shape if d != 1] == [d for d in e.x.shape if d != 1]:
                # vectors are columns: (n,) -> (n, 1) is x itself, (n,) -> (1, n) is xᵀ
                if len(e.x.shape) == 1 and e.shape == (1,) + e.x.shape:
                    return self.wrap(e.x, ("atom",)) + self.top, "atom"
                return self.render(e.x)
            return f"reshape({self.render(e.x)[0]}, {shape_text(e.shape)})", "atom"
        raise TypeError(type(e).__name__)

    def operand(self, e: Expr) -> str:
        """A matmul operand; a broadcast scalar c is c times the column 1 or the row 1ᵀ of ones."""
        if isinstance(e, Bcast) and e.x.shape == () and len(e.shape) == 2:
            ones = self.one + (self.top if e.shape[0] == 1 else "")
            c = self.wrap(e.x, ("atom",))
            return ones if c == "1" else f"{c} {ones}"
        return self.wrap(e, ("atom", "matmul"))

    def sum(self, e: Sum) -> str:
        out = ""
        for i, t in enumerate(e.terms):
            c, _ = _split(t)
            text = self.render(mul(t, coef=-1.0) if c < 0 else t)[0]
            out += (self.minus if c < 0 else "") + text if i == 0 else \
                (f" {self.minus} " if c < 0 else " + ") + text
        return out

    def coefficient(self, e: Prod) -> tuple[str, str]:
        """The constant part of a product as (numerator, denominator): 2/N is ("2", "N")."""
        fraction = _fraction(abs(e.coef))
        num = [] if abs(e.coef) == 1 else [str(fraction[0])] if fraction else [_number(abs(e.coef))]
        den = [str(fraction[1])] if fraction else []
        num = [n for n in num if n != "1"] + [self.power(f, p) for f, p in e.factors if _is_constant(f) and p > 0]
        den += [self.power(f, -p) for f, p in e.factors if _is_constant(f) and p < 0]
        if self.latex:
            return " ".join(num), " ".join(den)
        return "".join(num), "·".join(den) if len(den) < 2 else "(" + "·".join(den) + ")"

    def hadamard(self, factors: list[tuple[Expr, float]], allowed: tuple[str, ...]) -> str:
        return self.odot.join(self.power(f, p) if p != 1 else self.wrap(f, allowed) for f, p in factors)

    def fraction(self, top: str, bottom: str) -> str:
        return rf"\frac{{{top}}}{{{bottom}}}" if self.latex else f"{top}/{bottom}"

    def prod(self, e: Prod) -> tuple[str, str]:
        numerator, denominator = self.coefficient(e)
        top = [(f, p) for f, p in e.factors if not _is_constant(f) and p > 0]
        bottom = [(f, -p) for f, p in e.factors if not _is_constant(f) and p < 0]
        sign = self.minus if e.coef < 0 else ""
        if len(top) == 1 and top[0][1] == 1 and isinstance(top[0][0], Sum) and not bottom \
                and not numerator and denominator:  # (softmax(z) − t)/B
            inner = self.render(top[0][0])[0]
            return sign + (self.fraction(inner, denominator) if self.latex else f"({inner})/{denominator}"), \
                "signed" if sign else "prod"
        coefficient = self.fraction(numerator or "1", denominator) if denominator else numerator
        # a lone factor after a scalar needs no parentheses: 1/N Σ (h − y)², 2/N x W
        alone = ("atom", "adjoint", "power", "reduce", "matmul")
        body = self.hadamard(top, alone if len(top) == 1 else ("atom", "adjoint"))
        if bottom:
            under = self.hadamard(bottom, ("atom", "adjoint"))
            if self.latex:
                body = self.fraction(body or "1", under)
            else:
                body = f"{body or 1} / " + (self.paren(under) if len(bottom) > 1 else under)
        text = " ".join(t for t in (coefficient, body) if t) or "1"
        if sign:
            return sign + text, "signed"
        if len(top) == 1 and not coefficient and not bottom:
            return text, "power"
        return text, "atom" if not top and not bottom and not denominator else "prod"

    def function(self, e: Fn) -> str:
        args = [self.render(a)[0] for a in e.args]
        attrs = dict(e.attrs)
        if e.name in _FUNCTIONS and len(args) <= 2:
            text = _FUNCTIONS[e.name][self.latex].format(*args)
            axis = attrs.get("axis")
            if axis is not None and axis != len(e.args[0].shape) - 1:
                text = text[:-1] + f", axis={axis})"
            return text
        extra = [f"{k}={v}" for k, v in attrs.items()]
        name = rf"\operatorname{{{e.name}}}".replace("_", r"\_") if self.latex else e.name
        return f"{name}({', '.join(args + extra)})"

    def reduction(self, e: Reduce) -> tuple[str, str]:
        rank = len(e.x.shape)
        if e.op == "max":
            inner = self.render(e.x)[0]
            if len(e.axes) == rank:
                return (rf"\max({inner})" if self.latex else f"max({inner})"), "atom"
            axes = ",".join(map(str, e.axes))
            return (rf"\max_{{\text{{axis }}{axes}}}({inner})" if self.latex else
                    f"max({inner}, axis={axes})"), "atom"
        if rank == 2 and e.axes == (0,):  # column sums
            return f"{self.one}{self.top} {self.wrap(e.x, ('atom', 'matmul'))}", "matmul"
        if rank == 2 and e.axes == (1,):  # row sums
            return f"{self.wrap(e.x, ('atom', 'matmul'))} {self.one}", "matmul"
        inner = self.wrap(e.x, ("atom", "adjoint", "power"))
        sigma = r"\sum" if self.latex else "Σ"
        if len(e.axes) != rank:
            axes = ",".join(map(str, e.axes))
            sigma += rf"_{{\text{{axis }}{axes}}}" if self.latex else f"[axis {axes}]"
        return f"{sigma} {inner}", "reduce"


def _size_names(ex: Explanation) -> tuple[dict[Size, str], list[tuple[str, Size]]]:
    """A letter for each element count: the dim itself (B) or N, M, ... defined in a note."""
    taken = {leaf.name for leaf in ex.inputs} | {e.lhs.name for e in ex.equations}
    taken |= {d for leaf in ex.inputs for d in leaf.shape if isinstance(d, str)}
    names, defined, letters = {}, [], iter(c for c in "NMKPQRS" if c not in taken)
    for eq in ex.equations:
        for e in (eq.expr,) + ((eq.general,) if eq.general is not None else ()):
            for s in _walk(e):
                if isinstance(s, Size) and s not in names:
                    if len(s.dims) == 1:
                        names[s] = str(s.dims[0])
                    else:
                        names[s] = next(letters)
                        defined.append((names[s], s))
    return names, defined


def _shape_note(e: Expr, latex: bool) -> str:
    """For a matrix product, the shapes of its factors as written: (B×10)ᵀ(B×32)."""
    if not isinstance(e, MatMul) or latex:
        return ""
    def one(x: Expr) -> str:
        return f"({shape_text(x.x.shape)})ᵀ" if isinstance(x, Transpose) else f"({shape_text(x.shape)})"
    return f" = {one(e.a)}{one(e.b)}"


def _lines(ex: Explanation, latex: bool) -> tuple[list[tuple[str, str, str, Equation]], list[str], list[str]]:
    sizes, defined = _size_names(ex)
    n = _Notation(latex, "L", sizes)
    rows = []
    for eq in ex.equations:
        rows.append((n.leaf(eq.lhs), n.render(eq.expr)[0],
                     shape_text(eq.lhs.shape, latex) + _shape_note(eq.expr, latex), eq))
    dot = r" \cdot " if latex else "·"
    notes = [f"{name} = {dot.join(str(d) for d in s.dims)}" for name, s in defined]
    caveats = []
    for a in ex.assumptions:
        caveats.append(f"assuming {a.text}")
        for eq in ex.backward:
            if eq.general is not None:
                caveats.append(f"in general {n.leaf(eq.lhs)} = {n.render(eq.general)[0]}")
    return rows, notes, caveats


def _signature(ex: Explanation) -> str:
    return f"{ex.function}(" + ", ".join(f"{leaf.name}: {shape_text(leaf.shape)}" for leaf in ex.inputs) + ")"


def _render_text(ex: Explanation, verbose: bool) -> str:
    rows, notes, caveats = _lines(ex, latex=False)
    out = [f"{_signature(ex)}, read back from the {ex.stage} graph"]
    width_lhs = max((len(r[0]) for r in rows), default=0)
    width_rhs = min(max((len(r[1]) for r in rows), default=0), 48)  # one long formula pads no others
    width_shape = max((len(r[2]) for r in rows), default=0)
    for title, eqs in (("forward", ex.forward), ("gradients", ex.backward)):
        out += ["", title]
        if not eqs:
            out.append(f"  (none: the {ex.stage} graph has no gradient outputs)")
        for lhs, rhs, shape, eq in (r for r in rows if any(r[3] is e for e in eqs)):
            line = f"  {lhs.ljust(width_lhs)} = {rhs.ljust(width_rhs)}   {shape}"
            if verbose:
                line = line.ljust(width_lhs + width_rhs + width_shape + 8) + f"   %{eq.key}  {eq.loc}"
            out.append(line.rstrip())
        if title == "forward" and notes:
            out.append("  where " + ", ".join(notes))
    out += [f"  {c}" for c in caveats]
    return "\n".join(out) + "\n"


def _latex_block(ex: Explanation) -> str:
    rows, notes, caveats = _lines(ex, latex=True)
    body = []
    for i, (lhs, rhs, shape, eq) in enumerate(rows):
        gap = r" \\[6pt]" if ex.forward and eq is ex.forward[-1] else r" \\"
        body.append(f"  {lhs} &= {rhs} && \\in {shape}" + (gap if i < len(rows) - 1 or notes else ""))
    if notes:
        body.append(r"  & \text{where } " + ", ".join(notes))
    return "\\begin{aligned}\n" + "\n".join(body) + "\n\\end{aligned}"


def _render_latex(ex: Explanation) -> str:
    _, _, caveats = _lines(ex, latex=True)
    header = [f"% {_signature(ex)}: gradients read back from the {ex.stage} graph by gradc"]
    return "\n".join(header + [f"% {c}" for c in caveats] + [_latex_block(ex)]) + "\n"
