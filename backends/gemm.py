"""A register-blocked matrix multiply emitted as LLVM IR, with a per-tile epilogue callback.

`define_gemm` defines a function computing C = op(A) @ op(B) (or a range of its rows and columns) for
run-time sizes M, N, K. C never exists as a whole: each MR x NR output tile is accumulated over all
of K in vector registers, stored into a small tile buffer, and handed to the caller's epilogue, a
function pointer the GEMM calls per tile (store into the real output, fuse a bias and a sigmoid,
reduce...). The GEMM depends only on the dtype, the transposes and the configuration, so it lives
in the process-wide shared runtime (backends/runtime.py): a model's module declares it and calls
it (`emit_gemm_call`) with its own epilogues (`define_epilogue`).

Design (after the measurements in the project's notes, `shared/notes/gemm.md`):
- micro-kernel MR x NR = 6 rows x 4 vectors of `<16 x float>` / `<8 x double>` with AVX-512
  (24 accumulators), 6 x 2 vectors of `<8 x float>` / `<4 x double>` with AVX2 only (12: AVX2 has
  16 vector registers), carried as phi nodes across the whole K loop (unrolled x4, then a remainder loop), explicit `llvm.fma` vector calls; per k it
  loads NR/VW vectors of packed B and broadcasts MR scalars of A;
- A (stored M x K) is read in place: row r of a tile through its own pointer, with row indices
  clamped to M-1 on the last, partial tile so nothing past A is ever read. A transposed A (stored
  K x M) is packed per MC-row block into MR-row, k-major panels (one masked load and store of MR
  lanes per k): read in place, every k of a tile would touch a new cache line, M elements apart;
- B is packed into NR-wide, k-major panels right before the panel's first use (during the first
  MC block, so it is still in cache). A transposed B (stored N x K) is packed by loading VW x VW
  blocks (VW rows of B along k), transposing them in registers with shuffles and storing k-rows;
- blocking: jc over NC columns -> ic over MC rows -> jr over NR-wide panels -> ir over MR rows.
  K is never blocked, so each tile's epilogue runs once, on finished values. Measured on this
  project's Emerald Rapids host, NC=128, MC=144 was as good as or better than the notes' Zen 4
  choice NC=1024, MC=72 (see benchmarks/gemm.py); with a transposed A, every column block
  re-packs A, so NC=1024 there. Packed A panels are a cache line apart beyond K*MR elements, so
  that the MC/MR panels written per k do not all map to the same L1 sets;
- tried on Emerald Rapids and not adopted (interleaved in one process, one thread against MKL
  through torch, and the two-thread training step; the code is not kept): K blocking (KC=128-512,
  partial tiles in an MC x NR scratch, the epilogue after the last block) was 0.86-1.03x of the
  unblocked GEMM, and 0.92x in the large step: the B micro-panel streaming from L2 is not what
  limits it. Software prefetch of packed B and of A: +0.5-1.5% on one thread, within noise, none on
  two. A transposed A read in place: 1.07x at M=512 but 0.51x at M=2048 (every k a new line 8 KB
  away, in one L1 set). The GEMM runs at about 83% of this host's FMA peak (185 GFLOP/s a core,
  measured), MKL at about 88%; packing a transposed A (0.25 ns an element, once per column block)
  is 2-4% of the K=512 backward GEMMs;
- the last panel of a column block may be narrower than NR: it is packed with a stride of
  ceil(cols / VW) vectors and multiplied by a narrower micro-kernel variant (1..3 vectors). Its
  padding columns (zeros, or copies of the last real column) only reach tile columns the epilogue
  is told not to read.

Compile time: the micro-kernels (one per width, 1..NVEC vectors, shared by in-place and packed A
through a run-time row stride and k step) and the packing routines are internal `noinline`
functions emitted once per module (`_shared`, named by dtype, vector width and shape), called from
the GEMMs' blocking loops. The seed network's training step (5 matmul kernels) compiled in ~1.0 s
with a GEMM inlined per kernel, ~0.4 s with shared helpers in the model's module, and ~0.1 s (after
the process's first model) with the GEMMs in the shared runtime, at the same GFLOP/s
(benchmarks/gemm.py). The epilogue call per tile costs nothing measurable: a tile is MR x NR x K
multiply-adds. Branches around the helpers' calls that are invariant in the blocking loops are
avoided where possible (the pack routine tests its `run` flag itself): LLVM's loop unswitching
would copy the loops per branch.

Threads: a GEMM call computes only the rows [m_begin, m_end) and columns [n_begin, n_end) of C.
Splitting N at multiples of NR across threads gives each thread its own panels of B to pack, but
every thread packs all of a transposed A; splitting M (at multiples of MR) the other way round.
Each thread needs its own `pack` region of `pack_elements(K, width of its range)` elements. So that
a large GEMM's columns can go in many chunks to whichever thread claims them (backends/chunks.py),
its threads first pack all of a transposed A between them (`pack_a_rows`, by rows); the GEMM
variant `prepacked_a` then reads it, and packs only B.

Only alignment that is provable is claimed: the tile buffer is a 64-byte aligned alloca; the pack
region is realigned to 64 bytes at run time (that is what `pack_elements`' slack pays for) but
its loads and stores claim only element alignment; A, B and C are accessed with element alignment.
"""
from __future__ import annotations

import copy
import functools
from dataclasses import dataclass, replace
from typing import Callable

from llvmlite import ir

from gradc.backends import runtime
from gradc.backends.codegen import FunctionBody, FunctionBuilder, emit_loop
from gradc.backends.mathlib import broadcast

I1 = ir.IntType(1)
I8 = ir.IntType(8)
I32 = ir.IntType(32)
I64 = ir.IntType(64)

NUW_NSW = ("nuw", "nsw")
PACK_ALIGN = 64          # bytes; the pack region is realigned to this at run time
PACK_SLACK = 16          # extra elements per packed k row (>= PACK_ALIGN bytes for f32 and f64)
A_PANEL_PAD = 16         # elements between packed A panels when K >= 64 (a cache line or two)

# emits the IR run on each finished tile (rows NR elements apart): (i0, j0, rows, cols, tile) -> None
Epilogue = Callable[[ir.Value, ir.Value, ir.Value, ir.Value, ir.Value], None]


@functools.lru_cache(maxsize=1)
def host_vector_bytes() -> int:
    """64 with AVX-512F, 32 with AVX2 (or anything less: 32-byte vectors are then split by LLVM)."""
    from .jit import host_feature_map  # jit imports this module (through llvm)
    return 64 if host_feature_map().get("avx512f", False) else 32


def _dtype_name(fty: ir.Type) -> str:
    return "f32" if element_bytes(fty) == 4 else "f64"


def element_bytes(fty: ir.Type) -> int:
    if isinstance(fty, ir.FloatType):
        return 4
    if isinstance(fty, ir.DoubleType):
        return 8
    raise TypeError(f"gemm: unsupported element type {fty}")


