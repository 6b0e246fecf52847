"""Fusion: group the ops of an optimized graph into kernels, so intermediates stay in registers.

A kernel iterates over one *domain* (a shape). Its ops play one of three roles:
  - D: computed at every point of the domain (elementwise work, the matmul, broadcasts);
  - R: a reduction of a D value over the kernel's reduced axes;
  - O: elementwise work on reduction results, at each point of the kept axes (a softmax's log(sum)).
A kernel holds at most one matmul. Each value's *map* says which domain axis each of its own axes
runs along (None for a broadcast axis of size 1); a value can join a kernel only if every reader
in the kernel sees it along the same map, so the backend can evaluate it at the reader's index.

Groups are grown from the outputs backwards (TVM-style producer-into-consumer fusion): an op joins
the kernel(s) of its readers when all of them can evaluate it in place, merging sibling kernels
(the loss, its mean and ∂L/∂h share one). Only the ops' fusion classes (`kind`) are consulted,
so a new elementwise op needs no change here. Sources (constants, sizes) belong to no kernel:
the backend inlines them where they are read.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import networkx as nx

from .graph import Graph, Op, Value
from .ops import ELEMENTWISE, MATMUL, REDUCTION, SOURCE
from .types import Shape, squeeze_pairs

Map = tuple[Optional[int], ...]


def is_inline(v: Value) -> bool:
    """Constants, sizes, scalar arithmetic on them and their broadcasts: computed where read."""
    op = v.producer
    if op is None:
        return False
    if op.opdef.kind == SOURCE:
        return True
    if op.name == "broadcast":  # the same scalar at every index
        return is_inline(op.operands[0])
    return op.opdef.kind == ELEMENTWISE and v.type.shape == () and all(is_inline(x) for x in op.operands)


@dataclass(eq=False)
class Kernel:
    """A group of ops the backend runs as one loop nest."""

    ops: list[Op]
    domain: Shape
    reduced: tuple[int, ...] | None = None
    """Domain axes the kernel's reductions run over (None: no reduction)."""
    maps: dict[Value, Map] = field(default_factory=dict)
    name: str = ""
    label: str = ""
    """How the kernel prints (its kind when it was formed)."""
    reads: list[Value] = field(default_factory=list)
    """Values the kernel loads from memory: graph inputs and other kernels' stores."""
    writes: list[Value] = field(default_factory=list)
    """Values the kernel stores: graph outputs and values other kernels read. Nothing else is."""

    @property
    def matmul(self) -> Op | None:
        return next((op for op in self.ops if op.name == "matmul"), None)

    @property
    def kind(self) -> str:
        base = "matmul" if self.matmul else "loop"
        return base + ("+reduce" if self.reduced is not None else "")

    def role(self, v: Value) -> str:
        if v.producer is not None and v.producer.opdef.kind == REDUCTION:
            return "R"
        axes = {a for a in self.maps[v] if a is not None}
        return "D" if self.reduced is None or not axes.isdisjoint(self.reduced) or \
            len(axes) == len(self.domain) else "O"

    def kept(self) -> tuple[int, ...]:
        return tuple(a for a in range(len(self.domain)) if a not in (self.reduced or ()))


@dataclass
class FusionResult:
    kernels: list[Kernel]
    reasons: dict[Op, str]
    """Why each op that has readers did not join their kernel."""


def index_map(user: Op, operand_index: int) -> tuple[int | None, ...] | None:
    """For each axis of `user`'s operand, the axis of user's result it runs along (None: a size-1
    axis that is broadcast); None when the op reads the operand other than elementwise by index."""
    x, out = user.operands[operand_index].type, user.result.type
    if user.opdef.kind == ELEMENTWISE:
        lead = out.rank - x.rank
        return tuple(None if x.shape[a] == 1 and out.shape[a + lead] != 1 else a + lead for a in range(x.rank))
    if user.name == "broadcast":
        return tuple(None if x.shape[i] == 1 and out.shape[d] != 1 else d for i, d in enumerate(user.attrs["dims"]))
    if user.name == "transpose":
        return tuple(user.attrs["perm"].index(a) for a in range(x.rank))
    if user.name == "reshape":
        pairs = squeeze_pairs(x.shape, out.shape)
        return None if pairs is None else tuple(pairs.get(a) for a in range(x.rank))
    return None


