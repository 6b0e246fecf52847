"""Graph passes and the pipeline that runs them, verifying after each and keeping every stage."""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import ClassVar, Sequence

import networkx as nx
import numpy as np

from .autodiff import append_adjoint
from .graph import Graph, Op, Value, verify
from .ops import ELEMENTWISE


class Pass:
    """Rewrites a graph in place; `run` returns whether anything changed."""

    name: ClassVar[str]

    def run(self, graph: Graph) -> bool:
        raise NotImplementedError


def _const_value(v: Value) -> float | None:
    op = v.producer
    return op.attrs["value"] if op is not None and op.name == "const" else None


def _replace(graph: Graph, op: Op, new: Value) -> None:
    graph.replace_uses(op.result, new)
    if not new.name and op.result.name:
        new.name = op.result.name


@dataclass
class Autodiff(Pass):
    """Append the adjoint graph for d(outputs[0])/d(inputs[i]) for each i in `wrt`."""

    wrt: Sequence[int]
    name: ClassVar[str] = "autodiff"

    def run(self, graph: Graph) -> bool:
        adjoint = append_adjoint(graph, self.wrt)
        graph.inputs, graph.ops, graph.outputs = adjoint.inputs, adjoint.ops, adjoint.outputs
        return True


class DeadCodeElimination(Pass):
    """Drop ops whose results no output needs."""

    name = "dce"

    def run(self, graph: Graph) -> bool:
        flow = graph.to_networkx()
        live = set(graph.outputs).union(*(nx.ancestors(flow, v) for v in graph.outputs))
        before = len(graph.ops)
        graph.ops = [op for op in graph.ops if op.result in live]
        return len(graph.ops) != before


class CommonSubexpressionElimination(Pass):
    """Merge ops with the same name, operands and attributes."""

    name = "cse"

    def run(self, graph: Graph) -> bool:
        seen: dict[tuple, Value] = {}
        changed = False
        for op in graph.ops:
            key = (op.name, tuple(id(v) for v in op.operands), repr(sorted(op.attrs.items())))
            if key in seen:
                _replace(graph, op, seen[key])
                changed = True
            else:
                seen[key] = op.result
        return changed


class ConstantFolding(Pass):
    """Evaluate scalar elementwise ops on constants, and sizes over static dims, at compile time."""

    name = "constant-fold"

    def run(self, graph: Graph) -> bool:
        changed = False
        for op in list(graph.ops):
            value = None
            if op.opdef.kind == ELEMENTWISE and op.operands and op.result.type.shape == () and \
                    all(_const_value(v) is not None for v in op.operands):
                args = [np.array(_const_value(v), v.type.np_dtype) for v in op.operands]
                with np.errstate(all="ignore"):
                    value = float(op.opdef.reference(*args, **op.attrs))
            elif op.name == "size" and all(isinstance(d, int) for d in op.attrs["dims"]):
                value = float(np.prod(op.attrs["dims"]))
            if value is not None:
                position = graph.ops.index(op)
                new = graph.add_op("const", [], {"value": value, "dtype": op.result.type.dtype},
                                   loc=op.loc, index=position)
                _replace(graph, op, new)
                changed = True
        return changed


