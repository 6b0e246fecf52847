"""Lowering a graph's kernels to one LLVM module with a single entry point.

`gradc_entry(ptr args, ptr dims, ptr workspace, ptr sync, i64 threads, i64 thread)` takes the
input and output buffer addresses (inputs first), the values of the symbolic dims, and one workspace
holding every temporary; it calls the kernels in order, so a compiled call is one native call.
Python reaches it through a builtin function (the shared `fast_call`, boundary.py, told of this
module by `fast_description`) that checks the numpy arrays natively, or through the runtime's
`run` (threads.py) with addresses it checked itself. `gradc_workspace_size(dims)`
gives the workspace's size in bytes. Temporaries share workspace slots once their last reader has
run (see `plan_memory`).
"""
from __future__ import annotations

import functools
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, Sequence

from llvmlite import ir

from gradc.ir.fusion import FusionResult, Kernel, is_inline
from gradc.ir.graph import Graph, Value
from gradc.ir.ops import REDUCTION
from gradc.ir.types import Dim

from .boundary import describe
from .chunks import CLAIMS_TYPE, NO_CLAIM
from .codegen import (FLOAT_TYPES, I64, PTR, FunctionBuilder, KernelEmitter, balances, cold_code, combines,
                      gemm_dims, k_chunk_rows, k_chunks, partial_parts, prepacks_a, product)
from .gemm import pack_elements, packed_a_elements
from .threads import ENTRY_TYPE, LINE, MAX_THREADS, declare_barrier, declare_external

ALIGNMENT = 64
ENTRY, WORKSPACE_SIZE, PROFILE = "gradc_entry", "gradc_workspace_size", "gradc_profile"


Term = tuple[int, tuple[str, ...]]
"""coefficient × the product of symbolic dims: a polynomial's term in the symbolic dims."""


def term(coefficient: int, factors: Sequence[Dim]) -> Term:
    """coefficient × factors as a Term: the static factors multiplied into the coefficient."""
    for d in factors:
        if isinstance(d, int):
            coefficient *= d
    return coefficient, tuple(d for d in factors if isinstance(d, str))


