"""LLVM IR for one kernel of fused ops: loop nests whose bodies evaluate each op at an index.

`KernelEmitter.value_at(v, coords)` is the heart: it produces v's element at `coords` (one index per
axis of v, None for a size-1 axis) by loading it when v lives in memory, by returning the matmul
accumulator or a reduction's register, or by evaluating v's op on its operands' elements. Values
computed inside the kernel are therefore never stored unless another kernel or the caller reads
them. The elementwise formulas come from the op registry (`OpDef.scalar`).
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

from llvmlite import ir

from gradc.ir.fusion import Kernel, index_map
from gradc.ir.graph import Value
from gradc.ir.ops import ELEMENTWISE, REDUCTION
from gradc.ir.types import Dim, Shape, rounded_to

from . import chunks, mathlib
from .mathlib import declare_intrinsic, element_type, splat, type_suffix, undefined
from .chunks import CLAIMS_TYPE, emit_claims, emit_column_chunks, emit_cut, emit_while
from .threads import MAX_THREADS

I64 = ir.IntType(64)
PTR = ir.PointerType(ir.IntType(8))
FLOAT_TYPES = {"f32": ir.FloatType(), "f64": ir.DoubleType()}
Coords = Sequence["ir.Value | None"]


class ScalarEmitter:
    """The scalar vocabulary the ops' elementwise formulas are written in, emitted as LLVM IR; with
    a vector `fty`, the same formula on every lane."""

    def __init__(self, builder: ir.IRBuilder, fty: ir.Type) -> None:
        self.b, self.fty = builder, fty

    def const(self, x: float) -> ir.Value:
        return splat(self.fty, float(x))

    def nearest(self, x: float) -> float:
        """x as this float type holds it (what `const(x)` is)."""
        return rounded_to(x, "f32" if isinstance(element_type(self.fty), ir.FloatType) else "f64")

    def add(self, a, b): return self.b.fadd(a, b)
    def sub(self, a, b): return self.b.fsub(a, b)
    def mul(self, a, b): return self.b.fmul(a, b)
    def div(self, a, b): return self.b.fdiv(a, b)
    def neg(self, a): return self.b.fneg(a)
    def gt(self, a, b): return self.b.fcmp_ordered(">", a, b)
    def eq(self, a, b): return self.b.fcmp_ordered("==", a, b)
    def select(self, c, a, b): return self.b.select(c, a, b)
    def exp(self, x): return mathlib.emit_exp(self.b, x)
    def log(self, x): return mathlib.emit_log(self.b, x)
    def pow(self, x, y): return mathlib.emit_pow(self.b, x, y)
    def tanh(self, x): return mathlib.emit_tanh(self.b, x)
    def sigmoid(self, x): return mathlib.emit_sigmoid(self.b, x)

    def sqrt(self, x): return self._intrinsic("llvm.sqrt", x)
    def abs(self, x): return self._intrinsic("llvm.fabs", x)
    def copysign(self, magnitude, sign): return self._intrinsic("llvm.copysign", magnitude, sign)

    def _intrinsic(self, name: str, *args: ir.Value) -> ir.Value:
        return self.b.call(declare_intrinsic(self.b.module, name, self.fty, len(args)), list(args))

    def maximum(self, a, b):
        """numpy.maximum: NaN if either side is NaN."""
        return self._intrinsic("llvm.maximum", a, b)

    def minimum(self, a, b):
        """numpy.minimum: NaN if either side is NaN."""
        return self._intrinsic("llvm.minimum", a, b)


def cold_code(fn: ir.Function) -> None:
    """Leave `fn` unoptimized: straight-line calls and a few loads run in nanoseconds either way,
    and O3 on the entry (its barriers), the call boundary and the workspace size was a fifth of a
    model's O3 time."""
    fn.attributes.add("noinline")
    fn.attributes.add("optnone")


def read_dim(b: ir.IRBuilder, dims: ir.Value, index: int, name: str) -> ir.Value:
    ptr = b.gep(dims, [ir.Constant(I64, 8 * index)], inbounds=True)
    return b.load(b.bitcast(ptr, I64.as_pointer()), name=f"dim.{name}")


def product(b: ir.IRBuilder, dims: ir.Value, symbols: dict[str, int], factors: Sequence[Dim]) -> ir.Value:
    """The product of int and symbolic dims as an i64."""
    static, value = 1, None
    for d in factors:
        if isinstance(d, str):
            dim = read_dim(b, dims, symbols[d], d)
            value = dim if value is None else b.mul(value, dim, flags=("nuw", "nsw"))
        else:
            static *= d
    if value is None:
        return ir.Constant(I64, static)
    return value if static == 1 else b.mul(value, ir.Constant(I64, static), flags=("nuw", "nsw"))


class _LoopID(ir.values.MDValue):
    """A loop's `!llvm.loop` node: distinct and listing itself first, as LLVM requires (llvmlite's
    `Module.add_metadata` only makes uniqued nodes, which two loops with the same hints would share)."""

    def __init__(self, module: ir.Module, hints: list[ir.values.MDValue]) -> None:
        super().__init__(module, hints, name=str(len(module.metadata)))

    def descr(self, buf: list) -> None:
        buf += ("distinct !{{ {0} }}".format(", ".join([self.get_reference()] +
                                                      [h.get_reference() for h in self.operands])), "\n")


