"""The emitted GEMM (backends/gemm.py) against numpy: dtypes, transposes, awkward and blocked sizes.

Every variant is a standalone `gemm(c, a, b, pack, M, N, K)` (see `emit_standalone_gemm`); all of
them live in one module, optimized at O3 and JIT-compiled once. Operands and output end right at
an inaccessible guard page, and the pack region (exactly `pack_elements` long, starting one element
past a 64-byte boundary) ends less than 64 bytes before one, so reading or writing past the end of
any of them crashes the test instead of passing silently.
"""
from __future__ import annotations

import ctypes
import itertools
import mmap
import re

import numpy as np
import pytest
from llvmlite import ir
import llvmlite.binding as llvm

from gradc.backends.codegen import FunctionBuilder
from gradc.backends.gemm import (GemmConfig, define_gemm, define_pack_a_rows, define_store_epilogue,
                                 emit_gemm_call, emit_pack_a_rows, emit_standalone_gemm, gemm_mr,
                                 host_vector_bytes, pack_elements, packed_a_elements, store_context)
from gradc.backends.jit import host_target_machine, optimize_module

F32, F64 = ir.FloatType(), ir.DoubleType()
DTYPES = {"f32": (F32, np.float32), "f64": (F64, np.float64)}
TRANSPOSES = [(False, False), (True, False), (False, True), (True, True)]
# small row blocks: several row blocks, column blocks and narrow last panels even on small problems
SMALL_BLOCKS = GemmConfig(nc=128, mc=12)
AVX2_WIDTH = GemmConfig(vector_bytes=32)   # the AVX2 shape (runs on AVX-512 hosts too)


def affine(b: ir.IRBuilder, x: ir.Value) -> ir.Value:
    """x*2 + 1: an epilogue transform that shows up in every element of C exactly once."""
    return b.fadd(b.fmul(x, ir.Constant(x.type, 2.0)), ir.Constant(x.type, 1.0))


# name -> (dtype name, transpose_a, transpose_b, transform, config); names are dtype_<ta><tb>[_...]
VARIANTS = {f"{d}_{int(ta)}{int(tb)}": (d, ta, tb, None, None) for d in DTYPES for ta, tb in TRANSPOSES}
VARIANTS.update({
    "f32_00_affine": ("f32", False, False, affine, None),
    "f32_00_small": ("f32", False, False, None, SMALL_BLOCKS),
    "f32_11_small_affine": ("f32", True, True, affine, SMALL_BLOCKS),
    "f64_01_small": ("f64", False, True, None, SMALL_BLOCKS),
    "f32_10_avx2": ("f32", True, False, None, AVX2_WIDTH),
    "f64_11_avx2_affine": ("f64", True, True, affine, AVX2_WIDTH),
})


def emit_split_gemm(module: ir.Module, name: str, fty: ir.Type, ta: bool, tb: bool, rows: bool) -> None:
    """`name(c, a, b, pack0, pack1, dims=[M, N, K, S])`: columns (or with `rows`, rows) [0, S) and
    [S, N) as two calls of the GEMM, each with its own pack region, the way two threads split work."""
    define_gemm(module, fty, ta, tb)
    epilogue = define_store_epilogue(module, f"{name}.epilogue", fty)
    fb = FunctionBuilder(module, name, ["c", "a", "b", "pack0", "pack1"], {"M": 0, "N": 1, "K": 2, "S": 3})
    fb.fn.linkage = ""  # callable from the test
    c, a, b, pack0, pack1 = fb.buffers
    M, N, K, S = (fb.size([d]) for d in "MNKS")
    bld = fb.b
    columns = fb.entry_alloca(ir.IntType(64), "N")
    bld.store(N, columns)
    context = store_context(bld, fb.entry_alloca, [c, columns])
    zero = ir.Constant(ir.IntType(64), 0)
    if rows:
        emit_gemm_call(bld, fty, a, b, pack0, M, N, K, ta, tb, epilogue, context, zero, N, zero, S)
        emit_gemm_call(bld, fty, a, b, pack1, M, N, K, ta, tb, epilogue, context, zero, N, S, M)
    else:
        emit_gemm_call(bld, fty, a, b, pack0, M, N, K, ta, tb, epilogue, context, zero, S, zero, M)
        emit_gemm_call(bld, fty, a, b, pack1, M, N, K, ta, tb, epilogue, context, S, N, zero, M)
    bld.ret_void()