@dataclass(frozen=True)
class GemmConfig:
    """Micro-kernel shape and blocking. `nc`, `mc` are rounded down to multiples of NR and MR."""

    mr: int = 6                 # rows of the micro-kernel
    nvec: int = 0               # vectors per row (NR = nvec * VW); 0: 4 with 64-byte vectors (24 of
                                # the 32 zmm registers), 2 with 32-byte ones (12 of 16 ymm)
    vector_bytes: int = 0       # 0: the host's (64 with AVX-512, else 32)
    nc: int = 128               # columns of B packed per block
    nc_packed_a: int = 1024     # the same when A is packed (transposed A): each block re-packs A
    mc: int = 144               # rows of A per block
    unroll: int = 4             # K-loop unroll factor (a power of 2)
    pack_a: int = 0             # 1: pack A even when not transposed (transposed A always is)

    def resolved(self) -> GemmConfig:
        vector_bytes = self.vector_bytes or host_vector_bytes()
        return replace(self, vector_bytes=vector_bytes, nvec=self.nvec or (4 if vector_bytes >= 64 else 2))

    def vw(self, fty: ir.Type) -> int:
        return self.resolved().vector_bytes // element_bytes(fty)

    def nr(self, fty: ir.Type) -> int:
        return self.resolved().nvec * self.vw(fty)


DEFAULT_CONFIG = GemmConfig()


def gemm_nr(fty: ir.Type, config: GemmConfig | None = None) -> int:
    """Output columns per micro-kernel tile: thread ranges cut at multiples of it keep panels whole."""
    return (config or DEFAULT_CONFIG).nr(fty)


def gemm_mr(config: GemmConfig | None = None) -> int:
    """Rows per micro-kernel tile: thread ranges cut at multiples of it keep tiles whole."""
    return (config or DEFAULT_CONFIG).mr