def emit_loop(b: ir.IRBuilder, start: ir.Value, stop: ir.Value, step: int, body: Callable[[ir.Value], None],
              name: str, loop_id: ir.values.MDValue | None = None) -> None:
    """for (i = start; i < stop; i += step) body(i), at b's position; `loop_id`: its `!llvm.loop`."""
    def advance(index: ir.Value) -> list[ir.Value]:
        body(index)
        return [b.add(index, ir.Constant(I64, step), flags=("nuw", "nsw"))]
    emit_while(b, [start], lambda index: b.icmp_signed("<", index, stop), advance, name, loop_id)


class FunctionBody:
    """A function being emitted: `fn`, a builder `b` at its end, stack slots in its entry block."""

    def __init__(self, fn: ir.Function) -> None:
        self.fn = fn
        self.b = ir.IRBuilder(fn.append_basic_block("entry"))

    def entry_alloca(self, ty: ir.Type, name: str) -> ir.Value:
        with self.b.goto_entry_block():
            return self.b.alloca(ty, name=name)


class FunctionBuilder(FunctionBody):
    """An internal function `void name(ptr buffers..., ptr dims)` with loop and indexing helpers."""

    def __init__(self, module: ir.Module, name: str, buffer_names: list[str], symbols: dict[str, int],
                 threaded: bool = False, extra: Sequence[tuple[str, ir.Type]] = ()) -> None:
        """`threaded`: the function also takes (i64 thread, i64 threads, CLAIMS_TYPE* claims) and
        does its share of the work. `extra`: (name, type) of further arguments, last (`self.extra`)."""
        trailing = ([("thread", I64), ("threads", I64), ("claims", CLAIMS_TYPE.as_pointer())] if threaded
                    else []) + list(extra)
        fnty = ir.FunctionType(ir.VoidType(), [PTR] * (len(buffer_names) + 1) + [t for _, t in trailing])
        super().__init__(ir.Function(module, fnty, name))
        self.fn.linkage = "internal"
        for arg, arg_name in zip(self.fn.args, buffer_names + ["dims"] + [n for n, _ in trailing]):
            arg.name = arg_name
        first_extra = len(buffer_names) + 1 + (3 if threaded else 0)
        self.thread, self.threads, self.claims = self.fn.args[first_extra - 3:first_extra] \
            if threaded else (None, None, None)
        self.extra = list(self.fn.args[first_extra:])
        self._dims_arg = self.fn.args[len(buffer_names)]
        for arg in self.fn.args[:len(buffer_names)]:
            arg.add_attribute("noalias")  # every buffer of a kernel is a distinct allocation
        self.buffers = list(self.fn.args[:len(buffer_names)])
        self.symbols = symbols
        self._sizes: dict[tuple, ir.Value] = {}

    def size(self, factors: Sequence[Dim]) -> ir.Value:
        """A product of dims, computed once at the top of the function."""
        key = tuple(sorted(map(str, factors)))
        if key not in self._sizes:
            with self.b.goto_block(self.fn.entry_basic_block):
                self.b.position_at_start(self.fn.entry_basic_block)
                self._sizes[key] = product(self.b, self._dims_arg, self.symbols, factors)
        return self._sizes[key]

    def share(self, count: ir.Value, multiple: int = 1) -> tuple[ir.Value, ir.Value]:
        """This thread's part [begin, end) of range(count), cut at multiples of `multiple`."""
        return tuple(emit_cut(self.b, count, t, self.threads, multiple)
                     for t in (self.thread, self.b.add(self.thread, ir.Constant(I64, 1))))

    def loop(self, count: ir.Value, body: Callable[[ir.Value], None], name: str,
             start: ir.Value | None = None, loop_id: ir.values.MDValue | None = None) -> None:
        emit_loop(self.b, start or ir.Constant(I64, 0), count, 1, body, name, loop_id)

    def nest(self, extents: Sequence[Dim], body: Callable[[list[ir.Value]], None], name: str,
             shared: bool = False) -> None:
        """Loops over every index of `extents`, outermost first; `shared`: this thread's outer rows only."""
        def level(axis: int, indices: list[ir.Value]) -> None:
            if axis == len(extents):
                body(indices)
                return
            count, start = self.size([extents[axis]]), None
            if shared and axis == 0:
                start, count = self.share(count)
            self.loop(count, lambda i: level(axis + 1, indices + [i]), f"{name}{axis}", start)
        level(0, [])

    def offset(self, coords: Coords, shape: Shape) -> ir.Value:
        """Row-major offset of `coords` in a contiguous array of `shape`."""
        total: ir.Value = ir.Constant(I64, 0)
        for axis, c in enumerate(coords):
            if c is None:
                continue
            term = c if axis == len(shape) - 1 else self.b.mul(c, self.size(shape[axis + 1:]), flags=("nuw", "nsw"))
            total = term if isinstance(total, ir.Constant) else self.b.add(total, term, flags=("nuw", "nsw"))
        return total

    def element(self, pointer: ir.Value, offset: ir.Value, fty: ir.Type) -> ir.Value:
        return self.b.gep(self.b.bitcast(pointer, fty.as_pointer()), [offset], inbounds=True)

    def inline_value(self, v: Value) -> ir.Value:
        """Constants, sizes and scalar arithmetic on them are computed where read, never stored."""
        op, fty = v.producer, FLOAT_TYPES[v.type.dtype]
        if op.name == "const":
            return ir.Constant(fty, op.attrs["value"])
        if op.name == "size":
            return self.b.sitofp(self.size(op.attrs["dims"]), fty)
        if op.name == "broadcast":
            return self.inline_value(op.operands[0])
        args = [self.inline_value(x) for x in op.operands]
        return op.opdef.scalar(ScalarEmitter(self.b, fty), *args, **op.attrs)