def emit_prepacked_gemm(module: ir.Module, name: str, fty: ir.Type, tb: bool) -> None:
    """`name(c, a, b, packed_a, pack0, pack1, dims=[M, N, K, S, R])` for a transposed A: rows [0, R)
    and [R, M) of A packed by two `pack_a_rows` calls, then columns [0, S) and [S, N) of C as two
    GEMM calls reading it (`prepacked_a`), each with its own pack region: what two threads do."""
    define_gemm(module, fty, True, tb, prepacked_a=True)
    define_pack_a_rows(module, fty)
    epilogue = define_store_epilogue(module, f"{name}.epilogue", fty)
    fb = FunctionBuilder(module, name, ["c", "a", "b", "packed_a", "pack0", "pack1"],
                         {"M": 0, "N": 1, "K": 2, "S": 3, "R": 4})
    fb.fn.linkage = ""  # callable from the test
    c, a, b, packed_a, pack0, pack1 = fb.buffers
    M, N, K, S, R = (fb.size([d]) for d in "MNKSR")
    bld = fb.b
    emit_pack_a_rows(bld, fty, packed_a, a, M, K, ir.Constant(ir.IntType(64), 0), R)
    emit_pack_a_rows(bld, fty, packed_a, a, M, K, R, M)
    columns = fb.entry_alloca(ir.IntType(64), "N")
    bld.store(N, columns)
    context = store_context(bld, fb.entry_alloca, [c, columns])
    zero = ir.Constant(ir.IntType(64), 0)
    for pack, begin, end in ((pack0, zero, S), (pack1, S, N)):
        emit_gemm_call(bld, fty, packed_a, b, pack, M, N, K, True, tb, epilogue, context, begin, end, zero, M,
                       prepacked_a=True)
    bld.ret_void()


PREPACKED = {f"prepacked_{d}_1{int(tb)}": (d, tb) for d in DTYPES for tb in (False, True)}
SPLITS = {f"split_{'rows' if rows else 'cols'}_f32_{int(ta)}{int(tb)}": (ta, tb, rows)
          for ta, tb in [(False, False), (True, True), (True, False)] for rows in (False, True)}


class Compiled:
    def __init__(self) -> None:
        tm = host_target_machine()
        module = ir.Module("test_gemm")
        module.triple, module.data_layout = tm.triple, str(tm.target_data)
        for name, (d, ta, tb, transform, config) in VARIANTS.items():
            emit_standalone_gemm(module, name, DTYPES[d][0], ta, tb, transform, config=config)
        for name, (ta, tb, rows) in SPLITS.items():
            emit_split_gemm(module, name, F32, ta, tb, rows)
        for name, (d, tb) in PREPACKED.items():
            emit_prepacked_gemm(module, name, DTYPES[d][0], tb)
        self.unoptimized = str(module)
        ref = llvm.parse_assembly(self.unoptimized)
        ref.verify()
        optimize_module(ref, tm)
        self.optimized = str(ref)
        self.engine = llvm.create_mcjit_compiler(ref, tm)
        self.engine.finalize_object()
        proto = ctypes.CFUNCTYPE(None, *[ctypes.c_void_p] * 4, *[ctypes.c_int64] * 3)
        self.fns = {name: proto(self.engine.get_function_address(name)) for name in VARIANTS}
        split = ctypes.CFUNCTYPE(None, *[ctypes.c_void_p] * 6)
        self.splits = {name: split(self.engine.get_function_address(name)) for name in SPLITS}
        prepacked = ctypes.CFUNCTYPE(None, *[ctypes.c_void_p] * 7)
        self.prepacked = {name: prepacked(self.engine.get_function_address(name)) for name in PREPACKED}


