"""How the threads of a call share a GEMM kernel's work: chunks claimed one at a time from a counter.

A thread claims a chunk, does it, and claims the next, so a thread that is slowed down (descheduled,
or sharing its core with another process) does fewer chunks, and the other waits for it at the next
barrier for at most the chunk it holds. Which thread does a chunk never changes a bit of the result:
a chunk is a range of whole output panels (or of K, into a partial output of its own; or of rows of
a transposed A to pack), computed the same way by any thread. GEMMs split by rows (`split_rows`)
and loop kernels keep a fixed share per thread: they are small, or narrow.

The chunks of all the claiming kernels of a call are numbered on in one counter (the line after the
barrier's in `sync`, zeroed by `run` before each call), so nothing resets it between kernels: the
claim a thread finds past one kernel's chunks is its first of the next kernel's. A thread takes its
first claim when it first reaches a claiming kernel, so one that starts late (a helper woken from
sleep) holds no chunk up.
"""
from __future__ import annotations

from typing import Callable, Sequence

from llvmlite import ir

from . import runtime

I32, I64 = ir.IntType(32), ir.IntType(64)

CLAIMS_TYPE = ir.LiteralStructType([I64.as_pointer(), I64, I64])
"""A thread's view of its call's claims: the counter the threads share, the claim this thread holds
(NO_CLAIM before its first), and how many chunks the call's claiming kernels before this one had."""
NO_CLAIM = -1

DYNAMIC_WORK = 32_000_000
"""Operations (2·M·N·K) from which the threads of a GEMM kernel split by columns claim shrinking
chunks of them (and pack a transposed A between them first), rather than one share each (see
`codegen.balances`). Interleaved on two threads, below it the extra barrier and calls cost more than
an uneven finish: the small seed step (dU = dfᵀ x, 13 MFLOP) ran 0-10% slower balanced."""
MIN_CHUNK_WORK = 2_000_000
"""Operations in the smallest chunk a balanced GEMM kernel's threads claim."""


def emit_while(b: ir.IRBuilder, start: Sequence[ir.Value], keep_going: Callable[..., ir.Value],
               step: Callable[..., Sequence[ir.Value]], name: str,
               loop_id: ir.values.MDValue | None = None) -> list[ir.Value]:
    """Loop-carried values: from `start`, while keep_going(*values), values = step(*values) (which
    may emit code, loops included). Returns the final values. `loop_id`: the loop's `!llvm.loop`."""
    fn = b.function
    before = b.block
    header, inner, done = (fn.append_basic_block(f"{name}.{part}") for part in ("header", "body", "done"))
    b.branch(header)
    b.position_at_end(header)
    values = [b.phi(v.type, name=name) for v in start]
    for phi, v in zip(values, start):
        phi.add_incoming(v, before)
    b.cbranch(keep_going(*values), inner, done)
    b.position_at_end(inner)
    following = step(*values)
    for phi, v in zip(values, following):
        phi.add_incoming(v, b.block)
    latch = b.branch(header)
    if loop_id is not None:
        latch.set_metadata("llvm.loop", loop_id)
    b.position_at_end(done)
    return values


def emit_cut(b: ir.IRBuilder, count: ir.Value, t: ir.Value, parts: ir.Value, multiple: int | ir.Value = 1) -> ir.Value:
    """Where part t of range(count) begins when it is cut into `parts` parts at multiples of
    `multiple` (part `parts` begins at count)."""
    at = b.udiv(b.mul(count, t), parts)
    if not isinstance(multiple, int) or multiple > 1:  # the nearest: 12.25 panels split 6 | 6.25, not 7 | 5.25
        step = ir.Constant(I64, multiple) if isinstance(multiple, int) else multiple
        at = b.mul(b.udiv(b.add(at, b.udiv(step, ir.Constant(I64, 2))), step), step)
    last = b.icmp_unsigned(">=", t, parts)
    return b.select(b.or_(last, b.icmp_unsigned(">", at, count)), count, at)


def emit_claims(b: ir.IRBuilder, claims: ir.Value, count: ir.Value, body: Callable[[ir.Value], None]) -> None:
    """body(c) for the chunks c in range(count) this thread claims (`claims`: its CLAIMS_TYPE*).
    Every thread of the call must run this, with the same count; between them they run each chunk once."""
    def field(i: int) -> ir.Value:
        return b.gep(claims, [ir.Constant(I32, 0), ir.Constant(I32, i)])
    counter, held, base = b.load(field(0)), field(1), field(2)
    first = b.load(base)
    end = b.add(first, count)

    def claim() -> ir.Value:
        return b.atomic_rmw("add", counter, ir.Constant(I64, 1), "monotonic")
    before = b.block
    holding = b.load(held)
    with b.if_then(b.icmp_signed("==", holding, ir.Constant(I64, NO_CLAIM))):
        claimed, claimed_in = claim(), b.block
    start = b.phi(I64, name="claim.first")
    start.add_incoming(holding, before)
    start.add_incoming(claimed, claimed_in)

    def run(c: ir.Value) -> list[ir.Value]:
        body(b.sub(c, first))
        return [claim()]
    (last,) = emit_while(b, [start], lambda c: b.icmp_unsigned("<", c, end), run, "claim")
    b.store(last, held)
    b.store(end, base)


