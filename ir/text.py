"""The IR's text form: one generic syntax for every op, printed deterministically, parsed losslessly.

    func @loss(%x: f32[B,784], %U: f32[128,784]) -> (f32[]) {
      %f = matmul(%x, %U) {transpose_a=false, transpose_b=true} : f32[B,128]  # model.py:4
      ...
      return %L
    }
"""
from __future__ import annotations

import re
from typing import Any

from .graph import Graph, Value, verify
from .ops import OPS
from .types import TensorType


class ParseError(ValueError):
    """IR text that does not parse, with the line it failed on."""


def _format_attr(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return repr(v)
    if isinstance(v, (list, tuple)):
        return "[" + ",".join(_format_attr(x) for x in v) + "]"
    return str(v)


def value_names(graph: Graph) -> dict[Value, str]:
    """Unique printable names: the hint where it is free, else the hint with a numeric suffix."""
    names: dict[Value, str] = {}
    used: set[str] = set()
    values = list(graph.inputs) + [op.result for op in graph.ops]
    for v in values:
        base = v.name or "t"
        candidate, k = base, 0
        while candidate in used or (not v.name and k == 0):
            k += 1
            candidate = f"{base}{k}" if not v.name else f"{base}_{k}"
        used.add(candidate)
        names[v] = candidate
    return names


def print_graph(graph: Graph) -> str:
    names = value_names(graph)
    args = ", ".join(f"%{names[v]}: {v.type}" for v in graph.inputs)
    outs = ", ".join(str(v.type) for v in graph.outputs)
    lines = [f"func @{graph.name}({args}) -> ({outs}) {{"]
    kernel_of = {op: k for k in graph.kernels or () for op in k.ops}
    current = None
    for op in graph.ops:
        kernel = kernel_of.get(op)
        if kernel is not current:
            if current is not None:
                lines.append("  }")
            if kernel is not None:
                stores = ", ".join(f"%{names[v]}" for v in kernel.writes)
                lines.append(f"  kernel @{kernel.name} {kernel.label} stores({stores}) {{")
            current = kernel
        lines.append(("  " if kernel else "") + _format_op(op, names))
    if current is not None:
        lines.append("  }")
    lines.append("  return " + ", ".join(f"%{names[v]}" for v in graph.outputs))
    lines.append("}")
    return "\n".join(lines) + "\n"


def _format_op(op, names: dict[Value, str]) -> str:
    operands = ", ".join(f"%{names[v]}" for v in op.operands)
    attrs = ", ".join(f"{k}={_format_attr(op.attrs[k])}" for k in sorted(op.attrs))
    line = f"  %{names[op.result]} = {op.name}({operands})"
    if attrs:
        line += f" {{{attrs}}}"
    line += f" : {op.result.type}"
    if op.loc:
        line += f"  # {op.loc}"
    return line


_TOKEN = re.compile(r"\s*(?:(?P<float>-?(?:\d+\.\d*(?:e[+-]?\d+)?|\d+e[+-]?\d+|inf|nan))(?![\w.])"
                    r"|(?P<int>-?\d+)|(?P<word>[^\W\d][\w.]*)|(?P<punct>[\[\],]))")
_TYPE = re.compile(r"(f32|f64)\[([^\]]*)\]")
_HEADER = re.compile(r"func @([\w.]+)\((.*)\) -> \((.*)\) \{$")
_KERNEL = re.compile(r"kernel @(\w+) (\S+) stores\(([^)]*)\) \{$")
_OP = re.compile(r"%([\w.]+) = (\w+)\(([^)]*)\)(?: \{(.*)\})? : (\S+)(?:  # (.*))?$")


def _parse_type(text: str) -> TensorType:
    m = _TYPE.fullmatch(text.strip())
    if not m:
        raise ParseError(f"bad type {text!r}")
    dims = [d.strip() for d in m.group(2).split(",")] if m.group(2).strip() else []
    for d in dims:
        if not (re.fullmatch(r"[0-9]+", d) or d.isidentifier()):
            raise ParseError(f"bad dim {d!r} in type {text.strip()!r}: dims are ints >= 0 or names")
    return TensorType(m.group(1), tuple(int(d) if re.fullmatch(r"[0-9]+", d) else d for d in dims))


def _tokens(text: str) -> list[tuple[str, str]]:
    """The tokens of one attribute value, then an ("end", "") token; any other character is an error."""
    tokens, pos, text = [], 0, text.strip()
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if not m:
            raise ParseError(f"unexpected {text[pos:]!r} in attribute")
        tokens.append((m.lastgroup, m.group(m.lastgroup)))
        pos = m.end()
    return tokens + [("end", "")]


def _parse_attr_value(tokens: list[tuple[str, str]], pos: int) -> tuple[Any, int]:
    kind, text = tokens[pos]
    if text == "[":
        items, pos = [], pos + 1
        while tokens[pos][1] != "]":
            if items:
                if tokens[pos][1] != ",":
                    raise ParseError(f"expected ',' or ']' in a list attribute, got {tokens[pos][1] or 'the end'!r}")
                pos += 1
            item, pos = _parse_attr_value(tokens, pos)
            items.append(item)
        return items, pos + 1
    if kind == "float":
        return float(text), pos + 1
    if kind == "int":
        return int(text), pos + 1
    if kind == "word":
        return {"true": True, "false": False}.get(text, text), pos + 1
    raise ParseError(f"unexpected {text or 'end'!r} in attribute")


_ATTR = re.compile(r"\s*(\w+)=(\[[^\]]*\]|[^,\[\]]+?)\s*(?:,|$)")


def _parse_attrs(text: str | None) -> dict[str, Any]:
    attrs: dict[str, Any] = {}
    pos, text = 0, (text or "").strip()
    while pos < len(text):
        part = _ATTR.match(text, pos)
        if not part:
            raise ParseError(f"expected 'name=value' in attributes, got {text[pos:]!r}")
        tokens = _tokens(part.group(2))
        value, end = _parse_attr_value(tokens, 0)
        if end != len(tokens) - 1:
            raise ParseError(f"trailing text in attribute {part.group(0).strip()!r}")
        if part.group(1) in attrs:
            raise ParseError(f"attribute {part.group(1)} is given twice")
        attrs[part.group(1)] = value
        pos = part.end()
    return attrs


def parse(text: str) -> Graph:
    """Parse the text form back into a verified graph. Errors name the line (1-based) they are on."""
    lines = [(n, ln.strip()) for n, ln in enumerate(text.splitlines(), start=1) if ln.strip()]
    if not lines:
        raise ParseError("empty IR text")
    header_line, header_text = lines[0]
    header = _HEADER.match(header_text)
    if not header:
        raise ParseError(f"line {header_line}: expected 'func @name(%arg: type, ...) -> (types) {{', "
                         f"got {header_text!r}")
    graph = Graph(header.group(1))
    env: dict[str, Value] = {}
    try:
        for arg in filter(None, (a.strip() for a in re.split(r",\s*(?=%)", header.group(2)))):
            name, colon, type_text = arg.partition(":")
            name = name.strip()
            if not colon or not re.fullmatch(r"%[\w.]+", name):
                raise ParseError(f"expected '%name: type', got {arg!r}")
            if name[1:] in env:
                raise ParseError(f"argument {name} is defined twice")
            env[name[1:]] = graph.add_input(name[1:], _parse_type(type_text))
        result_types = [_parse_type(t) for t in re.split(r"(?<=\]),\s*", header.group(3))] \
            if header.group(3).strip() else []
    except ParseError as e:
        raise ParseError(f"line {header_line}: {e}: {header_text}") from None
    returned = closed = False
    kernels: list = []
    for lineno, stripped in lines[1:]:
        try:
            if closed:
                raise ParseError("text after the closing '}'")
            kernel_header = _KERNEL.match(stripped)
            if kernel_header:
                if kernels and kernels[-1][3] is None:
                    raise ParseError("kernel blocks do not nest")
                kernels.append([kernel_header.group(1), kernel_header.group(2), [], None])
                continue
            if stripped == "}" and kernels and kernels[-1][3] is None:
                kernels[-1][3] = lineno
                continue
            if stripped == "}":
                if not returned:
                    raise ParseError("the function has no 'return' line")
                closed = True
                continue
            if returned:
                raise ParseError("expected '}' after the return line")
            if stripped == "return" or stripped.startswith("return "):
                graph.outputs = [env[n.strip()[1:]] for n in stripped[len("return"):].split(",") if n.strip()]
                returned = True
                if [v.type for v in graph.outputs] != result_types:
                    raise ParseError(f"returns {', '.join(str(v.type) for v in graph.outputs) or 'nothing'} "
                                     f"but the header declares ({header.group(3)})")
                continue
            m = _OP.match(stripped)
            if not m:
                raise ParseError("expected '%name = op(%operands) {attrs} : type'")
            name, opname, operand_text, attr_text, type_text, loc = m.groups()
            if opname not in OPS:
                raise ParseError(f"unknown op {opname!r}")
            if name in env:
                raise ParseError(f"%{name} is defined twice")
            operands = [env[o.strip()[1:]] for o in operand_text.split(",") if o.strip()]
            value = graph.add_op(opname, operands, _parse_attrs(attr_text), loc=loc or "", hint=name)
            if value.type != _parse_type(type_text):
                raise ParseError(f"declared type {type_text} but the shape rule gives {value.type}")
            env[name] = value
            if kernels and kernels[-1][3] is None:
                kernels[-1][2].append(value.producer)
        except KeyError as e:
            raise ParseError(f"line {lineno}: undefined value %{e.args[0]}: {stripped}") from None
        except ParseError as e:
            raise ParseError(f"line {lineno}: {e}: {stripped}") from None
        except ValueError as e:
            raise ParseError(f"line {lineno}: {e}: {stripped}") from None
    if not closed:
        raise ParseError(f"line {lines[-1][0]}: missing the closing '}}' of the function: {lines[-1][1]}")
    verify(graph)
    if kernels:
        from .fusion import Kernel, set_reads_and_writes
        graph.kernels = [Kernel(ops, (), name=name, label=label) for name, label, ops, _ in kernels]
        set_reads_and_writes(graph, graph.kernels)
    return graph
