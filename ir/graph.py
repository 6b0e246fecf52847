"""The IR graph: typed SSA values, single-result ops in a valid order, named inputs and outputs."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable

import networkx as nx

from .types import TensorType


@dataclass(eq=False)
class Value:
    type: TensorType
    name: str = ""
    """A hint for printing (the Python variable or argument name); not required to be unique."""
    producer: Op | None = None

    def __repr__(self) -> str:
        return f"Value({self.name or id(self):}: {self.type})"


@dataclass(eq=False)
class Op:
    name: str
    operands: list[Value]
    attrs: dict[str, Any]
    result: Value
    loc: str = ""
    """Where the op came from: the user's `file.py:line`, or the pass that made it."""

    @property
    def opdef(self):  # -> OpDef; typed loosely to avoid an import cycle
        from .ops import OPS
        return OPS[self.name]


class VerificationError(Exception):
    """A graph that breaks an IR invariant."""


@dataclass(eq=False)
class Graph:
    name: str
    inputs: list[Value] = field(default_factory=list)
    ops: list[Op] = field(default_factory=list)
    outputs: list[Value] = field(default_factory=list)
    kernels: list | None = None
    """After fusion: the kernels (gradc.ir.fusion.Kernel) partitioning the non-inline ops."""

    def add_input(self, name: str, type: TensorType) -> Value:
        value = Value(type, name)
        self.inputs.append(value)
        return value

    def add_op(self, name: str, operands: Iterable[Value], attrs: dict[str, Any] | None = None,
               *, loc: str = "", hint: str = "", index: int | None = None) -> Value:
        """Append (or insert at `index`) an op; its result type comes from the op's shape rule."""
        from .ops import OPS
        opdef = OPS[name]
        operands = list(operands)
        attrs = opdef.canonical_attrs(dict(attrs or {}))
        result_type = opdef.infer([v.type for v in operands], attrs)
        value = Value(result_type, hint)
        op = Op(name, operands, attrs, value, loc)
        value.producer = op
        if index is None:
            self.ops.append(op)
        else:
            self.ops.insert(index, op)
        return value

    def replace_uses(self, old: Value, new: Value) -> None:
        if old.type != new.type:
            raise VerificationError(f"cannot replace {old.type} with {new.type}")
        for op in self.ops:
            op.operands = [new if v is old else v for v in op.operands]
        self.outputs = [new if v is old else v for v in self.outputs]

    def users(self) -> dict[Value, list[Op]]:
        uses: dict[Value, list[Op]] = {}
        for op in self.ops:
            for v in op.operands:
                uses.setdefault(v, []).append(op)
        return uses

    def to_networkx(self) -> nx.DiGraph:
        """Values are nodes; an edge runs from each operand to the result that reads it."""
        g = nx.DiGraph()
        for i, v in enumerate(self.inputs):
            g.add_node(v, order=-len(self.inputs) + i)
        for i, op in enumerate(self.ops):
            g.add_node(op.result, order=i)
            for v in op.operands:
                g.add_edge(v, op.result)
        return g

    def sort(self) -> None:
        """Put the ops in a topological order that keeps the current order where it is valid."""
        g = self.to_networkx()
        order = nx.lexicographical_topological_sort(g, key=lambda v: g.nodes[v]["order"])
        self.ops = [v.producer for v in order if v.producer is not None]

    def clone(self) -> Graph:
        mapping: dict[Value, Value] = {}
        new = Graph(self.name)
        for v in self.inputs:
            mapping[v] = new.add_input(v.name, v.type)
        for op in self.ops:
            result = Value(op.result.type, op.result.name)
            new_op = Op(op.name, [mapping[v] for v in op.operands], dict(op.attrs), result, op.loc)
            result.producer = new_op
            new.ops.append(new_op)
            mapping[op.result] = result
        new.outputs = [mapping[v] for v in self.outputs]
        return new

    def __str__(self) -> str:
        from .text import print_graph
        return print_graph(self)


def verify(graph: Graph) -> None:
    """Check that every operand is defined before use and every type matches its op's shape rule."""
    from .ops import OPS
    defined = set(graph.inputs)
    names = [v.name for v in graph.inputs]
    if len(set(names)) != len(names) or not all(names):
        raise VerificationError(f"graph inputs need unique, non-empty names; got {names}")
    symbols = {d for v in graph.inputs for d in v.type.symbols}
    for op in graph.ops:
        if op.name not in OPS:
            raise VerificationError(f"unknown op {op.name!r}")
        for v in op.operands:
            if v not in defined:
                raise VerificationError(f"{op.name} reads a value that is not defined before it: {v}")
        if op.result.producer is not op:
            raise VerificationError(f"{op.name}: result does not point back at its op")
        if op.result in defined:
            raise VerificationError(f"{op.name}: result defined twice")
        expected = OPS[op.name].infer([v.type for v in op.operands], op.attrs)
        if expected != op.result.type:
            raise VerificationError(f"{op.name}: result type {op.result.type}, shape rule says {expected}")
        used = set(op.result.type.symbols).union(*(d for d in op.attrs.values() if isinstance(d, list)))
        if not {d for d in used if isinstance(d, str)} <= symbols:
            raise VerificationError(f"{op.name}: uses a symbolic dim that no input binds "
                                    f"({sorted(d for d in used if isinstance(d, str) and d not in symbols)})")
        defined.add(op.result)
    for v in graph.outputs:
        if v not in defined:
            raise VerificationError(f"graph output {v} is not defined")