COLUMN_CHUNKS = runtime.PREFIX + "column_chunks"
COLUMN_CHUNKS_TYPE = ir.FunctionType(I64, [I64] * 7 + [I64.as_pointer()])
"""i64 column_chunks(N, nr, column_work, least_work, balance, threads, c, i64 *range): the chunk
count; if c is below it, chunk c's [begin, end) columns in range[0..1]."""


def emit_column_chunks(b: ir.IRBuilder, N: ir.Value, nr: int, column_work: ir.Value, balance: ir.Value,
                       threads: ir.Value, alloca: Callable[[ir.Type, str], ir.Value]
                       ) -> tuple[ir.Value, Callable[[ir.Value], tuple[ir.Value, ir.Value]]]:
    """N columns (of `column_work` operations each) cut at multiples of `nr` into chunks for
    `emit_claims`, by the runtime's `column_chunks`: if `balance`, chunks that shrink as they go (each
    1/(2 threads) of the panels left, but at least MIN_CHUNK_WORK), so that the first claims cost
    little and the threads finish close together; else one part per thread, cut as `emit_cut` cuts.
    Returns the chunk count and a function emitting chunk c's [begin, end) columns."""
    fn = runtime.declare(b.module, COLUMN_CHUNKS, COLUMN_CHUNKS_TYPE, _define_column_chunks)
    bounds = alloca(ir.ArrayType(I64, 2), "chunk")
    bounds_ptr = b.gep(bounds, [ir.Constant(I32, 0), ir.Constant(I32, 0)])
    fixed = [N, ir.Constant(I64, nr), column_work, ir.Constant(I64, MIN_CHUNK_WORK), b.zext(balance, I64), threads]
    count = b.call(fn, fixed + [ir.Constant(I64, NO_CLAIM), bounds_ptr])

    def chunk(c: ir.Value) -> tuple[ir.Value, ir.Value]:
        b.call(fn, fixed + [c, bounds_ptr])
        return b.load(bounds_ptr), b.load(b.gep(bounds, [ir.Constant(I32, 0), ir.Constant(I32, 1)]))
    return count, chunk


def _define_column_chunks(module: ir.Module) -> ir.Function:
    fn = ir.Function(module, COLUMN_CHUNKS_TYPE, COLUMN_CHUNKS)
    fn.attributes.add("nounwind")
    N, nr, column_work, least_work, balance, threads, c, out = fn.args
    b = ir.IRBuilder(fn.append_basic_block("entry"))
    one, zero = ir.Constant(I64, 1), ir.Constant(I64, 0)
    ranges = fn.append_basic_block("balanced")
    with b.if_then(b.icmp_unsigned("==", balance, zero)):  # a part per thread
        with b.if_then(b.icmp_unsigned("<", c, threads)):
            for i, t in enumerate((c, b.add(c, one))):
                b.store(emit_cut(b, N, t, threads, nr), b.gep(out, [ir.Constant(I64, i)]))
        b.ret(threads)
    b.branch(ranges)
    b.position_at_end(ranges)
    panels = b.udiv(b.add(N, b.sub(nr, one)), nr)
    parts = b.mul(threads, ir.Constant(I64, 2))
    panel_work = b.add(b.mul(column_work, nr), one)
    least = b.udiv(b.add(least_work, b.sub(panel_work, one)), panel_work)  # rounded up
    least = b.select(b.icmp_unsigned("<", least, one), one, least)

    def size(start: ir.Value) -> ir.Value:  # in panels, from panel `start` on
        left = b.sub(panels, start)
        share = b.udiv(b.add(left, b.sub(parts, one)), parts)
        share = b.select(b.icmp_unsigned("<", share, least), least, share)
        return b.select(b.icmp_unsigned(">", share, left), left, share)
    count, _ = emit_while(b, [zero, zero], lambda n, start: b.icmp_unsigned("<", start, panels),
                          lambda n, start: [b.add(n, one), b.add(start, size(start))], "count")
    with b.if_then(b.icmp_unsigned("<", c, count)):
        _, start = emit_while(b, [zero, zero], lambda i, start: b.icmp_unsigned("<", i, c),
                              lambda i, start: [b.add(i, one), b.add(start, size(start))], "skip")
        for i, panel in enumerate((start, b.add(start, size(start)))):
            at = b.mul(panel, nr)
            b.store(b.select(b.icmp_unsigned("<", at, N), at, N), b.gep(out, [ir.Constant(I64, i)]))
    b.ret(count)
    return fn
