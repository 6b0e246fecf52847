"""Reverse-mode autodiff as a graph pass: append the adjoint graph, built only from the ops' VJP rules."""
from __future__ import annotations

from typing import Sequence

import networkx as nx

from .builder import Builder, Sym
from .graph import Graph, Value
from .ops import ELEMENTWISE, reduce_to_shape
from .types import ShapeError


class GradError(ValueError):
    """A gradient that cannot be taken: non-scalar output, non-float argument."""


def append_adjoint(graph: Graph, wrt: Sequence[int], loss_index: int = 0) -> Graph:
    """A copy of `graph` whose outputs are the original ones followed by d(loss)/d(inputs[i]) for i in wrt.

    Only ops that lie on a path from a requested input to the loss are differentiated; cotangents of
    a value with several uses are summed; elementwise broadcasting is undone by summing.
    """
    graph = graph.clone()
    loss = graph.outputs[loss_index]
    if loss.type.shape != ():
        raise GradError(f"grad needs a scalar output, but the function returns {loss.type}; "
                        "reduce it first (e.g. gc.sum or gc.mean), or use gc.jit for non-scalar outputs")
    targets = [graph.inputs[i] for i in wrt]
    flow = graph.to_networkx()
    active = ({loss} | nx.ancestors(flow, loss)) & set().union(
        *({t} | nx.descendants(flow, t) for t in targets))

    forward_ops = len(graph.ops)
    builder = Builder(graph, lambda: f"{loss.producer.loc} vjp(seed)".strip() if loss.producer else "")
    cotangents: dict[Value, Sym] = {loss: builder.const(1.0, loss.type.dtype)}
    for op in list(reversed(graph.ops)):
        if op.result not in active or op.result not in cotangents:
            continue
        g = _finish(cotangents.pop(op.result), op.result)
        builder.locate = lambda op=op: f"{op.loc} vjp({op.name})".strip()
        grads = op.opdef.vjp(g, builder.wrap(op.result), *map(builder.wrap, op.operands), **op.attrs)
        if len(grads) != len(op.operands):
            raise AssertionError(f"vjp of {op.name} returned {len(grads)} cotangents for {len(op.operands)} operands")
        for operand, grad in zip(op.operands, grads):
            if grad is None or operand not in active:
                continue
            if op.opdef.kind == ELEMENTWISE and grad.shape != operand.type.shape:
                rank = len(grad.shape)
                grad = reduce_to_shape(grad, operand.type.shape,
                                       list(range(rank - operand.type.rank, rank)))
            cotangents[operand] = cotangents[operand] + grad if operand in cotangents else grad
    builder.locate = lambda: "zero gradient"
    grads = []
    for t in targets:
        grad = cotangents.get(t)
        if grad is None:  # the loss does not depend on t
            grad = builder.const(0.0, t.type.dtype).broadcast_to(t.type.shape, ())
        grads.append(_finish(grad, t).value)
    graph.outputs = graph.outputs + grads
    _prune_adjoint(graph, forward_ops)
    return graph


def _prune_adjoint(graph: Graph, forward_ops: int) -> None:
    """Drop adjoint ops no gradient needs: VJP rules also give cotangents for operands that are
    not differentiated (inputs outside `wrt`, constants)."""
    flow = graph.to_networkx()
    live = set(graph.outputs).union(*(nx.ancestors(flow, v) for v in graph.outputs))
    graph.ops = graph.ops[:forward_ops] + [op for op in graph.ops[forward_ops:] if op.result in live]


def _finish(cotangent: Sym, primal: Value) -> Sym:
    if cotangent.type != primal.type:
        raise ShapeError(f"cotangent {cotangent.type} does not match {primal.type}")
    if not cotangent.value.name and primal.name:
        cotangent.value.name = f"d{primal.name}"
    return cotangent