@dataclass(frozen=True)
class Buffer:
    """A temporary: `factors` (ints and symbols) times `itemsize` bytes."""

    name: str
    factors: tuple[Dim, ...]
    itemsize: int
    scratch: bool = False
    """Working memory of one kernel (GEMM packing), not an intermediate value."""

    def nbytes(self, dims: dict[str, int]) -> int:
        n = self.itemsize
        for d in self.factors:
            n *= dims[d] if isinstance(d, str) else d
        return -(-n // ALIGNMENT) * ALIGNMENT

    def term(self) -> Term:
        """Its size in bytes as a term: (static bytes, symbolic factors)."""
        return term(self.itemsize, self.factors)

    def fits_in(self, other: Buffer) -> bool:
        """True when this buffer is never larger than `other`, whatever the symbols' values."""
        (s1, d1), (s2, d2) = self.term(), other.term()
        return s1 <= s2 and not (Counter(d1) - Counter(d2))


@dataclass
class MemoryPlan:
    """Workspace slots, each holding temporaries whose lifetimes do not overlap."""

    slots: list[list[Buffer]] = field(default_factory=list)
    slot_of: dict[object, int] = field(default_factory=dict)

    def nbytes(self, dims: dict[str, int]) -> int:
        return sum(max(b.nbytes(dims) for b in slot) for slot in self.slots)

    def unshared_nbytes(self, dims: dict[str, int]) -> int:
        return sum(b.nbytes(dims) for slot in self.slots for b in slot)

    def values_nbytes(self, dims: dict[str, int]) -> int:
        """Bytes of intermediate values written to memory (each counted once, no sharing)."""
        return sum(b.nbytes(dims) for slot in self.slots for b in slot if not b.scratch)

    def value_names(self) -> list[str]:
        return [b.name for slot in self.slots for b in slot if not b.scratch]


def plan_memory(lifetimes: list[tuple[object, Buffer, int, int]]) -> MemoryPlan:
    """Greedy slot assignment: (key, buffer, first kernel, last kernel) in order of first kernel."""
    plan = MemoryPlan()
    free_after: list[int] = []
    for key, buf, first, last in sorted(lifetimes, key=lambda t: t[2]):
        free = [s for s, end in enumerate(free_after) if end < first]
        fitting = [s for s in free if all(buf.fits_in(b) for b in plan.slots[s][:1])]
        if fitting or free:
            slot = (fitting or free)[0]
            plan.slots[slot].append(buf)
            free_after[slot] = last
        else:
            slot = len(plan.slots)
            plan.slots.append([buf])
            free_after.append(last)
        plan.slot_of[key] = slot
    return plan


@dataclass(frozen=True)
class Call:
    """A step of the entry: a function, where its buffers are, whether every thread runs it (else
    thread 0 alone), and the condition under which it runs at all, with the barrier after it:
    condition(builder, product of dims, threads) -> i1, the same on every thread."""

    function: ir.Function
    locations: list
    threaded: bool
    condition: Callable[[ir.IRBuilder, Callable[[Sequence[Dim]], ir.Value], ir.Value], ir.Value] | None = None


class ModuleBuilder:
    """Decides where each value lives, then emits the kernels, the entry point and the workspace size."""

    def __init__(self, graph: Graph, fusion: FusionResult, triple: str = "", data_layout: str = "",
                 profile: bool = False) -> None:
        """`profile`: the entry also adds each step's time (a kernel and the barrier after it, on
        the main thread) to the global PROFILE, in nanoseconds; `steps` names the steps."""
        self.graph, self.kernels, self.profile = graph, fusion.kernels, profile
        self.steps: list[str] = []
        self.module = ir.Module(name=graph.name)
        self.module.triple, self.module.data_layout = triple, data_layout
        self.symbols: dict[str, int] = {}
        for v in graph.inputs:
            for d in v.type.symbols:
                self.symbols.setdefault(d, len(self.symbols))
        self._plan()

    def _plan(self) -> None:
        g = self.graph
        kernel_of = {op.result: k for k in self.kernels for op in k.ops}
        readers: dict[Value, set[Kernel]] = {}
        for k in self.kernels:
            for v in k.reads:
                readers.setdefault(v, set()).add(k)
        self.location: dict[object, tuple[str, int]] = {v: ("arg", i) for i, v in enumerate(g.inputs)}
        self.output_copies: list[tuple[int, Value]] = []
        for j, v in enumerate(g.outputs):
            if v in kernel_of and v not in self.location:
                self.location[v] = ("arg", len(g.inputs) + j)
            else:  # an input, a constant, or a repeated output: copied in at the end
                self.output_copies.append((j, v))
        index = {k: i for i, k in enumerate(self.kernels)}
        lifetimes = []
        self.scratch: dict[Kernel, list] = {}  # a kernel's scratch buffers: packing areas, partials
        for k in self.kernels:
            for v in k.writes:
                if v not in self.location:
                    last = max((index[r] for r in readers.get(v, ())), default=index[k])
                    lifetimes.append((v, Buffer(v.name, v.type.shape, v.type.np_dtype.itemsize), index[k], last))
            mm = k.matmul
            if mm is not None:  # the GEMM's packed panels of B (and of a transposed A)
                m, n, kdim = gemm_dims(k)
                chunks = k_chunks(k)
                factors = pack_elements(k_chunk_rows(k) if chunks > 1 else kdim, n, transpose_a=mm.attrs["transpose_a"])
                copies = (MAX_THREADS,)  # one packing area per thread
                itemsize = mm.result.type.np_dtype.itemsize
                buffers = [((k, "pack"), Buffer(f"{k.name}.pack", tuple(factors) + copies, itemsize, scratch=True))]
                if prepacks_a(k):  # all of A, packed once for every thread, kept from its step to the GEMM's
                    buffers.append(((k, "packed_a"), Buffer(f"{k.name}.packed_a", packed_a_elements(m, kdim),
                                                            itemsize, scratch=True)))
                if chunks > 1:  # a partial output per chunk of K
                    buffers.append(((k, "partials"), Buffer(f"{k.name}.partials", (chunks,) + tuple(mm.result.type.shape),
                                                            itemsize, scratch=True)))
                elif combines(k):  # a partial result per part and reduction (parts: at most a row or column each)
                    reductions = sum(op.opdef.kind == REDUCTION for op in k.ops)
                    along = mm.result.type.shape[partial_parts(k)[0]]
                    buffers.append(((k, "partials"), Buffer(f"{k.name}.partials", (along, reductions), itemsize,
                                                            scratch=True)))
                self.scratch[k] = [key for key, _ in buffers]
                lifetimes += [(key, buf, index[k], index[k]) for key, buf in buffers]
        self.memory = plan_memory(lifetimes)
        for key, slot in self.memory.slot_of.items():
            self.location[key] = ("temp", slot)

    def work(self) -> list[Term]:
        """Rough operation counts per kernel: GEMMs 2·M·N·K, loops an operation per op and element."""
        terms = []
        for k in self.kernels:
            if k.matmul is not None:
                terms.append(term(2, tuple(k.domain) + (gemm_dims(k)[2],)))
            else:
                terms.append(term(len(k.ops), k.domain))
        return terms

    def build(self) -> ir.Module:
        calls = []
        for k in self.kernels:
            locations = [self.location[v] for v in k.writes + k.reads + self.scratch.get(k, [])]
            if prepacks_a(k):  # only when it `balances`: the same answer on every thread
                packer = KernelEmitter(self.module, k, k.writes, k.reads, self.symbols, pack_step=True)
                calls.append(Call(packer.emit(), locations, True, functools.partial(balances, k)))
                self.steps.append(f"{k.name}.pack_a")
            emitter = KernelEmitter(self.module, k, k.writes, k.reads, self.symbols)
            calls.append(Call(emitter.emit(), locations, emitter.thread is not None))
            self.steps.append(k.name)
            if combines(k):
                combine = KernelEmitter(self.module, k, k.writes, k.reads, self.symbols, combine_step=True)
                calls.append(Call(combine.emit(), locations, False))
                self.steps.append(f"{k.name}.combine")
        for j, v in self.output_copies:
            calls.append(Call(*self._output_copy(j, v)))
            self.steps.append(f"output{j}.copy")
        self._build_entry(calls)
        self._build_workspace_size()
        return self.module

    def fast_description(self) -> list[int]:
        """What the shared `fast_call` needs to know of this function (boundary.describe)."""
        return describe(self.graph, self.symbols, self._slot_terms(), self.work())

    def _slot_terms(self) -> list[list[Term]]:
        """Each workspace slot's buffers in bytes, alignment padding included: a bound of its size."""
        return [[(ALIGNMENT + bytes_, dims) for bytes_, dims in (buf.term() for buf in slot)]
                for slot in self.memory.slots]

    def _output_copy(self, j: int, v: Value) -> tuple[ir.Function, list]:
        sources = [] if is_inline(v) else [v]
        f = FunctionBuilder(self.module, f"output{j}.copy", ["out"] + ["in"] * len(sources), self.symbols)
        fty = FLOAT_TYPES[v.type.dtype]

        def body(coords: list) -> None:
            offset = f.offset(coords, v.type.shape)
            value = f.inline_value(v) if is_inline(v) else f.b.load(f.element(f.buffers[1], offset, fty))
            f.b.store(value, f.element(f.buffers[0], offset, fty))
        f.nest(v.type.shape, body, "i")
        f.b.ret_void()
        return f.fn, [("arg", len(self.graph.inputs) + j)] + [self.location[x] for x in sources], False

    def _slot_offsets(self, b: ir.IRBuilder, dims: ir.Value) -> tuple[list[ir.Value], ir.Value]:
        offsets, total = [], ir.Constant(I64, 0)
        for slot in self.memory.slots:
            offsets.append(total)
            size = None
            for buf in slot:
                n = b.mul(product(b, dims, self.symbols, buf.factors), ir.Constant(I64, buf.itemsize))
                n = b.and_(b.add(n, ir.Constant(I64, ALIGNMENT - 1)), ir.Constant(I64, -ALIGNMENT))
                size = n if size is None else b.select(b.icmp_unsigned(">", n, size), n, size)
            total = b.add(total, size)
        return offsets, total

    def _build_entry(self, calls: list) -> ir.Function:
        """Every thread runs the entry: shared kernels split their work, the others run on thread 0,
        and all threads meet at a barrier after each step that runs (a pack step runs only when its
        GEMM `balances`), since the next may read its results."""
        fn = ir.Function(self.module, ENTRY_TYPE, ENTRY)
        cold_code(fn)
        args, dims, workspace, sync, threads, thread = fn.args
        for arg, name in zip(fn.args, ["args", "dims", "workspace", "sync", "threads", "thread"]):
            arg.name = name
        b = ir.IRBuilder(fn.append_basic_block("entry"))
        offsets, _ = self._slot_offsets(b, dims)
        several = b.icmp_unsigned(">", threads, ir.Constant(I64, 1))
        main = b.icmp_unsigned("==", thread, ir.Constant(I64, 0))
        clock = _Clock(self.module, b, len(calls)) if self.profile else None
        claims = b.alloca(CLAIMS_TYPE, name="claims")  # see chunks.emit_claims
        counter = b.bitcast(b.gep(sync, [ir.Constant(I64, LINE)], inbounds=True), I64.as_pointer())
        b.store(ir.Constant(CLAIMS_TYPE, [ir.Constant(I64.as_pointer(), None), NO_CLAIM, 0]), claims)
        b.store(counter, b.gep(claims, [ir.Constant(ir.IntType(32), 0), ir.Constant(ir.IntType(32), 0)]))

        def pointer(location: tuple[str, int]) -> ir.Value:
            kind, i = location
            if kind == "temp":
                return b.gep(workspace, [offsets[i]], inbounds=True)
            return b.load(b.gep(b.bitcast(args, PTR.as_pointer()), [ir.Constant(I64, i)], inbounds=True))

        arrivals = b.alloca(I64, name="arrivals")  # threads x the barriers passed
        b.store(ir.Constant(I64, 0), arrivals)
        for n, call in enumerate(calls):
            start = clock.now() if clock else None
            operands = [pointer(loc) for loc in call.locations] + [dims]
            runs = ir.Constant(ir.IntType(1), 1) if call.condition is None else \
                call.condition(b, lambda factors: product(b, dims, self.symbols, factors), threads)
            with b.if_then(runs):
                if call.threaded:
                    b.call(call.function, operands + [thread, threads, claims])
                else:
                    with b.if_then(main):
                        b.call(call.function, operands)
                with b.if_then(several):
                    target = b.add(b.load(arrivals), threads)
                    b.store(target, arrivals)
                    b.call(declare_barrier(self.module), [sync, target])
                if clock:  # a step that does not run counts no time
                    with b.if_then(main):
                        clock.add(n, start)
        b.ret_void()
        return fn

    def _build_workspace_size(self) -> ir.Function:
        fn = ir.Function(self.module, ir.FunctionType(I64, [PTR]), WORKSPACE_SIZE)
        cold_code(fn)
        b = ir.IRBuilder(fn.append_basic_block("entry"))
        b.ret(self._slot_offsets(b, fn.args[0])[1])
        return fn


class _Clock:
    """Nanoseconds from clock_gettime(CLOCK_MONOTONIC), summed per step into the global PROFILE
    (i64 per step; a portable clock: the cycle counter traps in user mode on some CPUs)."""

    def __init__(self, module: ir.Module, b: ir.IRBuilder, steps: int) -> None:
        import time
        self.b, self.clock_id = b, time.CLOCK_MONOTONIC
        self.totals = ir.GlobalVariable(module, ir.ArrayType(I64, steps), PROFILE)
        self.totals.initializer = ir.Constant(self.totals.value_type, [0] * steps)
        self.gettime = declare_external(module, "clock_gettime", ir.IntType(32), [ir.IntType(32), PTR])
        self.timespec = b.alloca(ir.ArrayType(I64, 2), name="timespec")

    def now(self) -> ir.Value:
        b = self.b
        b.call(self.gettime, [ir.Constant(ir.IntType(32), self.clock_id), b.bitcast(self.timespec, PTR)])
        seconds, nanoseconds = (b.load(b.gep(self.timespec, [ir.Constant(I64, 0), ir.Constant(I64, i)]))
                                for i in (0, 1))
        return b.add(b.mul(seconds, ir.Constant(I64, 1_000_000_000)), nanoseconds)

    def add(self, step: int, start: ir.Value) -> None:
        b = self.b
        total = b.gep(self.totals, [ir.Constant(I64, 0), ir.Constant(I64, step)])
        b.store(b.add(b.load(total), b.sub(self.now(), start)), total)