def _operand_map(user: Op, user_map: Map, operand_index: int, kernel: Kernel) -> Map | str:
    """The map of `user`'s operand, given the user's own map; a string says why there is none."""
    x = user.operands[operand_index].type
    kind = user.opdef.kind
    if user.name == "transpose":
        return "it is read transposed"
    axes = index_map(user, operand_index)
    if axes is not None:
        return tuple(None if a is None else user_map[a] for a in axes)
    if kind == REDUCTION:
        axes, reduced = user.attrs["axes"], kernel.reduced
        if reduced is None or len(reduced) != len(axes):
            return "its reduction does not match the kernel's reduced axes"
        red, kept, result = iter(reduced), iter(user_map), []
        for a in range(x.rank):
            if a in axes:
                result.append(next(red))
                if user.attrs["keepdims"]:
                    next(kept)  # the size-1 axis left where the reduction was
            else:
                result.append(next(kept))
        return tuple(result)
    if kind == MATMUL:
        return "it is a matmul operand, which the matmul reads from memory (no prologue fusion)"
    return f"it is read by {user.name}, which needs it in memory"


def _is_index_map(op: Op) -> bool:
    """Layout ops that read each element at a computed index: broadcasts and size-1 reshapes."""
    return op.name in ("broadcast", "reshape") and index_map(op, 0) is not None