def _is_one(x: ir.Value) -> bool:
    return isinstance(x, ir.Constant) and x.constant == 1


def is_parallel(kernel: Kernel) -> bool:
    """Kernels whose work splits across threads without changing a single result bit: a GEMM by
    output columns or rows (`split_rows`; a reduction of its whole output sums partial results in a
    fixed order, see `combines`), loops by outer rows. Other whole-tensor reductions stay on one
    thread."""
    if kernel.matmul is not None:
        return True
    outer = kernel.kept() if kernel.reduced is not None else tuple(range(len(kernel.domain)))
    return len(outer) > 0


def split_rows(kernel: Kernel) -> bool:
    """Whether threads split a GEMM kernel's rows rather than its columns.

    - Fewer panels of NR columns than threads leave a thread idle: rows (a classifier head's 10
      columns, say). With a panel or two each, columns still (interleaved, the small step's
      x Uᵀ, 2 panels, K = 784, was 15% slower split by rows: every thread packed all of Uᵀ).
    - Split by columns, every thread packs all of a transposed A (M x K), unless the kernel
      `balances` (then they pack it once between them); split by rows, every thread packs all of
      B (K x N). Rows win when A is transposed and M > N (measured, interleaved, before balancing:
      3% faster at 1024 x 784 x 256, 2% slower at 2048 x 2048 x 512).
    The first rule needs N static (a symbolic batch of rows is fine: a narrow layer over any
    batch splits rows), the second both. A `combines` kernel keeps its partial results per row
    block of MR rows when it splits rows, per panel of NR columns otherwise."""
    from .gemm import gemm_nr
    mm = kernel.matmul
    m, n = mm.result.type.shape
    if not isinstance(n, int):
        return False
    panels = -(-n // gemm_nr(FLOAT_TYPES[mm.result.type.dtype]))
    return panels < MAX_THREADS or (isinstance(m, int) and mm.attrs["transpose_a"] and m > n)


def partial_parts(kernel: Kernel) -> tuple[int, int]:
    """For a `combines` kernel: the output axis its partial results run along (0: one per block of
    MR rows, when it `split_rows`; 1: one per panel of NR columns) and that block's size. Each part
    is computed by one thread, its tiles in order along the other axis."""
    from .gemm import gemm_mr, gemm_nr
    if split_rows(kernel):
        return 0, gemm_mr()
    return 1, gemm_nr(FLOAT_TYPES[kernel.matmul.result.type.dtype])


def plain_matmul(kernel: Kernel) -> bool:
    """A GEMM kernel with nothing fused: the runtime's own epilogue stores its tiles."""
    mm = kernel.matmul
    return mm is not None and kernel.ops == [mm] and kernel.writes == [mm.result]


K_CHUNK = 512     # the K range of one chunk of a `k_chunks` GEMM, at least
MAX_K_CHUNKS = 8


def k_chunks(kernel: Kernel) -> int:
    """Chunks of K that a GEMM kernel's threads share, or 1: a plain weight gradient (Aᵀ B, nothing
    fused) with a small output, at most 64 rows or columns, and a long K, as dW = dYᵀ X of a narrow
    layer over a large batch. Split by rows, every thread would pack all of B (K x N); by columns,
    all of Aᵀ (K x M): with few rows or columns to share it, packing is a large part of the work.
    Split by K, each thread packs and multiplies its chunks only, into partial outputs (in
    `partials`), which the combine step adds in chunk order. The count depends on the shape only,
    so the bits never depend on the threads. (Measured, seed step with B=4096 on two threads: dV,
    10 x 32, 80 -> 45 µs; dU, 32 x 64, 207 -> 137 µs; the step 571 -> 490 µs; annotated with a
    symbolic B, which also splits its narrow GEMMs by rows now, 795 -> 450 µs.)
    With a symbolic K (an annotated batch), the count is worked out per call, the same way
    (clamped to 1..MAX_K_CHUNKS), and this returns MAX_K_CHUNKS: the partial outputs there are room for."""
    mm = kernel.matmul
    if not plain_matmul(kernel):
        return 1
    if not mm.attrs["transpose_a"] or mm.attrs["transpose_b"]:
        return 1  # a K range of Aᵀ (K x M) and B (K x N) is a run of their rows
    (m, n), k = mm.result.type.shape, mm.operands[0].type.shape[0]
    if not (isinstance(m, int) and isinstance(n, int)) or min(m, n) > 64 or m * n > 65536:
        return 1
    if not isinstance(k, int):
        return MAX_K_CHUNKS
    return min(MAX_K_CHUNKS, k // K_CHUNK) if k >= 2 * K_CHUNK else 1


def k_chunk_rows(kernel: Kernel) -> Dim:
    """The most rows of Aᵀ and B one of a `k_chunks` kernel's chunks takes (what its packing needs)."""
    k = kernel.matmul.operands[0].type.shape[0]
    return -(-k // k_chunks(kernel)) if isinstance(k, int) else k


def claims_columns(kernel: Kernel) -> bool:
    """A GEMM kernel whose threads take chunks of its columns (whole panels of NR, so that a panel's
    partial result, `partial_parts`, has one author): one split neither by rows nor by K."""
    return kernel.matmul is not None and not split_rows(kernel) and k_chunks(kernel) == 1


def gemm_dims(kernel: Kernel) -> list[Dim]:
    """M, N and K of a GEMM kernel."""
    mm = kernel.matmul
    a = mm.operands[0]
    return list(mm.result.type.shape) + [a.type.shape[0] if mm.attrs["transpose_a"] else a.type.shape[1]]


def may_balance(kernel: Kernel) -> bool:
    """A `claims_columns` kernel that `balances` on some calls: its work is symbolic, or enough."""
    if not claims_columns(kernel):
        return False
    dims = gemm_dims(kernel)
    return not all(isinstance(d, int) for d in dims) or 2 * math.prod(dims) >= chunks.DYNAMIC_WORK


def prepacks_a(kernel: Kernel) -> bool:
    """A kernel that `may_balance`, with a transposed A of static M: when it balances, its threads
    pack A once between them in a step of their own, so that any thread can take any chunk of
    columns. (With M symbolic, the packed A's bound would be MR + 1 times A: see packed_a_elements.)"""
    return may_balance(kernel) and kernel.matmul.attrs["transpose_a"] and isinstance(gemm_dims(kernel)[0], int)


def balances(kernel: Kernel, b: ir.IRBuilder, size: Callable[[Sequence[Dim]], ir.Value],
             threads: ir.Value) -> ir.Value:
    """Whether a `claims_columns` kernel's threads claim shrinking chunks (see chunks.DYNAMIC_WORK),
    from its dims (`size`) and thread count: the same answer on every thread."""
    if not may_balance(kernel):
        return ir.Constant(ir.IntType(1), 0)
    work = b.mul(size(gemm_dims(kernel)), ir.Constant(I64, 2))
    return b.and_(b.icmp_unsigned(">", threads, ir.Constant(I64, 1)),
                  b.icmp_unsigned(">=", work, ir.Constant(I64, chunks.DYNAMIC_WORK)))


def combines(kernel: Kernel) -> bool:
    """A GEMM kernel whose threads leave partial results that a second, single-threaded function
    combines in order, so the bits do not depend on the thread count: one that also reduces its whole
    output (a partial result per panel of NR columns, or per block of MR rows if it `split_rows`),
    or one split into `k_chunks` (a partial output per chunk)."""
    return kernel.matmul is not None and (kernel.reduced is not None or k_chunks(kernel) > 1)


class KernelEmitter(FunctionBuilder):
    """Emits one fused kernel: `writes` are the values it stores, `reads` the buffers it loads.

    GEMM kernels also take `scratch` (packing areas), if they `prepacks_a`, `packed_a`, and if they
    `combine`, `partials`; with `combine_step` this emits the kernel's combining function instead of
    its main one, with `pack_step` its step packing A."""

    def __init__(self, module: ir.Module, kernel: Kernel, writes: list[Value], reads: list[Value],
                 symbols: dict[str, int], combine_step: bool = False, row_of: ir.Function | None = None,
                 pack_step: bool = False) -> None:
        """`row_of`: emit instead the per-row body of that matmul kernel's epilogue (`emit_row`);
        `pack_step`: its step packing A (`prepacks_a`)."""
        names = [f"out{i}" for i in range(len(writes))] + [f"in{i}" for i in range(len(reads))]
        extra = (["scratch"] if kernel.matmul is not None and row_of is None else []) + \
            (["packed_a"] if prepacks_a(kernel) and row_of is None else []) + \
            (["partials"] if combines(kernel) else [])
        if row_of is None:
            suffix = ".combine" if combine_step else ".pack_a" if pack_step else ""
            super().__init__(module, f"{kernel.name}.{kernel.kind.replace('+', '_')}{suffix}", names + extra,
                             symbols, threaded=is_parallel(kernel) and not combine_step)
        else:
            from .gemm import ROW_ARGS
            super().__init__(module, f"{row_of.name}.row", names + extra, symbols, extra=ROW_ARGS)
            self.extra[-1].add_attribute("noalias")  # the tile's row: the GEMM's own memory
        self.kernel = kernel
        self.combine_step, self.pack_step = combine_step, pack_step
        self.inside = {op.result for op in kernel.ops}
        self.pointer = dict(zip(writes + reads, self.buffers))
        self.writes, self.reads = writes, reads
        named = dict(zip(extra, self.buffers[len(names):]))
        self.scratch, self.partials, self.packed_a = (named.get(n) for n in ("scratch", "partials", "packed_a"))
        self.registers: dict[Value, ir.Value] = {}
        self.cache: dict[tuple, ir.Value] = {}
        self.matmul_value: ir.Value | None = None
        # in a row epilogue (`emit_row`): its lanes (one per column), their mask (the columns that
        # exist) and the coordinate that is the first lane's column; values there are vectors
        self.lanes: int | None = None
        self.mask: ir.Value | None = None
        self.lane_coord: ir.Value | None = None

    # -- evaluation -------------------------------------------------------------------------------
    def coords_of(self, v: Value, domain_coords: Coords) -> list:
        return [None if m is None else domain_coords[m] for m in self.kernel.maps[v]]

    def value_at(self, v: Value, coords: Coords) -> ir.Value:
        if v in self.registers:
            return self.registers[v]
        key = (v, tuple(id(c) for c in coords))
        if key in self.cache:
            return self.cache[key]
        fty = FLOAT_TYPES[v.type.dtype]
        op = v.producer
        if v not in self.inside and v not in self.pointer:
            result = self.broadcast(self.inline_value(v))
        elif v not in self.inside:
            result = self.read(self.pointer[v], coords, v.type.shape, fty)
        elif op.name == "matmul":
            result = self.matmul_value
        elif index_map(op, 0) is not None:  # elementwise ops and layout ops that are index maps
            args = [self.value_at(x, [None if a is None else coords[a] for a in index_map(op, i)])
                    for i, x in enumerate(op.operands)]
            result = op.opdef.scalar(ScalarEmitter(self.b, self.lane_type(fty)), *args, **op.attrs) \
                if op.opdef.kind == ELEMENTWISE else args[0]
        elif op.name == "reshape":  # same linear order: read the operand at this element's offset
            (x,) = op.operands
            result = self.broadcast(self.inline_value(x)) if x not in self.pointer else \
                self.read(self.pointer[x], coords, v.type.shape, fty)
        else:
            raise AssertionError(f"{op.name} result read before its pass in kernel {self.kernel.name}")
        self.cache[key] = result
        return result

    def store(self, v: Value, domain_coords: Coords) -> None:
        coords = self.coords_of(v, domain_coords)
        value = self.value_at(v, coords)
        at = self.element(self.pointer[v], self.offset(coords, v.type.shape), FLOAT_TYPES[v.type.dtype])
        if self.lanes is None:
            self.b.store(value, at)
            return
        self._masked("store", value.type, [value, self._lanes_at(at, coords, v.type.shape, value.type)])

    # -- lanes (a row epilogue) ---------------------------------------------------------------------
    def lane_type(self, fty: ir.Type) -> ir.Type:
        """The type of a value of element type `fty` here: a vector in a row epilogue."""
        return fty if self.lanes is None else ir.VectorType(fty, self.lanes)

    def broadcast(self, x: ir.Value) -> ir.Value:
        """`x`, the same in every lane: in a row epilogue, a vector of it."""
        return x if self.lanes is None else mathlib.broadcast(self.b, x, self.lanes)

    def lane_stride(self, coords: Coords, shape: Shape) -> ir.Value | None:
        """In a row epilogue: elements between consecutive lanes of a value at `coords` in a
        row-major array of `shape`; None if no coordinate is the lane's (the same in every lane)."""
        for axis, c in enumerate(coords):
            if c is self.lane_coord:
                return self.size(shape[axis + 1:])
        return None

    def read(self, pointer: ir.Value, coords: Coords, shape: Shape, fty: ir.Type) -> ir.Value:
        """The element at `coords` of a row-major array of `shape`; in a row epilogue, the lanes'
        elements, by a masked vector load (or one load, if they are all the same element)."""
        at = self.element(pointer, self.offset(coords, shape), fty)
        if self.lanes is None or self.lane_stride(coords, shape) is None:
            return self.broadcast(self.b.load(at))
        vty = self.lane_type(fty)
        return self._masked("load", vty, [self._lanes_at(at, coords, shape, vty)])

    def _lanes_at(self, first: ir.Value, coords: Coords, shape: Shape, vty: ir.VectorType) -> ir.Value:
        """The vector of the lanes' elements that starts at `first`: contiguous, since fusion never
        puts a transposed read in a kernel (`ir.fusion`: "it is read transposed"), so the column
        is the array's last axis but for trailing axes of size 1."""
        stride = self.lane_stride(coords, shape)
        assert stride is not None and _is_one(stride), f"the lanes of a {shape} value are not contiguous"
        return self.b.bitcast(first, vty.as_pointer())

    def _masked(self, kind: str, vty: ir.VectorType, args: list[ir.Value]) -> ir.Value:
        """llvm.masked.load or .store of `vty` under the lanes' mask: only the columns that exist
        are read (zeros elsewhere) or written."""
        i32 = ir.IntType(32)
        from .gemm import element_bytes
        align = ir.Constant(i32, element_bytes(vty.element))
        name = f"llvm.masked.{kind}.{type_suffix(vty)}.p0"
        if kind == "load":
            fnty = ir.FunctionType(vty, [vty.as_pointer(), i32, self.mask.type, vty])
            args = args + [align, self.mask, splat(vty, 0.0)]
        else:
            fnty = ir.FunctionType(ir.VoidType(), [vty, vty.as_pointer(), i32, self.mask.type])
            args = args + [align, self.mask]
        fn = self.b.module.globals.get(name) or ir.Function(self.b.module, fnty, name)
        return self.b.call(fn, args)

    # -- reductions --------------------------------------------------------------------------------
    def _reductions(self) -> list:
        return [op for op in self.kernel.ops if op.opdef.kind == REDUCTION]

    def _levels(self) -> dict[Value, int]:
        """After which reduction pass each value can be computed (0: needs no reduction)."""
        levels: dict[Value, int] = {}
        for op in self.kernel.ops:  # ops are in dependence order
            below = max((levels.get(v, 0) for v in op.operands), default=0)
            levels[op.result] = below + 1 if op.opdef.kind == REDUCTION else below
        return levels

    def _accumulators(self, reductions: list) -> dict:
        accs = {}
        for r in reductions:
            fty = FLOAT_TYPES[r.result.type.dtype]
            accs[r] = self.entry_alloca(fty, "acc")
            self.b.store(ir.Constant(fty, 0.0 if r.name == "reduce_sum" else float("-inf")), accs[r])
        return accs

    def _accumulate(self, accs: dict, domain_coords: Coords) -> None:
        for r, acc in accs.items():
            x = self.value_at(r.operands[0], domain_coords)
            self.b.store(self._combine(r, self.b.load(acc), x), acc)

    def _combine(self, r, current: ir.Value, x: ir.Value) -> ir.Value:
        if r.name == "reduce_sum":  # reassoc lets LLVM vectorize the sum
            return self.b.fadd(current, x, flags=("reassoc", "contract"))
        return ScalarEmitter(self.b, x.type).maximum(current, x)

    # -- kernel bodies -----------------------------------------------------------------------------
    def emit(self) -> ir.Function:
        if self.combine_step:
            self._emit_combine()
        elif self.pack_step:
            self._emit_pack_a()
        elif self.kernel.matmul is not None:
            self._emit_matmul()
        elif self.kernel.reduced is None:
            self.nest(self.kernel.domain, self._epilogue, "i", shared=True)
        else:
            self._emit_reduction_loops()
        self.b.ret_void()
        return self.fn

    def _epilogue(self, domain_coords: Coords, writes: Sequence[Value] | None = None) -> None:
        self.cache = {}
        for v in self.writes if writes is None else writes:
            self.store(v, domain_coords)

    def _split_writes(self) -> tuple[list[Value], list[Value]]:
        """Stores per domain point, and stores after the reductions (per kept index)."""
        role = self.kernel.role
        return [v for v in self.writes if role(v) == "D"], [v for v in self.writes if role(v) != "D"]

    def _domain_coords(self, kept_index: list[ir.Value], reduced_index: list[ir.Value]) -> list:
        coords: list = [None] * len(self.kernel.domain)
        for a, i in zip(self.kernel.kept(), kept_index):
            coords[a] = i
        for a, i in zip(self.kernel.reduced or (), reduced_index):
            coords[a] = i
        return coords

    def _emit_reduction_loops(self) -> None:
        k = self.kernel
        kept, reduced = k.kept(), k.reduced
        levels = self._levels()
        passes = max((levels[r.result] for r in self._reductions()), default=0)
        d_writes, late = self._split_writes()

        def outer(kept_index: list[ir.Value]) -> None:
            self.registers = {}
            for level in range(1, passes + 2):
                accs = self._accumulators([r for r in self._reductions() if levels[r.result] == level])
                stores = [v for v in d_writes if levels[v] == level - 1]
                if not accs and not stores:
                    continue

                def inner(reduced_index: list[ir.Value]) -> None:
                    coords = self._domain_coords(kept_index, reduced_index)
                    self.cache = {}
                    self._accumulate(accs, coords)
                    self._epilogue(coords, stores)
                self.nest([k.domain[a] for a in reduced], inner, f"r{level}.")
                for r, acc in accs.items():
                    self.registers[r.result] = self.b.load(acc)
            self._epilogue(self._domain_coords(kept_index, []), late)
        self.nest([k.domain[a] for a in kept], outer, "o", shared=self.thread is not None)

    def _emit_matmul(self) -> None:
        """Calls of the shared runtime's GEMM for the chunks of columns this thread claims (or its
        share of the rows, `split_rows`; or its chunks of K, `k_chunks`), whose per-tile callback
        (`emit_row`, in a function of its own) evaluates the kernel's fused ops."""
        from .gemm import (DEFAULT_CONFIG, define_epilogue, emit_gemm_call, gemm_mr, gemm_nr, pack_elements,
                           store_context, tile_rows)
        mm = self.kernel.matmul
        a, b = mm.operands
        ta, tb = mm.attrs["transpose_a"], mm.attrs["transpose_b"]
        m, n, kdim = gemm_dims(self.kernel)
        fty = FLOAT_TYPES[mm.result.type.dtype]
        nr = gemm_nr(fty)
        bld = self.b
        M, N, K = self.size([m]), self.size([n]), self.size([kdim])
        if k_chunks(self.kernel) > 1:
            self._emit_k_chunks(M, N, K, fty)
            return
        if plain_matmul(self.kernel):
            epilogue, context = self._store_tiles(self.pointer[mm.result], N, fty)
        else:
            row = KernelEmitter(self.fn.module, self.kernel, self.writes, self.reads, self.symbols, row_of=self.fn)
            vw = DEFAULT_CONFIG.vw(fty)  # no more lanes than N needs, in whole vectors
            row.emit_row(min(nr, -(-n // vw) * vw) if isinstance(n, int) else nr)
            row_epilogue = define_epilogue(row.fn, f"{self.fn.name}.epilogue", rows=True)
            own = self.buffers[:len(self.writes) + len(self.reads)] + ([self.partials] if self.partials else [])
            epilogue = tile_rows(self.fn.module, fty)
            context = store_context(bld, self.entry_alloca, [row_epilogue] + own + [self._dims_arg])
        per_thread = self.size(pack_elements(kdim, n, transpose_a=ta))  # each thread its own
        pack = self.element(self.scratch, bld.mul(per_thread, self.thread), fty)
        zero = ir.Constant(I64, 0)
        if split_rows(self.kernel):
            begin, end = self.share(M, multiple=gemm_mr())
            emit_gemm_call(bld, fty, self.pointer[a], self.pointer[b], pack, M, N, K, ta, tb, epilogue, context,
                           zero, N, begin, end)
        else:
            self._emit_column_chunks(self.pointer[a], self.pointer[b], M, N, K, ta, tb, fty, pack, epilogue,
                                     context)
        # a few dozen instructions per call: interleaved, the tiny step ran no slower unoptimized,
        # and the seed step's model compiled 19% faster
        cold_code(self.fn)

    def _emit_column_chunks(self, a: ir.Value, b: ir.Value, M: ir.Value, N: ir.Value, K: ir.Value, ta: bool,
                            tb: bool, fty: ir.Type, pack: ir.Value, epilogue: ir.Function, context: ir.Value) -> None:
        """The chunks of columns this thread claims (`claims_columns`), a GEMM call each; a
        transposed A comes packed from the kernel's pack step if it `balances`."""
        from .gemm import emit_gemm_call, gemm_nr
        bld = self.b
        nr, zero = gemm_nr(fty), ir.Constant(I64, 0)
        balance = balances(self.kernel, bld, self.size, self.threads)
        count, bounds = emit_column_chunks(bld, N, nr, bld.mul(bld.mul(M, K), ir.Constant(I64, 2)), balance,
                                           self.threads, self.entry_alloca)

        prepacked = prepacks_a(self.kernel)
        if prepacked:
            a = bld.select(balance, self.packed_a, a)

        def chunk(c: ir.Value) -> None:
            first, last = bounds(c)
            emit_gemm_call(bld, fty, a, b, pack, M, N, K, ta, tb, epilogue, context, first, last, zero, M,
                           prepacked_a=balance if prepacked else False)
        emit_claims(bld, self.claims, count, chunk)

    def _emit_pack_a(self) -> None:
        """The blocks of rows of a `prepacks_a` kernel's transposed A this thread claims, packed."""
        from .gemm import DEFAULT_CONFIG, emit_pack_a_rows
        bld, a = self.b, self.kernel.matmul.operands[0]
        K, M = (self.size([d]) for d in a.type.shape)
        rows = ir.Constant(I64, DEFAULT_CONFIG.mc)  # a multiple of MR

        def block(c: ir.Value) -> None:
            begin = bld.mul(c, rows)
            end = bld.add(begin, rows)
            emit_pack_a_rows(bld, FLOAT_TYPES[a.type.dtype], self.packed_a, self.pointer[a], M, K, begin,
                             bld.select(bld.icmp_unsigned("<", end, M), end, M))
        emit_claims(bld, self.claims, bld.udiv(bld.add(M, bld.sub(rows, ir.Constant(I64, 1))), rows), block)

    def _emit_k_chunks(self, M: ir.Value, N: ir.Value, K: ir.Value, fty: ir.Type) -> None:
        """The chunks of K this thread claims (`chunks.emit_claims`), each a GEMM of its rows of Aᵀ and B
        into partial output c (see `k_chunks`)."""
        from .gemm import emit_gemm_call, pack_elements
        mm, bld = self.kernel.matmul, self.b
        a, b = mm.operands
        m, n = mm.result.type.shape
        count, per_chunk = self._chunking(K)
        pack = self.element(self.scratch, bld.mul(self.size(pack_elements(k_chunk_rows(self.kernel), n,
                                                                          transpose_a=True)), self.thread), fty)
        zero = ir.Constant(I64, 0)

        def chunk(c: ir.Value) -> None:
            k0 = bld.mul(c, per_chunk)
            k1 = bld.select(bld.icmp_unsigned("<", bld.add(k0, per_chunk), K), bld.add(k0, per_chunk), K)
            out = self.element(self.partials, bld.mul(c, ir.Constant(I64, m * n)), fty)
            epilogue, context = self._store_tiles(out, N, fty)
            a_rows = self.element(self.pointer[a], bld.mul(k0, M), fty)
            b_rows = self.element(self.pointer[b], bld.mul(k0, N), fty)
            emit_gemm_call(bld, fty, a_rows, b_rows, pack, M, N, bld.sub(k1, k0), True, False, epilogue,
                           context, zero, N, zero, M)
        emit_claims(bld, self.claims, count, chunk)
        cold_code(self.fn)

    def _store_tiles(self, out: ir.Value, N: ir.Value, fty: ir.Type) -> tuple[ir.Function, ir.Value]:
        """The runtime's epilogue storing each tile into `out` (N columns), and its context."""
        from .gemm import store_context, store_epilogue
        columns = self.entry_alloca(I64, "N")
        self.b.store(N, columns)
        return store_epilogue(self.fn.module, fty), store_context(self.b, self.entry_alloca, [out, columns])

    def _chunking(self, K: ir.Value) -> tuple[ir.Value, ir.Value]:
        """A `k_chunks` kernel's chunk count and rows per chunk (the last may have fewer): fixed
        by its static K, else clamp(K / K_CHUNK, 1, MAX_K_CHUNKS) per call."""
        bld, k = self.b, self.kernel.matmul.operands[0].type.shape[0]
        if isinstance(k, int):
            return ir.Constant(I64, k_chunks(self.kernel)), ir.Constant(I64, k_chunk_rows(self.kernel))
        chunks = bld.udiv(K, ir.Constant(I64, K_CHUNK))
        chunks = bld.select(bld.icmp_unsigned("<", chunks, ir.Constant(I64, 1)), ir.Constant(I64, 1), chunks)
        chunks = bld.select(bld.icmp_unsigned(">", chunks, ir.Constant(I64, MAX_K_CHUNKS)),
                            ir.Constant(I64, MAX_K_CHUNKS), chunks)
        return chunks, bld.udiv(bld.add(K, bld.sub(chunks, ir.Constant(I64, 1))), chunks)

    def emit_row(self, lanes: int) -> None:
        """The body of a matmul kernel's epilogue, called per row of a finished tile: the fused
        ops on the row's columns at once, as vectors of `lanes` (at most NR) with every load and
        store masked to the `cols` that exist (the other lanes read zeros: the tile's padding may
        hold anything, and denormals there made the tiny step's sigmoid kernel 5x slower); a
        reduction's total over the row goes into the partial result of its part (`partial_parts`).
        This function's last arguments are ROW_ARGS."""
        fty = FLOAT_TYPES[self.kernel.matmul.result.type.dtype]
        bld = self.b
        i, j0, cols, row = self.extra
        self.lanes, self.lane_coord = lanes, j0
        i32 = ir.IntType(32)
        iota = ir.Constant(ir.VectorType(i32, lanes), list(range(lanes)))
        self.mask = bld.icmp_unsigned("<", iota, self.broadcast(bld.trunc(cols, i32)))
        vty = self.lane_type(fty)
        self.matmul_value = self._masked("load", vty, [bld.bitcast(row, vty.as_pointer())])
        coords = [i, j0]
        d_writes, _ = self._split_writes()
        self._epilogue(coords, d_writes)
        reductions = self._reductions()
        if reductions:  # a part's tiles come in order along it: its first row has the other coordinate 0
            axis, size = partial_parts(self.kernel)
            along, across = (i, j0) if axis == 0 else (j0, i)
            part = bld.udiv(along, ir.Constant(I64, size))
            first = bld.icmp_unsigned("==", across, ir.Constant(I64, 0))
            if axis == 0:  # and is the first row of its block of rows
                first = bld.and_(first, bld.icmp_unsigned("==", bld.urem(i, ir.Constant(I64, size)),
                                                          ir.Constant(I64, 0)))
            for slot, r in zip(self._partial_slots(part), reductions):
                row_total = self._lane_total(r, self.value_at(r.operands[0], coords))
                bld.store(bld.select(first, row_total, self._combine(r, bld.load(slot), row_total)), slot)
        bld.ret_void()

    def _lane_total(self, r, x: ir.Value) -> ir.Value:
        """The reduction `r` of the lanes of `x` that are columns, as a balanced tree (a fixed
        order: the same bits on every call)."""
        bld = self.b
        identity = 0.0 if r.name == "reduce_sum" else float("-inf")
        x = bld.select(self.mask, x, splat(x.type, identity))
        width, rest = self.lanes, None
        while width > 1:
            if width % 2:  # the odd lane out joins at the end
                last = bld.extract_element(x, ir.Constant(ir.IntType(32), width - 1))
                rest = last if rest is None else self._combine(r, rest, last)
                width -= 1
                x = self._lanes_of(x, range(width))
                continue
            half = width // 2
            x = self._combine(r, self._lanes_of(x, range(half)), self._lanes_of(x, range(half, width)))
            width = half
        total = bld.extract_element(x, ir.Constant(ir.IntType(32), 0)) if isinstance(x.type, ir.VectorType) else x
        return total if rest is None else self._combine(r, total, rest)

    def _lanes_of(self, x: ir.Value, lanes: range) -> ir.Value:
        """A vector of the given lanes of `x`."""
        mask = ir.Constant(ir.VectorType(ir.IntType(32), len(lanes)), list(lanes))
        return self.b.shuffle_vector(x, undefined(x.type), mask)

    def _partial_slots(self, part: ir.Value) -> list[ir.Value]:
        """Where each reduction keeps its partial result for `part` (a panel or a row block)."""
        reductions = self._reductions()
        base = self.b.mul(part, ir.Constant(I64, len(reductions)), flags=("nuw", "nsw"))
        return [self.element(self.partials, self.b.add(base, ir.Constant(I64, i), flags=("nuw", "nsw")),
                             FLOAT_TYPES[r.result.type.dtype]) for i, r in enumerate(reductions)]

    def _emit_combine(self) -> None:
        """The reductions of a `combines` kernel: its parts' partial results in order, then the ops
        after the reductions; or, split into `k_chunks`, the sum of its partial outputs in order."""
        bld, shape = self.b, self.kernel.matmul.result.type.shape
        if k_chunks(self.kernel) > 1:
            mm = self.kernel.matmul
            fty, size = FLOAT_TYPES[mm.result.type.dtype], shape[0] * shape[1]
            chunks, _ = self._chunking(self.size([mm.operands[0].type.shape[0]]))
            out = self.pointer[mm.result]

            def add(c: ir.Value) -> None:  # chunk by chunk, in order: out = ((p0 + p1) + p2) + ...
                base = bld.mul(c, ir.Constant(I64, size))

                def element(e: ir.Value) -> None:
                    part = bld.load(self.element(self.partials, bld.add(base, e), fty))
                    first = bld.icmp_unsigned("==", c, ir.Constant(I64, 0))
                    total = bld.select(first, part, bld.fadd(bld.load(self.element(out, e, fty)), part))
                    bld.store(total, self.element(out, e, fty))
                self.loop(ir.Constant(I64, size), element, "element")
            self.loop(chunks, add, "chunk")
            return
        axis, step = partial_parts(self.kernel)
        along, across = self.size([shape[axis]]), self.size([shape[1 - axis]])
        parts = bld.udiv(bld.add(along, ir.Constant(I64, step - 1)), ir.Constant(I64, step))
        parts = bld.select(bld.icmp_unsigned(">", across, ir.Constant(I64, 0)), parts, ir.Constant(I64, 0))
        accs = self._accumulators(self._reductions())

        def part(p: ir.Value) -> None:
            for slot, (r, acc) in zip(self._partial_slots(p), accs.items()):
                bld.store(self._combine(r, bld.load(acc), bld.load(slot)), acc)
        self.loop(parts, part, "part")
        self.cache = {}
        for r, acc in accs.items():
            self.registers[r.result] = bld.load(acc)
        self._epilogue([], self._split_writes()[1])