@pytest.fixture(scope="module")
def compiled() -> Compiled:
    return Compiled()


class Guarded:
    """Arrays in fresh mappings, each followed by an inaccessible (PROT_NONE) page."""

    _libc = ctypes.CDLL(None, use_errno=True)
    _libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]

    def __init__(self) -> None:
        self.maps = []

    def array(self, shape, dtype, misalign: int | None = None) -> np.ndarray:
        """With `misalign`, the array starts `misalign` bytes past a 64-byte boundary and ends up to
        63 bytes before the guard page; otherwise it ends right at the guard page."""
        dtype = np.dtype(dtype)
        nbytes = int(np.prod(shape)) * dtype.itemsize
        page = mmap.PAGESIZE
        gap = 0 if misalign is None else (page - nbytes - misalign) % 64
        data_pages = max(1, -(-(nbytes + gap) // page))
        mm = mmap.mmap(-1, (data_pages + 1) * page)
        base = ctypes.addressof(ctypes.c_char.from_buffer(mm))
        if self._libc.mprotect(base + data_pages * page, page, 0) != 0:
            raise OSError(ctypes.get_errno(), "mprotect")
        self.maps.append(mm)
        offset = data_pages * page - nbytes - gap
        return np.frombuffer(mm, dtype, int(np.prod(shape)), offset).reshape(shape)


def run(compiled: Compiled, name: str, M: int, N: int, K: int, seed: int = 0, guarded: bool = True):
    d, ta, tb, transform, config = VARIANTS[name]
    dtype = DTYPES[d][1]
    rng = np.random.default_rng(seed)
    g = Guarded() if guarded else None
    alloc = (lambda shape: g.array(shape, dtype)) if guarded else (lambda shape: np.empty(shape, dtype))
    a = alloc((K, M) if ta else (M, K))
    b = alloc((N, K) if tb else (K, N))
    a[...] = rng.standard_normal(a.shape)
    b[...] = rng.standard_normal(b.shape)
    c = alloc((M, N))
    c[...] = np.nan
    # the pack region starts one element past a 64-byte boundary: the GEMM realigns it itself
    size = int(np.prod(pack_elements(K, N, config, transpose_a=ta)))
    isize = np.dtype(dtype).itemsize
    if guarded:
        pack_address = g.array((size,), dtype, misalign=isize).ctypes.data
    else:
        raw = np.empty(size * isize + 128, np.uint8)
        pack_address = (raw.ctypes.data + 63) // 64 * 64 + isize
    compiled.fns[name](c.ctypes.data, a.ctypes.data, b.ctypes.data, pack_address, M, N, K)
    x = a.T if ta else a
    y = b.T if tb else b
    ref = x.astype(np.float64) @ y.astype(np.float64)
    if transform is not None:
        ref = ref * 2 + 1
    return c, ref, x, y


def check(c: np.ndarray, ref: np.ndarray, K: int, dtype) -> None:
    assert not np.isnan(c).any(), "some elements of C were never written"
    eps = np.finfo(dtype).eps
    tol = 4 * eps * max(K, 1) ** 0.5 * 8 + eps * 8
    scale = np.maximum(np.abs(ref), 1.0) if K == 0 else max(1.0, float(np.abs(ref).max()))
    err = np.abs(c.astype(np.float64) - ref) / scale
    assert float(err.max(initial=0.0)) <= tol, f"max relative error {err.max():.3g} > {tol:.3g}"


@pytest.mark.parametrize("name", [n for n in VARIANTS if "_small" not in n])
def test_tiny_and_prime_sizes(compiled, name):
    dtype = DTYPES[VARIANTS[name][0]][1]
    for M, N, K in [(1, 1, 1), (7, 13, 29), (6, 64, 4), (5, 65, 3), (13, 7, 1), (1, 200, 9), (200, 1, 9),
                    (31, 37, 41), (67, 129, 2), (12, 128, 100)]:
        c, ref, _, _ = run(compiled, name, M, N, K, seed=M * 1000 + N + K)
        check(c, ref, K, dtype)


def test_all_sizes_up_to_17(compiled):
    for M, N, K in itertools.product(range(1, 18), repeat=3):
        name = [f"{d}_{t}" for d in DTYPES for t in ("00", "10", "01", "11")][(M + 2 * N + 3 * K) % 8]
        c, ref, _, _ = run(compiled, name, M, N, K, seed=M * 400 + N * 20 + K, guarded=(M + N + K) % 5 == 0)
        check(c, ref, K, DTYPES[name[:3]][1])


@pytest.mark.parametrize("name", [n for n in VARIANTS if "_small" in n])
def test_several_blocks(compiled, name):
    """mc=12: several row blocks, column blocks, narrow last panels and clamped rows."""
    dtype = DTYPES[VARIANTS[name][0]][1]
    for M, N, K in [(25, 300, 17), (12, 128, 5), (13, 129, 64), (73, 257, 3), (37, 191, 33)]:
        c, ref, _, _ = run(compiled, name, M, N, K, seed=M + N + K)
        check(c, ref, K, dtype)


@pytest.mark.parametrize("name", ["f32_00", "f64_11", "f32_00_affine", "f32_11_small_affine"])
def test_k_zero_gives_zeros(compiled, name):
    c, ref, _, _ = run(compiled, name, 9, 70, 0)
    expected = 1.0 if VARIANTS[name][3] is not None else 0.0
    assert np.all(c == expected)
    for M, N in [(0, 5), (5, 0), (0, 0)]:
        c, ref, _, _ = run(compiled, name, M, N, 3)
        assert c.shape == (M, N)


@pytest.mark.parametrize("name", ["f32_00", "f32_10", "f32_01", "f32_11", "f64_00", "f32_00_affine"])
def test_layer_sized(compiled, name):
    """256 x 784 x 1024 (M x K x N), spanning a whole column block plus ragged panels."""
    c, ref, _, _ = run(compiled, name, 256, 1024, 784, guarded=False)
    check(c, ref, 784, DTYPES[VARIANTS[name][0]][1])


def test_column_block_boundary(compiled):
    """N just past one and two default column blocks."""
    nc = GemmConfig().nc
    for name in ["f32_00", "f32_01", "f64_10"]:
        for N in (nc + 1, 2 * nc + 65):
            c, ref, _, _ = run(compiled, name, 7, N, 11)
            check(c, ref, 11, c.dtype)


def test_epilogue_transform_placement(compiled):
    """x*2+1 applied once per element (so never on partial sums, never twice, never skipped)."""
    for name in ["f32_00_affine", "f32_11_small_affine", "f64_11_avx2_affine"]:
        c, ref, x, y = run(compiled, name, 19, 75, 23)
        check(c, ref, 23, c.dtype)
        np.testing.assert_allclose(c, 2 * (x @ y) + 1, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("name", list(SPLITS))
def test_row_and_column_ranges_with_private_packs(compiled, name):
    """Two GEMM calls over columns (or rows) [0, S) and [S, N), each with its own pack region."""
    ta, tb, rows = SPLITS[name]
    rng = np.random.default_rng(1)
    cases = [(13, 300, 37, 128), (7, 70, 5, 64), (20, 200, 16, 0), (20, 200, 16, 200), (9, 131, 3, 67)]
    if rows:  # S splits M, at multiples of MR (6) or anywhere
        cases = [(300, 13, 37, 126), (70, 7, 5, 64), (200, 20, 16, 0), (200, 20, 16, 200), (131, 9, 3, 67)]
    for M, N, K, S in cases:
        g = Guarded()
        a = g.array((K, M) if ta else (M, K), np.float32)
        b = g.array((N, K) if tb else (K, N), np.float32)
        a[...] = rng.standard_normal(a.shape)
        b[...] = rng.standard_normal(b.shape)
        c = g.array((M, N), np.float32)
        c[...] = np.nan
        packs = [g.array((int(np.prod(pack_elements(K, w, transpose_a=ta))),), np.float32, misalign=4)
                 for w in ((N, N) if rows else (S, N - S))]
        dims = np.array([M, N, K, S], np.int64)
        compiled.splits[name](c.ctypes.data, a.ctypes.data, b.ctypes.data, packs[0].ctypes.data,
                              packs[1].ctypes.data, dims.ctypes.data)
        ref = (a.T if ta else a).astype(np.float64) @ (b.T if tb else b).astype(np.float64)
        check(c, ref, K, np.float32)


@pytest.mark.parametrize("name", list(PREPACKED))
def test_a_transposed_a_packed_once_serves_every_column_range(compiled, name):
    """All of a transposed A packed ahead in two row ranges (`pack_a_rows`, into exactly
    `packed_a_elements`, ending at a guard page), then read by two GEMM calls over column ranges."""
    d, tb = PREPACKED[name]
    dtype = DTYPES[d][1]
    rng = np.random.default_rng(2)
    mr = gemm_mr()
    # K below and above 64 (panels padded apart), partial last panels, empty ranges, K = 0
    cases = [(13, 300, 37, 128, mr), (7, 70, 5, 64, 0), (200, 20, 16, 0, 96), (131, 9, 70, 9, 66),
             (300, 130, 64, 64, 150), (1, 1, 1, 1, 0), (20, 33, 0, 17, 12)]
    for M, N, K, S, R in cases:
        g = Guarded()
        a = g.array((K, M), dtype)
        b = g.array((N, K) if tb else (K, N), dtype)
        a[...] = rng.standard_normal(a.shape)
        b[...] = rng.standard_normal(b.shape)
        c = g.array((M, N), dtype)
        c[...] = np.nan
        packed_a = g.array((max(1, int(np.prod(packed_a_elements(M, K)))),), dtype)
        packs = [g.array((int(np.prod(pack_elements(K, w, transpose_a=False))),), dtype, misalign=4)
                 for w in (S, N - S)]
        dims = np.array([M, N, K, S, R], np.int64)
        compiled.prepacked[name](c.ctypes.data, a.ctypes.data, b.ctypes.data, packed_a.ctypes.data,
                                 packs[0].ctypes.data, packs[1].ctypes.data, dims.ctypes.data)
        ref = a.T.astype(np.float64) @ (b.T if tb else b).astype(np.float64)
        check(c, ref, K, dtype)


def test_vector_fma_in_optimized_ir(compiled):
    width = host_vector_bytes() // 4
    fma = re.findall(rf"call <{width} x float> @llvm\.fma\.v{width}f32\(", compiled.optimized)
    assert len(fma) >= 24, "the f32 micro-kernel should be explicit vector FMAs"
    width64 = host_vector_bytes() // 8
    assert re.search(rf"call <{width64} x double> @llvm\.fma\.v{width64}f64\(", compiled.optimized)
    assert "<4 x double> @llvm.fma.v4f64(" in compiled.optimized  # the AVX2-shaped variant
    # no external calls besides LLVM intrinsics (an unresolved symbol would crash at call time)
    declared = re.findall(r"^declare .*?@([\w.]+)\(", compiled.optimized, re.M)
    assert all(name.startswith("llvm.") for name in declared), declared


def test_pack_elements():
    cfg = GemmConfig()
    nc, nca, mc = cfg.nc, cfg.nc_packed_a, cfg.mc
    assert pack_elements("K", "N") == ("K", max(nc, nca) + mc + 16)  # a bound for either transpose_a
    assert pack_elements("K", "N", transpose_a=False) == ("K", nc + 16)
    assert pack_elements("K", "N", transpose_a=True) == ("K", nca + mc + 16)
    assert pack_elements(784, 10) == (784, 64 + mc + 16)
    assert pack_elements(784, 10, transpose_a=False) == (784, 64 + 16)
    assert pack_elements(784, 100000, transpose_a=False) == (784, nc + 16)
    assert pack_elements("K", 5000, transpose_a=True) == ("K", nca + mc + 16)
    assert pack_elements(3, "N", GemmConfig(nc=1024, mc=12), transpose_a=False) == (3, 1024 + 16)
