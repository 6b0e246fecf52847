"""Reading a compiled graph into equations: `explain` and the `Explanation` it returns.

Named forward values, the cotangents autodiff named after them and the requested gradients get an
equation each; the ops between them are inlined into one tree, and big subexpressions that repeat
get names of their own (u₁, δ₁) as a textbook would give them.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import networkx as nx
import numpy as np

from ..checking import random_arguments
from ..ir import Graph, Value
from ..ir.interpreter import bind_dims, interpret
from ..ir.text import value_names
from . import notation
from .algebra import (EXACT_RULES, Assumption, Bcast, Expr, Fn, Leaf, MatMul, Num, Reshape, Size,
                      Transpose, add, bcast, concrete_shape, contains, cross_entropy_rule, evaluate,
                      mul, node_count, reduce, rewrite, strip, substitute, transpose, walk)


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
        dims = bind_dims(self.graph, self._in_input_dtypes(arrays))
        env: dict[Leaf, np.ndarray] = {leaf: np.asarray(a, np.float64) for leaf, a in zip(self.inputs, arrays)}
        out = {}
        for eq in self.equations:
            value = np.broadcast_to(evaluate(eq.expr, env, dims), concrete_shape(eq.lhs.shape, dims))
            env[eq.lhs] = out[eq.key] = value
        return out

    def verify(self, *arrays: np.ndarray) -> dict[str, float]:
        """Each formula's relative error against the graph's value of the same IR value."""
        checked = [e for e in self.equations if e.value is not None]
        probe = Graph(self.graph.name, self.graph.inputs, self.graph.ops, [e.value for e in checked])
        reference = interpret(probe, *self._in_input_dtypes(arrays))
        mine = self.evaluate(*arrays)
        errors = {}
        for eq, ref in zip(checked, reference):
            ref = np.asarray(ref, np.float64)
            scale = max(float(np.max(np.abs(ref), initial=0.0)), 1e-30)
            errors[eq.key] = float(np.max(np.abs(mine[eq.key] - ref), initial=0.0)) / scale
        return errors

    def _in_input_dtypes(self, arrays: Sequence[np.ndarray]) -> list[np.ndarray]:
        return [np.asarray(a, v.type.np_dtype) for a, v in zip(arrays, self.graph.inputs)]

    def example_inputs(self, dims: dict[str, int] | None = None, seed: int = 0) -> list[np.ndarray]:
        """Random inputs of the right shapes that satisfy the explanation's assumptions."""
        arrays = random_arguments([v.type for v in self.graph.inputs], dims, seed)
        for a in self.assumptions:
            i = [leaf.name for leaf in self.inputs].index(a.input)
            arrays[i] = a.prepare(arrays[i])
        return arrays

    def formulas(self, latex: bool = False) -> dict[str, str]:
        """Each equation as rendered: left-hand side -> right-hand side, e.g. '∂L/∂V': '(∂L/∂h)ᵀ g'."""
        return notation.formulas(self, latex)

    def text(self, verbose: bool = False) -> str:
        """Unicode formulas with their shapes; `verbose` adds each one's IR value and source line."""
        return notation.render_text(self, verbose)

    def latex(self) -> str:
        return notation.render_latex(self)

    def __str__(self) -> str:
        return self.text()

    def _repr_latex_(self) -> str:  # Jupyter shows the formulas typeset
        return "$$" + notation.latex_block(self) + "$$"


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
                and named[base].type == v.type:
            cuts[v] = Leaf(base, v.type.shape, "adjoint")
    gradient_of = {g: name for g, name in zip(grads, wrt)}

    reader = _Reader({**leaves, **cuts}, graph, primal, printed)
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
                 printed: dict[Value, str], spill_size: int = 40) -> None:
        self.leaves = leaves
        self.memo: dict[Value, Expr] = {}
        self.readers = {v: len(ops) for v, ops in graph.users().items()}
        self.printed = printed
        self.primal, self.spill_size = primal, spill_size
        self.spilled: dict[Value, Leaf] = {}

    def operand(self, v: Value) -> Expr:
        if v in self.leaves:
            return self.leaves[v]
        if v not in self.memo:
            e = self.definition(v)
            if self.readers.get(v, 0) > 1 and node_count(e) > self.spill_size:
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
            for node in walk(eq.expr):
                if not isinstance(node, (Leaf, Num, Size, Bcast, Reshape, Transpose)):
                    counts[node] = counts.get(node, 0) + 1
        repeated = [n for n, c in counts.items() if c >= 2 and node_count(n) >= min_size]
        if not repeated:
            break
        best = max(repeated, key=node_count)  # largest first, so the smaller repeats inside it stay visible
        backward_value = any(isinstance(x, Leaf) and x.role in ("adjoint", "delta") for x in walk(best))
        leaf = Leaf(f"\0{len(extra)}", best.shape, "delta" if backward_value else "forward")  # named below
        for eq in forward + backward + extra:
            eq.expr = substitute(eq.expr, best, leaf)
        extra.append(Equation(leaf, best, None, leaf.name))

    def place(block: list[Equation], pool: list[Equation]) -> list[Equation]:
        """`block` in order, each auxiliary from `pool` just before its first reader."""
        out: list[Equation] = []

        def emit(eq: Equation) -> None:
            if any(eq is o for o in out):
                return
            pool[:] = [a for a in pool if a is not eq]
            for aux in [a for a in pool if contains(eq.expr, a.lhs)]:
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
            eq.expr = substitute(eq.expr, old, new)
        aux.lhs, aux.key = new, name