class _Fuser:
    def __init__(self, graph: Graph) -> None:
        self.graph = graph
        self.users = graph.users()
        self.kernel_of: dict[Op, Kernel] = {}
        self.reasons: dict[Op, str] = {}

    def run(self) -> FusionResult:
        for op in reversed(self.graph.ops):
            readers = [u for u in self.users.get(op.result, []) if u in self.kernel_of]
            if not self._needs_kernel(op):
                continue
            reason = self._try_join(op, readers) if readers else None
            if reason is not None or not readers:
                if reason is not None:
                    self.reasons[op] = reason
                self._new_kernel(op)
        return FusionResult(self._ordered_kernels(), self.reasons)

    def _needs_kernel(self, op: Op) -> bool:
        """Inline values are computed where read; a matmul operand, though, must be in memory."""
        return not is_inline(op.result) or any(u.name == "matmul" for u in self.users.get(op.result, []))

    def _new_kernel(self, op: Op) -> None:
        if op.opdef.kind == REDUCTION:
            x = op.operands[0].type
            kernel = Kernel([op], x.shape, tuple(op.attrs["axes"]))
            kept = [a for a in range(x.rank) if a not in op.attrs["axes"]]
            kernel.maps[op.result] = tuple(
                (a if a not in op.attrs["axes"] else None) for a in range(x.rank)) \
                if op.attrs["keepdims"] else tuple(kept)
        else:
            shape = op.result.type.shape
            kernel = Kernel([op], shape)
            kernel.maps[op.result] = tuple(range(len(shape)))
        self.kernel_of[op] = kernel

    def _try_join(self, op: Op, readers: list[Op]) -> str | None:
        kernels = list(dict.fromkeys(self.kernel_of[u] for u in readers))
        kind = op.opdef.kind
        if kind not in (ELEMENTWISE, REDUCTION, MATMUL) and not _is_index_map(op):
            return f"{op.name} runs as its own kernel"
        for u in readers:
            if u.opdef.kind not in (ELEMENTWISE, REDUCTION) and not _is_index_map(u):
                return _operand_map(u, (), u.operands.index(op.result), kernels[0])
        if kind == REDUCTION:
            kernels = [self._lifted(k, op) for k in kernels]
            if any(k is None for k in kernels):
                return "its readers' kernel cannot also run its reduction"
        domains = {k.domain for k in kernels}
        if len(domains) != 1:
            return f"its readers are kernels over different shapes {sorted(map(str, domains))}"
        reduced = {k.reduced for k in kernels} - {None}
        if kind == REDUCTION:
            reduced.add(tuple(op.attrs["axes"]))
        if len(reduced) > 1:
            return "its readers' kernels reduce over different axes"
        merged = Kernel([o for k in kernels for o in k.ops], kernels[0].domain,
                        reduced.pop() if reduced else None,
                        {v: m for k in kernels for v, m in k.maps.items()})
        maps = set()
        for u in readers:
            for i, v in enumerate(u.operands):
                if v is op.result:
                    m = _operand_map(u, merged.maps[u.result], i, merged)
                    if isinstance(m, str):
                        return m
                    maps.add(m)
        if len(maps) != 1:
            return "its readers see it along different axes"
        merged.maps[op.result] = maps.pop()
        merged.ops.append(op)
        reason = self._check_role(op, merged) or self._check_matmul(merged)
        if reason:
            return reason
        if not self._acyclic(merged, kernels):
            return "fusing it would make kernels depend on each other in a cycle"
        for o in merged.ops:
            self.kernel_of[o] = merged
        return None

    def _lifted(self, kernel: Kernel, op: Op) -> Kernel | None:
        """`kernel` seen over the reduction's input domain: its ops become per-row work after it."""
        x = op.operands[0].type
        if kernel.domain == x.shape:
            return kernel
        pairs = squeeze_pairs(kernel.domain, op.result.type.shape)
        if kernel.reduced is not None or kernel.matmul or pairs is None:
            return None
        axes = op.attrs["axes"]
        kept = [a for a in range(x.rank) if a not in axes]
        to_input = (lambda r: r) if op.attrs["keepdims"] else kept.__getitem__
        remap = {a: to_input(pairs[a]) if a in pairs else None for a in range(len(kernel.domain))}
        maps = {v: tuple(None if a is None else remap[a] for a in m) for v, m in kernel.maps.items()}
        return Kernel(list(kernel.ops), x.shape, tuple(axes), maps)

    @staticmethod
    def _check_role(op: Op, kernel: Kernel) -> str | None:
        own = kernel.maps[op.result]
        axes = [a for a in own if a is not None]
        if op.opdef.kind == REDUCTION:
            operand_map = _operand_map(op, own, 0, kernel)
            if axes != list(kernel.kept()) or operand_map != tuple(range(len(kernel.domain))):
                return "its result is read along axes other than the kernel's kept axes"
            return None
        if axes == list(range(len(kernel.domain))):
            return None
        if kernel.reduced is not None and axes == list(kernel.kept()) and op.opdef.kind == ELEMENTWISE:
            return None
        if kernel.reduced is None and kernel.matmul is None and axes == list(range(len(axes))) \
                and op.opdef.kind == ELEMENTWISE:
            # per-row work (a softmax's log of the row sum): split the domain into rows and columns
            kernel.reduced = tuple(range(len(axes), len(kernel.domain)))
            return None
        return "it is smaller than the kernel's domain and would be recomputed at every point"

    @staticmethod
    def _check_matmul(kernel: Kernel) -> str | None:
        """A matmul's epilogue runs once per output element: one pass, so no reduction feeds it."""
        matmuls = [o for o in kernel.ops if o.name == "matmul"]
        if not matmuls:
            return None
        if len(matmuls) > 1:
            return "the readers' kernel already holds a matmul"
        if kernel.maps[matmuls[0].result] != (0, 1) or len(kernel.domain) != 2:
            return "its readers' kernel runs over a different shape than the matmul's output"
        inside = {o.result for o in kernel.ops}
        if any(v in inside for v in matmuls[0].operands):
            return "it would put a matmul operand in the matmul's own kernel (no prologue fusion)"
        if kernel.reduced is not None and kernel.reduced != tuple(range(len(kernel.domain))):
            return "a matmul kernel only takes reductions over its whole output"
        for o in kernel.ops:
            if kernel.role(o.result) == "D" and any(v in inside and kernel.role(v) != "D" for v in o.operands):
                return "a matmul epilogue cannot read a reduction of its own output"
        return None

    def _acyclic(self, merged: Kernel, replaced: list[Kernel]) -> bool:
        owner = {o: k for o, k in self.kernel_of.items() if k not in replaced}
        for o in merged.ops:
            owner[o] = merged
        flow = nx.DiGraph()
        for o, k in owner.items():
            flow.add_node(id(k))
            for v in o.operands:
                if v.producer in owner and owner[v.producer] is not k:
                    flow.add_edge(id(owner[v.producer]), id(k))
        return nx.is_directed_acyclic_graph(flow)

    def _ordered_kernels(self) -> list[Kernel]:
        position = {op: i for i, op in enumerate(self.graph.ops)}
        kernels = list(dict.fromkeys(self.kernel_of.values()))
        flow = nx.DiGraph()
        for k in kernels:
            k.ops.sort(key=position.__getitem__)
            flow.add_node(k)
        for op, k in self.kernel_of.items():
            for v in op.operands:
                if v.producer in self.kernel_of and self.kernel_of[v.producer] is not k:
                    flow.add_edge(self.kernel_of[v.producer], k)
        ordered = list(nx.lexicographical_topological_sort(flow, key=lambda k: position[k.ops[0]]))
        for i, k in enumerate(ordered):
            k.name, k.label = f"k{i}", k.kind
        set_reads_and_writes(self.graph, ordered)
        return ordered


