"""Graphviz DOT text for a graph: forward ops and adjoint ops in different colours."""
from __future__ import annotations

from .graph import Graph
from .text import value_names

FORWARD, ADJOINT, INPUT, OUTPUT = "#dbe9f6", "#fde2c8", "#e2f0d9", "#f2f2f2"


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def to_dot(graph: Graph) -> str:
    """DOT text with one node per input and op, edges along the networkx dataflow graph."""
    names = value_names(graph)
    flow = graph.to_networkx()
    lines = [f"digraph {_quote(graph.name)} {{", "  rankdir=TB;",
             '  node [shape=box, style="rounded,filled", fontname="Helvetica", fontsize=11];']
    for v in flow.nodes:
        op = v.producer
        if op is None:
            label, colour = f"{names[v]}\n{v.type}", INPUT
        else:
            label = f"%{names[v]} = {op.name}\n{v.type}"
            colour = ADJOINT if "vjp(" in op.loc else FORWARD
        lines.append(f"  {_quote(names[v])} [label={_quote(label)}, fillcolor={_quote(colour)}];")
    for i, v in enumerate(graph.outputs):
        node = f"output {i}"  # a space: no value name can collide with it
        lines.append(f"  {_quote(node)} [label={_quote(node)}, shape=oval, fillcolor={_quote(OUTPUT)}];")
        lines.append(f"  {_quote(names[v])} -> {_quote(node)};")
    for a, b in flow.edges:
        lines.append(f"  {_quote(names[a])} -> {_quote(names[b])};")
    lines.append("}")
    return "\n".join(lines) + "\n"