class Simplify(Pass):
    """Algebraic identities (x*1, x+0, x**1, --x), no-op layout ops, and stop_gradient after autodiff."""

    name = "simplify"

    def run(self, graph: Graph) -> bool:
        changed = False
        for op in list(graph.ops):
            new = self._simplified(op)
            if new is not None and new.type == op.result.type:
                _replace(graph, op, new)
                changed = True
        return changed

    @staticmethod
    def _simplified(op: Op) -> Value | None:
        ops, a = op.operands, op.attrs
        c = [_const_value(v) for v in ops]
        if op.name == "stop_gradient":
            return ops[0]
        if op.name == "mul":
            return ops[0] if c[1] == 1.0 else ops[1] if c[0] == 1.0 else None
        if op.name == "add":
            return ops[0] if c[1] == 0.0 else ops[1] if c[0] == 0.0 else None
        if op.name in ("sub", "div"):
            return ops[0] if c[1] == (0.0 if op.name == "sub" else 1.0) else None
        if op.name == "pow" and a["exponent"] == 1.0:
            return ops[0]
        if op.name == "neg" and ops[0].producer is not None and ops[0].producer.name == "neg":
            return ops[0].producer.operands[0]
        if op.name in ("reshape", "broadcast", "transpose") and op.result.type == ops[0].type and \
                (op.name != "transpose" or a["perm"] == sorted(a["perm"])) and \
                (op.name != "broadcast" or a["dims"] == list(range(ops[0].type.rank))):
            return ops[0]
        return None


def _is_matrix_transpose(v: Value) -> bool:
    return v.producer is not None and v.producer.name == "transpose" and v.producer.attrs["perm"] == [1, 0]


class FoldTransposes(Pass):
    """Read transposed matmul operands in place, and turn (a@b)ᵀ into bᵀ@aᵀ: no transpose is copied."""

    name = "fold-transposes"

    def run(self, graph: Graph) -> bool:
        changed = False
        for op in list(graph.ops):
            position = graph.ops.index(op)
            if op.name == "matmul" and any(_is_matrix_transpose(v) for v in op.operands):
                (a, b), ta, tb = op.operands, op.attrs["transpose_a"], op.attrs["transpose_b"]
                if _is_matrix_transpose(a):
                    a, ta = a.producer.operands[0], not ta
                if _is_matrix_transpose(b):
                    b, tb = b.producer.operands[0], not tb
            elif op.name == "transpose" and op.attrs["perm"] == [1, 0] and \
                    op.operands[0].producer is not None and op.operands[0].producer.name == "matmul":
                inner = op.operands[0].producer
                (b, a), ta, tb = inner.operands, not inner.attrs["transpose_b"], not inner.attrs["transpose_a"]
            elif op.name == "transpose" and op.operands[0].producer is not None and \
                    op.operands[0].producer.name == "transpose":
                inner = op.operands[0].producer
                perm = [inner.attrs["perm"][p] for p in op.attrs["perm"]]
                new = graph.add_op("transpose", inner.operands, {"perm": perm}, loc=op.loc, index=position)
                _replace(graph, op, new)
                changed = True
                continue
            else:
                continue
            new = graph.add_op("matmul", [a, b], {"transpose_a": ta, "transpose_b": tb},
                               loc=op.loc, index=position)
            _replace(graph, op, new)
            changed = True
        return changed


SIMPLIFICATION: tuple[Pass, ...] = (Simplify(), ConstantFolding(), FoldTransposes(),
                                    CommonSubexpressionElimination(), DeadCodeElimination())


def run_passes(graph: Graph, passes: Sequence[Pass], *, until_fixpoint: bool = False,
               max_rounds: int = 20, timings: dict[str, float] | None = None) -> Graph:
    """Run `passes` on a copy of `graph`, verifying after each pass; repeat to a fixpoint if asked."""
    graph = graph.clone()
    for _ in range(max_rounds if until_fixpoint else 1):
        changed = False
        for p in passes:
            start = time.perf_counter()
            changed |= p.run(graph)
            verify(graph)
            if timings is not None:
                timings[p.name] = timings.get(p.name, 0.0) + time.perf_counter() - start
        if not changed:
            break
    return graph


def optimize(graph: Graph, timings: dict[str, float] | None = None) -> Graph:
    return run_passes(graph, SIMPLIFICATION, until_fixpoint=True, timings=timings)


PASSES: dict[str, type[Pass]] = {p.name: p for p in (Autodiff, DeadCodeElimination,
                                                     CommonSubexpressionElimination, ConstantFolding,
                                                     Simplify, FoldTransposes)}