def set_reads_and_writes(graph: Graph, kernels: list[Kernel]) -> None:
    read_elsewhere: set[Value] = set()
    produced = {op.result for k in kernels for op in k.ops}
    for k in kernels:
        inside = {op.result for op in k.ops}
        k.reads = list(dict.fromkeys(v for op in k.ops for v in op.operands
                                     if v not in inside and (v.producer is None or v in produced)))
        read_elsewhere.update(k.reads)
    outputs = set(graph.outputs)
    for k in kernels:
        k.writes = [op.result for op in k.ops if op.result in outputs or op.result in read_elsewhere]


def fused_graph(graph: Graph, result: FusionResult) -> Graph:
    """`graph` with its ops in kernel order (inline values first), carrying the kernels."""
    in_kernels = {op for k in result.kernels for op in k.ops}
    inline = [op for op in graph.ops if op not in in_kernels]
    return Graph(graph.name, list(graph.inputs), inline + [op for k in result.kernels for op in k.ops],
                 list(graph.outputs), result.kernels)


def report(graph: Graph, result: FusionResult) -> str:
    """Every kernel with the ops it holds and what it stores; every op left out, with the reason."""
    from .text import value_names
    names = value_names(fused_graph(graph, result))
    lines = [f"{len(result.kernels)} kernels"]
    for k in result.kernels:
        held = ", ".join(f"%{names[op.result]}={op.name}" for op in k.ops)
        stores = ", ".join(f"%{names[v]}" for v in k.writes)
        domain = ",".join(map(str, k.domain))
        lines.append(f"  {k.name} [{k.label}] over [{domain}]: {held}; stores {stores}")
    if result.reasons:
        lines.append("left out of their readers' kernels:")
        for op, why in result.reasons.items():
            lines.append(f"  %{names[op.result]}={op.name}: {why}")
    return "\n".join(lines) + "\n"


def fuse(graph: Graph) -> FusionResult:
    """Group the non-source ops of `graph` into kernels, in an order that respects dependences."""
    return _Fuser(graph).run()


def unfused(graph: Graph) -> FusionResult:
    """One kernel per op: the same backend path with fusion switched off."""
    fuser = _Fuser(graph)
    for op in graph.ops:
        if fuser._needs_kernel(op):
            fuser._new_kernel(op)
    return FusionResult(fuser._ordered_kernels(), {})