def pack_elements(K: int | str, N: int | str, config: GemmConfig | None = None, *,
                  transpose_a: bool | None = None) -> tuple:
    """Size of the `pack` scratch a GEMM call needs, in elements of the GEMM's float type, as factors.

    The caller multiplies the factors (ints, or the dims K and N as given, e.g. symbol names) at run
    time. The result is (K, W) with W a Python int: the packed width of one column block of B (NC,
    or N rounded up to NR when N is a known int smaller than that), plus MC for the packed block of
    a transposed A, plus PACK_SLACK elements per k row, which is room to realign the region to 64
    bytes. It is an upper bound valid for f32 and f64 and any vector width (NR is taken as the
    widest one, f32 with 64-byte vectors), and for either transpose_a unless `transpose_a` is given
    (False needs less: no A block, and the smaller NC). The region needs no particular alignment.
    Pass the same `config` as to the GEMM if it is not the default. For a range of columns, N
    is the width of the range.
    """
    cfg = config or DEFAULT_CONFIG
    nr_max = (cfg.nvec or 4) * max(cfg.vector_bytes, 64) // 4
    packed_a = cfg.pack_a or transpose_a is not False
    nc = max(cfg.nc, cfg.nc_packed_a) if packed_a else cfg.nc
    width = min(nc, -(-max(N, 1) // nr_max) * nr_max) if isinstance(N, int) else nc
    slack = PACK_SLACK
    if packed_a:  # realignment plus the A panels' padding, paid only when K >= 64
        slack = max(slack, -(-(PACK_SLACK + -(-cfg.mc // cfg.mr) * A_PANEL_PAD) // 64))
    return (K, max(width, nr_max) + (cfg.mc if packed_a else 0) + slack)


# -- small IR helpers --------------------------------------------------------------------------------

def _const(v: int) -> ir.Constant:
    return ir.Constant(I64, v)


def _min(b: ir.IRBuilder, x: ir.Value, y: ir.Value) -> ir.Value:
    return b.select(b.icmp_signed("<", x, y), x, y)


def _for(fb: FunctionBuilder, start: ir.Value, stop: ir.Value, step: int,
         body: Callable[[ir.Value], None], name: str) -> None:
    emit_loop(fb.b, start, stop, step, body, name)


def _if(fb: FunctionBuilder, cond: ir.Value, then: Callable[[], None], name: str) -> None:
    b = fb.b
    yes = fb.fn.append_basic_block(f"{name}.then")
    join = fb.fn.append_basic_block(f"{name}.join")
    b.cbranch(cond, yes, join)
    b.position_at_end(yes)
    then()
    b.branch(join)
    b.position_at_end(join)


def _ptr(b: ir.IRBuilder, base: ir.Value, offset: ir.Value, ty: ir.Type) -> ir.Value:
    """Address of base[offset] (element type of base), as a pointer to ty."""
    p = b.gep(base, [offset], inbounds=True)
    return p if p.type == ty.as_pointer() else b.bitcast(p, ty.as_pointer())


def _fma(module: ir.Module, vty: ir.VectorType) -> ir.Function:
    # declared by hand: llvmlite's declare_intrinsic needs `intrinsic_name`, which VectorType lacks
    name = f"llvm.fma.v{vty.count}{vty.element.intrinsic_name}"
    if name in module.globals:
        return module.globals[name]
    return ir.Function(module, ir.FunctionType(vty, [vty, vty, vty]), name)


def _masked_load(module: ir.Module, vty: ir.VectorType) -> ir.Function:
    # The pre-LLVM-22 signature with an explicit i32 alignment: LLVM 22 auto-upgrades it (to an
    # `align` parameter attribute) and older LLVMs take it as is.
    name = f"llvm.masked.load.v{vty.count}{vty.element.intrinsic_name}.p0"
    if name in module.globals:
        return module.globals[name]
    mask = ir.VectorType(I1, vty.count)
    fnty = ir.FunctionType(vty, [ir.IntType(8).as_pointer(), I32, mask, vty])
    return ir.Function(module, fnty, name)


def _masked_store(module: ir.Module, vty: ir.VectorType) -> ir.Function:
    name = f"llvm.masked.store.v{vty.count}{vty.element.intrinsic_name}.p0"
    if name in module.globals:
        return module.globals[name]
    mask = ir.VectorType(I1, vty.count)
    fnty = ir.FunctionType(ir.VoidType(), [vty, ir.IntType(8).as_pointer(), I32, mask])
    return ir.Function(module, fnty, name)


def _transpose(b: ir.IRBuilder, rows: list[ir.Value]) -> list[ir.Value]:
    """Transpose n vectors of n lanes (n a power of 2): out[c][t] = rows[t][c].

    log2(n) stages, each swapping one bit of the row index with the same bit of the lane index by
    n two-input shuffles.
    """
    n = len(rows)
    rows = list(rows)
    mask_ty = ir.VectorType(I32, n)
    bit = 1
    while bit < n:
        lo = ir.Constant(mask_ty, [c if not c & bit else n + (c ^ bit) for c in range(n)])
        hi = ir.Constant(mask_ty, [(c ^ bit) if not c & bit else n + c for c in range(n)])
        out = list(rows)
        for t0 in range(n):
            if t0 & bit:
                continue
            t1 = t0 | bit
            out[t0] = b.shuffle_vector(rows[t0], rows[t1], lo)
            out[t1] = b.shuffle_vector(rows[t0], rows[t1], hi)
        rows = out
        bit <<= 1
    return rows


# -- shared helper functions -----------------------------------------------------------------------

def _shared(module: ir.Module, name: str, args: list[tuple[str, ir.Type]], noalias: tuple[int, ...],
            emit: Callable[[FunctionBody, list], None]) -> ir.Function:
    """The module's internal, never-inlined `void name(args)`, emitted by `emit` on first use.

    Every GEMM of the runtime module (one per dtype, transpose pair and configuration) calls the
    same micro-kernels and packing routines: LLVM optimizes and compiles each once.
    """
    if name in module.globals:
        return module.globals[name]
    fn = ir.Function(module, ir.FunctionType(ir.VoidType(), [t for _, t in args]), name)
    fn.linkage = "internal"
    fn.attributes.add("noinline")
    fn.attributes.add("nounwind")
    for arg, (arg_name, _) in zip(fn.args, args):
        arg.name = arg_name
    for i in noalias:
        fn.args[i].add_attribute("noalias")
    body = FunctionBody(fn)
    emit(body, list(fn.args))
    body.b.ret_void()
    return fn


# -- the GEMM --------------------------------------------------------------------------------------

class _Gemm:
    def __init__(self, fb: FunctionBuilder, fty: ir.Type, a: ir.Value, b: ir.Value,
                 M: ir.Value, N: ir.Value, K: ir.Value, transpose_a: bool, transpose_b: bool,
                 pack: ir.Value, epilogue: Epilogue, config: GemmConfig | None, prepacked_a: bool = False) -> None:
        cfg = (config or DEFAULT_CONFIG).resolved()
        self.fb, self.fty, self.cfg = fb, fty, cfg
        self.ta, self.tb = transpose_a, transpose_b
        self.M, self.N, self.K = M, N, K
        self.esize = element_bytes(fty)
        self.vw = cfg.vector_bytes // self.esize
        self.mr, self.nv = cfg.mr, cfg.nvec
        self.nr = self.nv * self.vw
        # transposed A is packed per MC block (in place, each k of a tile would be a new cache line)
        self.packed_a = bool(transpose_a or cfg.pack_a)
        self.prepacked_a = prepacked_a  # `a` is all of op(A), packed by the caller (`pack_a_rows`)
        nc = cfg.nc_packed_a if self.packed_a and not prepacked_a else cfg.nc
        self.nc = max(self.nr, nc // self.nr * self.nr)
        self.mc = max(self.mr, cfg.mc // self.mr * self.mr)
        assert cfg.unroll >= 1 and cfg.unroll & (cfg.unroll - 1) == 0, "unroll must be a power of 2"
        self.vty = ir.VectorType(fty, self.vw)
        self.epilogue = epilogue
        bld = fb.b
        pty = fty.as_pointer()
        self.a = bld.bitcast(a, pty) if a.type != pty else a
        self.b = bld.bitcast(b, pty) if b.type != pty else b
        # the pack region, realigned to PACK_ALIGN bytes with a GEP (never int->ptr)
        raw = bld.bitcast(pack, I8.as_pointer())
        mis = bld.and_(bld.sub(_const(0), bld.ptrtoint(raw, I64)), _const(PACK_ALIGN - 1))
        self.pack = bld.bitcast(bld.gep(raw, [mis], inbounds=True), pty)
        tile = fb.entry_alloca(ir.ArrayType(fty, self.mr * self.nr), "gemm.tile")
        tile.align = 64
        self.tile = bld.bitcast(tile, pty)

    def _inside(self, body: FunctionBody, **fields) -> _Gemm:
        """A copy of this GEMM's emitter that emits into a shared helper, with some values replaced."""
        sub = copy.copy(self)
        sub.fb = body
        for name, value in fields.items():
            setattr(sub, name, value)
        return sub

    def _tag(self) -> str:
        return f"{_dtype_name(self.fty)}.w{self.vw}"

    # -- packing B ---------------------------------------------------------------------------------
    def pack_panel(self, dst: ir.Value, j0: ir.Value, cols: ir.Value, nvec: ir.Value, run: ir.Value) -> None:
        """If `run`: dst[k*nrp + j] = op(B)[k, j0 + j] for j < cols, nrp = nvec*VW; padding up to nrp.

        A call of the module's shared packing routine for this dtype, transpose and shape. The
        condition is tested inside: a branch around the call would be loop-invariant in the kernel's
        blocking loops, and LLVM's loop unswitching would duplicate them (and the epilogue)."""
        pty = self.fty.as_pointer()

        def emit(body, args):
            dst_, b_, N_, K_, j0_, cols_, nvec_, run_ = args
            sub = self._inside(body, b=b_, N=N_, K=K_)
            if self.tb:
                _if(body, run_, lambda: sub._pack_panel_transposed(dst_, j0_, cols_, nvec_), "run")
            else:
                _if(body, run_, lambda: sub._pack_panel_rows(dst_, j0_, cols_, nvec_), "run")
        fn = _shared(self.fb.fn.module, f"gradc.gemm.pack_b.{self._tag()}.n{self.nv}.t{int(self.tb)}",
                     [("dst", pty), ("b", pty), ("N", I64), ("K", I64), ("j0", I64), ("cols", I64),
                      ("nvec", I64), ("run", I1)], (0,), emit)
        self.fb.b.call(fn, [dst, self.b, self.N, self.K, j0, cols, nvec, run])

    def _pack_panel_rows(self, dst, j0, cols, nvec) -> None:
        fb, bld, vty = self.fb, self.fb.b, self.vty
        full = bld.icmp_signed("==", cols, _const(self.nr))
        yes = fb.fn.append_basic_block("pack.full")
        edge = fb.fn.append_basic_block("pack.edge")
        join = fb.fn.append_basic_block("pack.join")
        bld.cbranch(full, yes, edge)

        bld.position_at_end(yes)

        def row_full(k):
            src = bld.add(bld.mul(k, self.N, flags=NUW_NSW), j0, flags=NUW_NSW)
            out = bld.mul(k, _const(self.nr), flags=NUW_NSW)
            for v in range(self.nv):
                x = bld.load(_ptr(bld, self.b, bld.add(src, _const(v * self.vw), flags=NUW_NSW), vty),
                             align=self.esize)
                bld.store(x, _ptr(bld, dst, bld.add(out, _const(v * self.vw), flags=NUW_NSW), vty),
                          align=self.esize)
        _for(fb, _const(0), self.K, 1, row_full, "pack.k")
        bld.branch(join)

        bld.position_at_end(edge)
        nrp = bld.mul(nvec, _const(self.vw), flags=NUW_NSW)
        lanes = ir.Constant(ir.VectorType(I64, self.vw), list(range(self.vw)))
        masked_load = _masked_load(fb.fn.module, vty)
        zero = ir.Constant(vty, None)

        def row_edge(k):
            src = bld.add(bld.mul(k, self.N, flags=NUW_NSW), j0, flags=NUW_NSW)
            out = bld.mul(k, nrp, flags=NUW_NSW)

            def vec(v):
                first = bld.mul(v, _const(self.vw), flags=NUW_NSW)
                left = bld.sub(cols, first)  # > 0 for every v < nvec
                mask = bld.icmp_signed("<", lanes, broadcast(bld, left, self.vw))
                p = bld.bitcast(bld.gep(self.b, [bld.add(src, first, flags=NUW_NSW)], inbounds=True),
                                I8.as_pointer())
                x = bld.call(masked_load, [p, ir.Constant(I32, self.esize), mask, zero])
                bld.store(x, _ptr(bld, dst, bld.add(out, first, flags=NUW_NSW), vty), align=self.esize)
            _for(fb, _const(0), nvec, 1, vec, "pack.v")
        _for(fb, _const(0), self.K, 1, row_edge, "pack.ke")
        bld.branch(join)
        bld.position_at_end(join)

    def _pack_panel_transposed(self, dst, j0, cols, nvec) -> None:
        """B stored N x K: op(B)[k, j] = b[j*K + k].

        VW x VW blocks (VW rows of B, VW consecutive k) are loaded as VW vectors, transposed in
        registers with shuffles and stored as VW k-rows of the panel; the last K % VW k-rows are
        copied element by element. Rows of B past the panel's `cols` are read as copies of its last
        row (padding columns only feed tile columns the epilogue never reads).
        """
        fb, bld, fty, vty, vw = self.fb, self.fb.b, self.fty, self.vty, self.vw
        nrp = bld.mul(nvec, _const(vw), flags=NUW_NSW)
        last = bld.sub(cols, _const(1))
        kfull = bld.and_(self.K, _const(-vw))

        def vector_column(jv):
            col0 = bld.mul(jv, _const(vw), flags=NUW_NSW)
            srcs = []
            for t in range(vw):
                j = _min(bld, bld.add(col0, _const(t), flags=NUW_NSW), last)
                srcs.append(bld.gep(self.b, [bld.mul(bld.add(j0, j, flags=NUW_NSW), self.K, flags=NUW_NSW)],
                                    inbounds=True))

            def block(kb):
                rows = [bld.load(_ptr(bld, srcs[t], kb, vty), align=self.esize) for t in range(vw)]
                for c, x in enumerate(_transpose(bld, rows)):
                    k = bld.add(kb, _const(c), flags=NUW_NSW)
                    out = bld.add(bld.mul(k, nrp, flags=NUW_NSW), col0, flags=NUW_NSW)
                    bld.store(x, _ptr(bld, dst, out, vty), align=self.esize)
            _for(fb, _const(0), kfull, vw, block, "packt.kb")
        _for(fb, _const(0), nvec, 1, vector_column, "packt.v")

        def k_row(k):
            def elem(j):
                src = bld.mul(bld.add(j0, _min(bld, j, last), flags=NUW_NSW), self.K, flags=NUW_NSW)
                x = bld.load(_ptr(bld, self.b, bld.add(src, k, flags=NUW_NSW), fty))
                bld.store(x, _ptr(bld, dst, bld.add(bld.mul(k, nrp, flags=NUW_NSW), j, flags=NUW_NSW), fty))
            _for(fb, _const(0), nrp, 1, elem, "packt.j")
        _for(fb, kfull, self.K, 1, k_row, "packt.k")

    # -- packing A (transposed A; any A with config pack_a=1) ---------------------------------------
    def pack_a(self, dst: ir.Value, ic: ir.Value, mc: ir.Value) -> None:
        """A call of the module's shared routine packing rows [ic, ic + mc) of op(A) (_pack_a)."""
        pty = self.fty.as_pointer()

        def emit(body, args):
            dst_, a_, M_, K_, ic_, mc_, stride_ = args
            self._inside(body, a=a_, M=M_, K=K_, a_panel_stride=stride_)._pack_a(dst_, ic_, mc_)
        fn = _shared(self.fb.fn.module, f"gradc.gemm.pack_a.{self._tag()}.m{self.mr}.t{int(self.ta)}",
                     [("dst", pty), ("a", pty), ("M", I64), ("K", I64), ("ic", I64), ("mc", I64),
                      ("panel_stride", I64)], (0,), emit)
        self.fb.b.call(fn, [dst, self.a, self.M, self.K, ic, mc, self.a_panel_stride])

    def _pack_a(self, dst: ir.Value, ic: ir.Value, mc: ir.Value) -> None:
        """A stored K x M: panels of MR rows, k-major: dst[p*K*MR + k*MR + r] = a[k*M + ic + p*MR + r].

        Rows past M are zeros. One masked load and one masked store of MR lanes per k and panel.
        """
        fb, bld, mr = self.fb, self.fb.b, self.mr
        if not self.ta:
            return self._pack_a_rows(dst, ic, mc)
        lanes_n = max(mr, 2) if mr & (mr - 1) == 0 else 1 << mr.bit_length()
        avty = ir.VectorType(self.fty, lanes_n)
        ity = ir.VectorType(I64, lanes_n)
        lanes = ir.Constant(ity, list(range(lanes_n)))
        masked_load = _masked_load(fb.fn.module, avty)
        masked_store = _masked_store(fb.fn.module, avty)
        store_mask = ir.Constant(ir.VectorType(I1, lanes_n), [int(i < mr) for i in range(lanes_n)])
        zero = ir.Constant(avty, None)

        def k_row(k):  # k outer: each k reads one contiguous stretch of A's row k
            row = bld.gep(self.a, [bld.add(bld.mul(k, self.M, flags=NUW_NSW), ic, flags=NUW_NSW)], inbounds=True)
            out_k = bld.gep(dst, [bld.mul(k, _const(mr), flags=NUW_NSW)], inbounds=True)

            def panel(p0):
                rows = _min(bld, _const(mr), bld.sub(mc, p0))
                mask = bld.icmp_signed("<", lanes, broadcast(bld, rows, lanes_n))
                src = bld.bitcast(bld.gep(row, [p0], inbounds=True), I8.as_pointer())
                x = bld.call(masked_load, [src, ir.Constant(I32, self.esize), mask, zero])
                o = bld.gep(out_k, [self.a_panel_offset(p0)], inbounds=True)
                bld.call(masked_store, [x, bld.bitcast(o, I8.as_pointer()), ir.Constant(I32, self.esize),
                                        store_mask])
            _for(fb, _const(0), mc, mr, panel, "packa.p")
        _for(fb, _const(0), self.K, 1, k_row, "packa.k")

    def _pack_a_rows(self, dst, ic, mc) -> None:
        """A stored M x K (only with config pack_a=1): element copies, rows past M clamped."""
        fb, bld, mr = self.fb, self.fb.b, self.mr
        last = bld.sub(self.M, _const(1))

        def panel(p0):
            out = bld.gep(dst, [self.a_panel_offset(p0)], inbounds=True)
            srcs = [bld.gep(self.a, [bld.mul(_min(bld, bld.add(ic, bld.add(p0, _const(r), flags=NUW_NSW),
                                                              flags=NUW_NSW), last), self.K, flags=NUW_NSW)],
                            inbounds=True) for r in range(mr)]

            def k_row(k):
                for r in range(mr):
                    x = bld.load(bld.gep(srcs[r], [k], inbounds=True))
                    bld.store(x, bld.gep(out, [bld.add(bld.mul(k, _const(mr), flags=NUW_NSW), _const(r),
                                                       flags=NUW_NSW)], inbounds=True))
            _for(fb, _const(0), self.K, 1, k_row, "packa.k")
        _for(fb, _const(0), mc, mr, panel, "packa.p")

    def panel_stride(self) -> ir.Value:
        """Elements between packed A panels: K*MR, plus a cache line once K >= 64 (with K*MR*esize
        often a multiple of 4 KB, the MC/MR panel streams written per k would share L1 sets)."""
        bld = self.fb.b
        pad = bld.select(bld.icmp_signed(">=", self.K, _const(64)), _const(A_PANEL_PAD), _const(0))
        return bld.add(bld.mul(self.K, _const(self.mr), flags=NUW_NSW), pad, flags=NUW_NSW)

    def a_panel_offset(self, row: ir.Value) -> ir.Value:
        """Offset in the packed A block of the panel starting at block row `row` (a multiple of MR)."""
        bld = self.fb.b
        return bld.mul(bld.udiv(row, _const(self.mr)), self.a_panel_stride, flags=NUW_NSW)

    # -- micro-kernel ------------------------------------------------------------------------------
    def microkernel_fn(self, nvec: int) -> ir.Function:
        """The module's shared micro-kernel of `nvec` vectors (see call_microkernel)."""
        pty = self.fty.as_pointer()

        def emit(body, args):
            tile_, panel_, a_, stride_, kstep_, rows_, K_ = args
            sub = self._inside(body, K=K_, tile=tile_)
            bld = body.b
            last = bld.sub(rows_, _const(1))
            ptrs = [a_ if r == 0 else bld.gep(a_, [bld.mul(_min(bld, _const(r), last), stride_,
                                                            flags=NUW_NSW)], inbounds=True)
                    for r in range(self.mr)]
            sub.microkernel(nvec, ptrs, kstep_, panel_)
        name = f"gradc.gemm.kernel.{self._tag()}.{self.mr}x{nvec}of{self.nv}.u{self.cfg.unroll}"
        return _shared(self.fb.fn.module, name, [("tile", pty), ("panel", pty), ("a", pty),
                                                 ("row_stride", I64), ("k_step", I64), ("rows", I64),
                                                 ("K", I64)], (0,), emit)

    def call_microkernel(self, fn: ir.Value, a: ir.Value, row_stride: ir.Value, rows: ir.Value,
                         panel: ir.Value) -> None:
        """The tile of `rows` rows of A from `a` (in place: rows `row_stride` apart, rows past the
        last clamped to it; packed A: a k-major MR-row panel) times the packed panel, stored into
        the tile buffer by `fn`, one of the micro-kernels (`microkernel_fn`)."""
        if self.packed_a:  # rows r of the panel at a + r, k steps of MR
            args = [_const(1), _const(self.mr), _const(self.mr)]
        else:
            args = [row_stride, _const(1), rows]
        self.fb.b.call(fn, [self.tile, panel, a] + args + [self.K])

    def microkernel(self, nvec: int, rows: list[ir.Value], a_step: int | ir.Value, panel: ir.Value) -> None:
        """tile[r*NR + v*VW ...] = sum_k rows[r][k*a_step] * panel[k*nrp + v*VW ...], nrp = nvec*VW."""
        fb, bld, vty, K = self.fb, self.fb.b, self.vty, self.K
        mr, vw = self.mr, self.vw
        U = self.cfg.unroll if nvec == self.nv else min(self.cfg.unroll, 2)  # narrow: last panel only
        nrp = nvec * vw
        fma = _fma(fb.fn.module, vty)
        zero = ir.Constant(vty, None)
        kstep = None if isinstance(a_step, int) and a_step == 1 else \
            (_const(a_step) if isinstance(a_step, int) else a_step)

        def step(kk, accs):
            bv = [bld.load(_ptr(bld, panel, bld.add(bld.mul(kk, _const(nrp), flags=NUW_NSW),
                                                    _const(v * vw), flags=NUW_NSW), vty),
                           align=self.esize) for v in range(nvec)]
            aoff = kk if kstep is None else bld.mul(kk, kstep, flags=NUW_NSW)
            out = []
            for r in range(mr):
                s = broadcast(bld, bld.load(_ptr(bld, rows[r], aoff, self.fty)), vty.count)
                out.append([bld.call(fma, [s, bv[v], accs[r][v]]) for v in range(nvec)])
            return out

        pre = bld.block
        header = fb.fn.append_basic_block("mk.header")
        body = fb.fn.append_basic_block("mk.body")
        rheader = fb.fn.append_basic_block("mk.rem.header")
        rbody = fb.fn.append_basic_block("mk.rem.body")
        done = fb.fn.append_basic_block("mk.done")
        kmain = bld.and_(K, _const(-U))
        bld.branch(header)

        bld.position_at_end(header)
        k = bld.phi(I64, name="k")
        k.add_incoming(_const(0), pre)
        accs = [[bld.phi(vty, name=f"acc{r}.{v}") for v in range(nvec)] for r in range(mr)]
        for row in accs:
            for phi in row:
                phi.add_incoming(zero, pre)
        bld.cbranch(bld.icmp_signed("<", k, kmain), body, rheader)

        bld.position_at_end(body)
        cur = accs
        for u in range(U):
            cur = step(k if u == 0 else bld.add(k, _const(u), flags=NUW_NSW), cur)
        k.add_incoming(bld.add(k, _const(U), flags=NUW_NSW), bld.block)
        for r in range(mr):
            for v in range(nvec):
                accs[r][v].add_incoming(cur[r][v], bld.block)
        bld.branch(header)

        bld.position_at_end(rheader)
        k2 = bld.phi(I64, name="k.rem")
        k2.add_incoming(k, header)
        accs2 = [[bld.phi(vty, name=f"acc{r}.{v}.rem") for v in range(nvec)] for r in range(mr)]
        for r in range(mr):
            for v in range(nvec):
                accs2[r][v].add_incoming(accs[r][v], header)
        bld.cbranch(bld.icmp_signed("<", k2, K), rbody, done)

        bld.position_at_end(rbody)
        cur = step(k2, accs2)
        k2.add_incoming(bld.add(k2, _const(1), flags=NUW_NSW), bld.block)
        for r in range(mr):
            for v in range(nvec):
                accs2[r][v].add_incoming(cur[r][v], bld.block)
        bld.branch(rheader)

        bld.position_at_end(done)
        for r in range(mr):
            for v in range(nvec):
                bld.store(accs2[r][v], _ptr(bld, self.tile, _const(r * self.nr + v * vw), vty),
                          align=min(64, self.vw * self.esize))

    # -- blocking ----------------------------------------------------------------------------------
    def emit_range(self, n_begin: ir.Value, n_end: ir.Value, m_begin: ir.Value, m_end: ir.Value) -> None:
        fb, bld = self.fb, self.fb.b
        if self.packed_a:
            self.a_panel_stride = self.panel_stride()
        if self.prepacked_a:
            self.apack = self.a
        elif self.packed_a:  # after the widest B block this range packs: min(NC, round_up(width, NR))
            width = bld.and_(bld.add(bld.sub(n_end, n_begin), _const(self.nr - 1)), _const(-self.nr))
            width = _min(bld, _const(self.nc), width)
            self.apack = bld.gep(self.pack, [bld.mul(self.K, width, flags=NUW_NSW)], inbounds=True)
        kernels = [self.microkernel_fn(v) for v in range(1, self.nv + 1)]

        def column_block(jc):
            nc = _min(bld, _const(self.nc), bld.sub(n_end, jc))

            def row_block(ic):
                mc = _min(bld, _const(self.mc), bld.sub(m_end, ic))
                first = bld.icmp_signed("==", ic, m_begin)

                if self.packed_a and not self.prepacked_a:
                    self.pack_a(self.apack, ic, mc)

                def panel(jr):
                    cols = _min(bld, _const(self.nr), bld.sub(nc, jr))
                    nvec = bld.udiv(bld.add(cols, _const(self.vw - 1)), _const(self.vw))
                    dst = bld.gep(self.pack, [bld.mul(jr, self.K, flags=NUW_NSW)], inbounds=True)
                    j0 = bld.add(jc, jr, flags=NUW_NSW)
                    self.pack_panel(dst, j0, cols, nvec, first)

                    def tile(ir_):
                        i0 = bld.add(ic, ir_, flags=NUW_NSW)
                        rows = _min(bld, _const(self.mr), bld.sub(mc, ir_))
                        if self.packed_a:  # a block of A (its panels from ic on), or all of it
                            row = i0 if self.prepacked_a else ir_
                            base = bld.gep(self.apack, [self.a_panel_offset(row)], inbounds=True)
                        else:
                            base = bld.gep(self.a, [bld.mul(i0, self.K, flags=NUW_NSW)], inbounds=True)
                        # direct calls (measured: an indirect call through a select of the
                        # kernels was up to 1.3x slower at K=32: the caller then knows nothing of
                        # what the call touches)
                        join = fb.fn.append_basic_block("gemm.kernel.join")
                        blocks = [fb.fn.append_basic_block(f"gemm.kernel{v}") for v in range(1, self.nv + 1)]
                        sw = bld.switch(nvec, blocks[-1])
                        for v in range(1, self.nv):
                            sw.add_case(_const(v), blocks[v - 1])
                        for kernel, block in zip(kernels, blocks):
                            bld.position_at_end(block)
                            self.call_microkernel(kernel, base, self.K, rows, dst)
                            bld.branch(join)
                        bld.position_at_end(join)
                        self.epilogue(i0, j0, rows, cols, self.tile)
                    _for(fb, _const(0), mc, self.mr, tile, "gemm.ir")
                _for(fb, _const(0), nc, self.nr, panel, "gemm.jr")
            _for(fb, m_begin, m_end, self.mc, row_block, "gemm.ic")
        _for(fb, n_begin, n_end, self.nc, column_block, "gemm.jc")


# -- the GEMM as a runtime function ------------------------------------------------------------------

PTR = I8.as_pointer()
EPILOGUE_TYPE = ir.FunctionType(ir.VoidType(), [PTR, I64, I64, I64, I64, PTR])
"""`void epilogue(ptr context, i64 i0, i64 j0, i64 rows, i64 cols, ptr tile)`: called by the GEMM
for every finished tile, with the context pointer the caller passed (see `emit_gemm_call`)."""
TILE_ARGS = [("i0", I64), ("j0", I64), ("rows", I64), ("cols", I64), ("tile", PTR)]
"""The trailing arguments of a tile epilogue's body (see `define_epilogue`)."""
ROW_EPILOGUE_TYPE = ir.FunctionType(ir.VoidType(), [PTR, I64, I64, I64, PTR])
"""`void row_epilogue(ptr context, i64 i, i64 j0, i64 cols, ptr row)`: what the runtime's
`tile_rows` epilogue calls for each row of a tile, in order (see `define_epilogue`)."""
ROW_ARGS = [("i", I64), ("j0", I64), ("cols", I64), ("row", PTR)]
"""The trailing arguments of a row epilogue's body (see `define_epilogue`)."""
GEMM_TYPE = ir.FunctionType(ir.VoidType(), [PTR, PTR, PTR] + [I64] * 7 + [PTR, PTR])
GEMM_ARGS = ["a", "b", "pack", "M", "N", "K", "n_begin", "n_end", "m_begin", "m_end", "epilogue", "context"]


def gemm_name(fty: ir.Type, transpose_a: bool, transpose_b: bool, config: GemmConfig | None = None,
              prepacked_a: bool = False) -> str:
    """The runtime name of a GEMM: it spells out everything the code depends on."""
    cfg = (config or DEFAULT_CONFIG).resolved()
    return (f"{runtime.PREFIX}gemm.{_dtype_name(fty)}.t{int(transpose_a)}{int(transpose_b)}.v{cfg.vector_bytes}"
            f".{cfg.mr}x{cfg.nvec}.nc{cfg.nc}-{cfg.nc_packed_a}.mc{cfg.mc}.u{cfg.unroll}.pa{cfg.pack_a}"
            + (".prepacked" if prepacked_a else ""))


def define_gemm(module: ir.Module, fty: ir.Type, transpose_a: bool, transpose_b: bool,
                config: GemmConfig | None = None, prepacked_a: bool = False) -> ir.Function:
    """Define in `module` (once) `void gemm(a, b, pack, M, N, K, n_begin, n_end, m_begin, m_end,
    epilogue, context)`.

    It computes the rows [m_begin, m_end) and columns [n_begin, n_end) of C = op(A) @ op(B)
    (0 <= n_begin <= n_end <= N, the same for rows; all of C: 0, N, 0, M) and calls `epilogue(context,
    i0, j0, rows, cols, tile)` (an EPILOGUE_TYPE function pointer) for every MR x NR tile of C, in no
    particular order, once it is complete: tile[r*NR + c] holds C[i0 + r, j0 + c] for r < rows <= MR,
    c < cols <= NR (NR = gemm_nr); tile[r*NR + c] for cols <= c < NR is padding, safe to read (the
    tile buffer always has NR columns) but never to be stored.
    a: M x K row-major (K x M if transpose_a); b: K x N (N x K if transpose_b); pack: scratch of
    pack_elements(K, n_end - n_begin) elements, private to the call. Column ranges split at multiples
    of NR keep every panel full; row ranges at multiples of MR every tile. `prepacked_a` (transposed
    A only): `a` holds all of A already packed by `pack_a_rows`, which every column range shares.
    """
    assert transpose_a or not prepacked_a, "only a transposed A is packed ahead"
    name = gemm_name(fty, transpose_a, transpose_b, config, prepacked_a)
    if name in module.globals:
        return module.globals[name]
    fn = ir.Function(module, GEMM_TYPE, name)
    fn.attributes.add("nounwind")
    for arg, arg_name in zip(fn.args, GEMM_ARGS):
        arg.name = arg_name
    a, b, pack, M, N, K, n_begin, n_end, m_begin, m_end, epilogue, context = fn.args
    for arg in (a, b, pack):  # only read (a, b) or private (pack); the epilogue writes elsewhere
        arg.add_attribute("noalias")
    body = FunctionBody(fn)
    callback = body.b.bitcast(epilogue, EPILOGUE_TYPE.as_pointer())

    def call_epilogue(i0, j0, rows, cols, tile):
        body.b.call(callback, [context, i0, j0, rows, cols, body.b.bitcast(tile, PTR)])
    _Gemm(body, fty, a, b, M, N, K, transpose_a, transpose_b, pack, call_epilogue,
          config, prepacked_a).emit_range(n_begin, n_end, m_begin, m_end)
    body.b.ret_void()
    return fn


PACK_A_TYPE = ir.FunctionType(ir.VoidType(), [PTR, PTR] + [I64] * 4)


assert A_PANEL_PAD <= 64, "packed_a_elements counts a panel's pad as at most K (paid from K = 64 on)"


def packed_a_elements(M: int | str, K: int | str, config: GemmConfig | None = None) -> tuple:
    """Size of all of a transposed A packed by `pack_a_rows`, in elements, as factors (see
    `pack_elements`): ceil(M / MR) panels (M itself when symbolic) of K*MR elements plus a pad of at
    most K (A_PANEL_PAD <= 64 elements, paid only when K >= 64)."""
    mr = (config or DEFAULT_CONFIG).mr
    return (-(-M // mr) if isinstance(M, int) else M, K, mr + 1)


def pack_a_rows_name(fty: ir.Type, config: GemmConfig | None = None) -> str:
    cfg = (config or DEFAULT_CONFIG).resolved()
    return f"{runtime.PREFIX}gemm.pack_a_rows.{_dtype_name(fty)}.v{cfg.vector_bytes}.mr{cfg.mr}.mc{cfg.mc}"


def define_pack_a_rows(module: ir.Module, fty: ir.Type, config: GemmConfig | None = None) -> ir.Function:
    """Define in `module` (once) `void pack_a_rows(dst, a, M, K, m_begin, m_end)`: rows [m_begin,
    m_end) (m_begin a multiple of MR) of op(A) for a transposed A (stored K x M), packed into `dst`
    (`packed_a_elements`) as a GEMM with `prepacked_a` reads them, so that the threads of a call
    pack A once between them, rather than each all of it."""
    name = pack_a_rows_name(fty, config)
    if name in module.globals:
        return module.globals[name]
    fn = ir.Function(module, PACK_A_TYPE, name)
    fn.attributes.add("nounwind")
    dst, a, M, K, m_begin, m_end = fn.args
    dst.add_attribute("noalias")
    body = FunctionBody(fn)
    bld = body.b
    gemm = _Gemm(body, fty, a, a, M, M, K, True, False, dst, lambda *tile: None, config)
    gemm.a_panel_stride = gemm.panel_stride()
    dst = bld.bitcast(dst, fty.as_pointer())

    def row_block(ic):
        rows = _min(bld, _const(gemm.mc), bld.sub(m_end, ic))
        gemm.pack_a(bld.gep(dst, [gemm.a_panel_offset(ic)], inbounds=True), ic, rows)
    _for(body, m_begin, m_end, gemm.mc, row_block, "pack_a.ic")
    bld.ret_void()
    return fn


def emit_pack_a_rows(bld: ir.IRBuilder, fty: ir.Type, dst: ir.Value, a: ir.Value, M: ir.Value, K: ir.Value,
                     m_begin: ir.Value, m_end: ir.Value, *, config: GemmConfig | None = None) -> None:
    """Call the shared runtime's `pack_a_rows` at bld's position."""
    fn = runtime.declare(bld.module, pack_a_rows_name(fty, config), PACK_A_TYPE,
                         functools.partial(define_pack_a_rows, fty=fty, config=config))
    bld.call(fn, [bld.bitcast(dst, PTR), bld.bitcast(a, PTR), M, K, m_begin, m_end])


def emit_gemm_call(bld: ir.IRBuilder, fty: ir.Type, a: ir.Value, b: ir.Value, pack: ir.Value,
                   M: ir.Value, N: ir.Value, K: ir.Value, transpose_a: bool, transpose_b: bool,
                   epilogue: ir.Function, context: ir.Value, n_begin: ir.Value, n_end: ir.Value,
                   m_begin: ir.Value, m_end: ir.Value, *, config: GemmConfig | None = None,
                   prepacked_a: bool | ir.Value = False) -> None:
    """Call the shared runtime's GEMM (`define_gemm`) at bld's position; the module only declares it.
    `prepacked_a` may be decided at run time (an i1): `a` must then agree with it."""
    def declared(prepacked: bool) -> ir.Function:
        return runtime.declare(bld.module, gemm_name(fty, transpose_a, transpose_b, config, prepacked), GEMM_TYPE,
                               functools.partial(define_gemm, fty=fty, transpose_a=transpose_a,
                                                 transpose_b=transpose_b, config=config, prepacked_a=prepacked))
    fn = declared(prepacked_a) if isinstance(prepacked_a, bool) else \
        bld.select(prepacked_a, declared(True), declared(False))
    pointers = [bld.bitcast(x, PTR) for x in (a, b, pack)]
    bld.call(fn, pointers + [M, N, K, n_begin, n_end, m_begin, m_end, bld.bitcast(epilogue, PTR),
                             bld.bitcast(context, PTR)])


def store_epilogue(module: ir.Module, fty: ir.Type, config: GemmConfig | None = None) -> ir.Function:
    """The runtime's EPILOGUE_TYPE function storing each tile into C (M x N row-major), for matmul
    kernels with nothing fused: context = [c, pointer to N as i64]. Shared, so such a kernel adds
    no tile code of its own to a model's module."""
    name = f"{runtime.PREFIX}store_tile.{_dtype_name(fty)}.nr{gemm_nr(fty, config)}"
    return runtime.declare(module, name, EPILOGUE_TYPE,
                           functools.partial(define_store_epilogue, name=name, fty=fty, config=config,
                                             linkage="external"))


def define_store_epilogue(module: ir.Module, name: str, fty: ir.Type, config: GemmConfig | None = None,
                          transform: Callable[[ir.IRBuilder, ir.Value], ir.Value] | None = None,
                          linkage: str = "internal") -> ir.Function:
    """The EPILOGUE_TYPE function `name` storing transform(tile) into C (M x N row-major);
    context = [c, pointer to N as i64] (`store_context`)."""
    fb = FunctionBuilder(module, f"{name}.body", ["c"], {"N": 0}, extra=TILE_ARGS)
    bld, c, N = fb.b, fb.buffers[0], fb.size(["N"])
    i0, j0, rows, cols, tile = fb.extra
    stride = gemm_nr(fty, config)

    def row(r):
        base = bld.add(bld.mul(bld.add(i0, r, flags=NUW_NSW), N, flags=NUW_NSW), j0, flags=NUW_NSW)
        tbase = bld.mul(r, _const(stride), flags=NUW_NSW)

        def col(cc):
            x = bld.load(fb.element(tile, bld.add(tbase, cc, flags=NUW_NSW), fty))
            if transform is not None:
                x = transform(bld, x)
            bld.store(x, fb.element(c, bld.add(base, cc, flags=NUW_NSW), fty))
        fb.loop(cols, col, "epi.c")
    fb.loop(rows, row, "epi.r")
    bld.ret_void()
    return define_epilogue(fb.fn, name, linkage=linkage)


def define_epilogue(body: ir.Function, name: str, linkage: str = "internal", rows: bool = False) -> ir.Function:
    """The EPILOGUE_TYPE function `name` calling `body(context[0], ..., context[n-1], *TILE_ARGS)`;
    with `rows`, the ROW_EPILOGUE_TYPE function calling `body(context[0], ..., *ROW_ARGS)`.

    `body` takes n pointers first, which can then be `noalias` arguments (LLVM keeps that through
    inlining): loaded from the context inside the body, LLVM would know nothing of their aliasing.
    """
    fn = body.module.globals.get(name) or ir.Function(body.module, ROW_EPILOGUE_TYPE if rows else EPILOGUE_TYPE,
                                                      name)
    fn.linkage = linkage
    context, *tile_args = fn.args
    bld = ir.IRBuilder(fn.append_basic_block("entry"))
    slots = bld.bitcast(context, PTR.as_pointer())
    count = len(body.args) - len(ROW_ARGS if rows else TILE_ARGS)
    pointers = [bld.load(bld.gep(slots, [_const(i)], inbounds=True)) for i in range(count)]
    bld.call(body, pointers + tile_args)
    bld.ret_void()
    return fn


def tile_rows(module: ir.Module, fty: ir.Type, config: GemmConfig | None = None) -> ir.Function:
    """The runtime's EPILOGUE_TYPE function that hands each row of a tile, in order, to a model's
    row epilogue: context = [the ROW_EPILOGUE_TYPE function, then that function's own context].

    A fused epilogue is then straight-line vector code over a row's columns, with no loop for LLVM
    to analyse and vectorize: the seed step's model compiled in a quarter to a third less time. The
    loop over rows lives here, compiled once; the GEMM itself still calls once per tile (calling per
    row, it made every plain GEMM pay about 85 instructions a row, and the large step's plain GEMMs
    profiled 5-7% slower in two noisy rounds)."""
    name = f"{runtime.PREFIX}tile_rows.{_dtype_name(fty)}.nr{gemm_nr(fty, config)}"
    return runtime.declare(module, name, EPILOGUE_TYPE,
                           functools.partial(_define_tile_rows, name=name, fty=fty, config=config))


def _define_tile_rows(module: ir.Module, name: str, fty: ir.Type, config: GemmConfig | None) -> ir.Function:
    fn = ir.Function(module, EPILOGUE_TYPE, name)
    context, i0, j0, rows, cols, tile = fn.args
    body = FunctionBody(fn)
    bld = body.b
    slots = bld.bitcast(context, PTR.as_pointer())
    row_epilogue = bld.bitcast(bld.load(slots), ROW_EPILOGUE_TYPE.as_pointer())
    own = bld.bitcast(bld.gep(slots, [_const(1)], inbounds=True), PTR)
    row_bytes = gemm_nr(fty, config) * element_bytes(fty)

    def row(r):
        start = bld.gep(tile, [bld.mul(r, _const(row_bytes), flags=NUW_NSW)], inbounds=True)
        bld.call(row_epilogue, [own, bld.add(i0, r, flags=NUW_NSW), j0, cols, start])
    _for(body, _const(0), rows, 1, row, "rows")
    bld.ret_void()
    return fn


def store_context(bld: ir.IRBuilder, alloca: Callable[[ir.Type, str], ir.Value],
                  pointers: list[ir.Value]) -> ir.Value:
    """A context for `define_epilogue`'s function: an array of `pointers`, in `alloca`'d memory."""
    context = alloca(ir.ArrayType(PTR, len(pointers)), "epilogue.context")
    for i, p in enumerate(pointers):
        bld.store(bld.bitcast(p, PTR), bld.gep(context, [ir.Constant(I32, 0), ir.Constant(I32, i)], inbounds=True))
    return bld.bitcast(context, PTR)


def emit_standalone_gemm(module: ir.Module, name: str, fty: ir.Type, transpose_a: bool, transpose_b: bool,
                         transform: Callable[[ir.IRBuilder, ir.Value], ir.Value] | None = None, *,
                         config: GemmConfig | None = None) -> ir.Function:
    """`void name(ptr c, ptr a, ptr b, ptr pack, i64 M, i64 N, i64 K)`: c = transform(op(a) @ op(b)).

    c is M x N row-major; pack holds pack_elements(K, N) elements. For tests and benchmarks: the
    module defines the GEMM itself (`define_gemm`, the runtime's code) and an epilogue storing
    the tiles into c.
    """
    gemm = define_gemm(module, fty, transpose_a, transpose_b, config)
    epilogue = define_store_epilogue(module, f"{name}.epilogue", fty, config, transform)

    outer = ir.Function(module, ir.FunctionType(ir.VoidType(), [PTR] * 4 + [I64] * 3), name)
    for arg, n in zip(outer.args, ["c", "a", "b", "pack", "M", "N", "K"]):
        arg.name = n
    for arg in outer.args[:4]:
        arg.add_attribute("noalias")
    c, a, b, pack, M, N, K = outer.args
    ob = ir.IRBuilder(outer.append_basic_block("entry"))
    columns = ob.alloca(I64, name="N")
    ob.store(N, columns)
    context = store_context(ob, lambda ty, n: ob.alloca(ty, name=n), [c, columns])
    ob.call(gemm, [a, b, pack, M, N, K, _const(0), N, _const(0), M, ob.bitcast(epilogue, PTR), context])
    ob.ret_void()
    return outer
