"""GEMM, measured: GFLOP/s of gradc's emitted matmul (backends/gemm.py) against numpy.matmul.

    python benchmarks/gemm.py [--dtype f32] [--sizes 256,512,1024,2048,64x784x128,256x784x1024]
                              [--seconds 2] [--config nc=1024,mc=72 --config nc=512,mc=144 ...]
                              [--transpose ab] [--no-threads]

numpy runs single-threaded in this process (OPENBLAS_NUM_THREADS=1 is set before numpy is imported);
numpy with its default thread count is measured in a subprocess afterwards (not interleaved, so
OpenBLAS's spinning threads cannot disturb our single-threaded timings). Each size runs rounds of
one call of every variant, in rotating order, until the time budget is spent; the table reports the
median GFLOP/s and, because the machine may be shared, the best round too. Sizes are M x K x N
(C = A @ B with A: M x K); a single number means a square problem.
"""
from __future__ import annotations

import os

if __name__ == "__main__" and os.environ.get("_GRADC_BENCH_NUMPY_DEFAULT") is None:
    os.environ["OPENBLAS_NUM_THREADS"] = "1"  # before numpy is imported

import argparse
import ctypes
import json
import subprocess
import sys
import time

import numpy as np

DEFAULT_SIZES = "256,512,1024,2048,64x784x128,256x784x1024"


def parse_sizes(text: str) -> list[tuple[int, int, int]]:
    sizes = []
    for item in text.split(","):
        parts = [int(x) for x in item.lower().split("x")]
        sizes.append((parts[0],) * 3 if len(parts) == 1 else tuple(parts))
    return sizes


def operands(M: int, K: int, N: int, dtype, ta: bool, tb: bool, seed: int = 0):
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((K, M) if ta else (M, K)).astype(dtype)
    b = rng.standard_normal((N, K) if tb else (K, N)).astype(dtype)
    return a, b


def numpy_default_threads(sizes, dtype_name: str, ta: bool, tb: bool, seconds: float) -> dict:
    """GFLOP/s of numpy with its default thread count, from a fresh process."""
    env = dict(os.environ, _GRADC_BENCH_NUMPY_DEFAULT="1")
    env.pop("OPENBLAS_NUM_THREADS", None)
    code = (
        "import json,sys,time,numpy as np\n"
        "sys.path.insert(0, %r)\n"
        "from gemm import operands, measure_numpy\n"
        "out = {}\n"
        "for M, K, N in %r:\n"
        "    a, b = operands(M, K, N, np.%s, %r, %r)\n"
        "    out['%%dx%%dx%%d' %% (M, K, N)] = measure_numpy(a, b, %r, %r, %r)\n"
        "print(json.dumps(out))\n"
    ) % (os.path.dirname(os.path.abspath(__file__)), [tuple(s) for s in sizes],
         "float32" if dtype_name == "f32" else "float64", ta, tb, ta, tb, seconds)
    try:
        result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                                check=True, timeout=600)
        return json.loads(result.stdout.strip().splitlines()[-1])
    except Exception as e:  # the table is still useful without this column
        print(f"(numpy default threads not measured: {e})", file=sys.stderr)
        return {}


def measure_numpy(a, b, ta: bool, tb: bool, seconds: float) -> float:
    x = a.T if ta else a
    y = b.T if tb else b
    M, K = x.shape
    N = y.shape[1]
    x @ y
    times = []
    end = time.perf_counter() + seconds
    while len(times) < 5 or (time.perf_counter() < end and len(times) < 500):
        t = time.perf_counter()
        x @ y
        times.append(time.perf_counter() - t)
    return 2.0 * M * N * K / float(np.median(times)) / 1e9


class Compiled:
    """A standalone `gemm(c, a, b, pack, M, N, K)` for one dtype, transpose pair and config."""

    def __init__(self, dtype_name: str, ta: bool, tb: bool, config=None) -> None:
        from llvmlite import ir
        import llvmlite.binding as llvm
        from gradc.backends.gemm import emit_standalone_gemm
        from gradc.backends.jit import host_target_machine, optimize_module

        fty = ir.FloatType() if dtype_name == "f32" else ir.DoubleType()
        tm = host_target_machine()
        module = ir.Module("gemm_bench")
        module.triple, module.data_layout = tm.triple, str(tm.target_data)
        emit_standalone_gemm(module, "gemm", fty, ta, tb, config=config)
        start = time.perf_counter()
        ref = llvm.parse_assembly(str(module))
        ref.verify()
        optimize_module(ref, tm)
        self.engine = llvm.create_mcjit_compiler(ref, tm)
        self.engine.finalize_object()
        self.compile_seconds = time.perf_counter() - start
        self.fn = ctypes.CFUNCTYPE(None, *[ctypes.c_void_p] * 4, *[ctypes.c_int64] * 3)(
            self.engine.get_function_address("gemm"))
        self.config = config


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dtype", choices=["f32", "f64"], default="f32")
    parser.add_argument("--sizes", default=DEFAULT_SIZES)
    parser.add_argument("--seconds", type=float, default=2.0, help="time budget per size")
    parser.add_argument("--config", action="append", default=[],
                        help="GemmConfig fields, e.g. nc=512,mc=144 (repeatable: variants compared)")
    parser.add_argument("--transpose", default="", help="'a', 'b' or 'ab': transposed operands")
    parser.add_argument("--no-threads", action="store_true", help="skip numpy with default threads")
    args = parser.parse_args()

    from gradc.backends.gemm import GemmConfig, pack_elements

    dtype = np.float32 if args.dtype == "f32" else np.float64
    ta, tb = "a" in args.transpose, "b" in args.transpose
    sizes = parse_sizes(args.sizes)
    configs = []
    for text in args.config or [""]:
        fields = dict(item.split("=") for item in text.split(",") if item)
        configs.append((text or "gradc", GemmConfig(**{k: int(v) for k, v in fields.items()})))
    variants = [(name, Compiled(args.dtype, ta, tb, cfg)) for name, cfg in configs]
    for name, v in variants:
        print(f"compiled {name}: {v.compile_seconds:.2f} s", file=sys.stderr)

    rows = []
    for M, K, N in sizes:
        a, b = operands(M, K, N, dtype, ta, tb)
        x, y = (a.T if ta else a), (b.T if tb else b)
        c = np.empty((M, N), dtype)
        count = max(int(np.prod(pack_elements(K, N, cfg))) for _, cfg in configs)
        pack = np.empty(max(count, 1), dtype)
        pa, pb, pc, pp = a.ctypes.data, b.ctypes.data, c.ctypes.data, pack.ctypes.data
        ref = x @ y
        calls = [("numpy 1T", lambda: x @ y)]
        for name, v in variants:
            fn = v.fn
            v.fn(pc, pa, pb, pp, M, N, K)
            err = float(np.max(np.abs(c - ref))) / max(1.0, float(np.max(np.abs(ref))))
            if err > (1e-4 if dtype == np.float32 else 1e-10):
                print(f"WARNING: {name} {M}x{K}x{N}: relative max error {err:.2e}", file=sys.stderr)
            calls.append((name, lambda fn=fn: fn(pc, pa, pb, pp, M, N, K)))
        wall = {name: [] for name, _ in calls}
        end = time.perf_counter() + args.seconds
        rnd = 0
        while rnd < 5 or (time.perf_counter() < end and rnd < 2000):
            order = calls if rnd % 2 == 0 else calls[::-1]
            for name, call in order:
                t0 = time.perf_counter()
                call()
                wall[name].append(time.perf_counter() - t0)
            rnd += 1
        flops = 2.0 * M * N * K
        ref_times = np.array(wall["numpy 1T"])
        result = {}
        for name, ts in wall.items():
            ts = np.array(ts)
            result[name] = dict(median=flops / np.median(ts) / 1e9, best=flops / ts.min() / 1e9,
                                # numpy's time over ours in the same round, so that slow phases of a
                                # shared machine cancel out
                                paired=float(np.median(ref_times / ts)))
        rows.append(((M, K, N), rnd, result))
        print(f"{M}x{K}x{N}: {rnd} rounds", file=sys.stderr)

    default = {} if args.no_threads else numpy_default_threads(sizes, args.dtype, ta, tb, args.seconds)

    names = [name for name, _ in variants]
    import llvmlite.binding as llvm
    from gradc.backends.gemm import host_vector_bytes
    try:
        blas = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
        blas = f"{blas.get('name')} {blas.get('version')}"
    except Exception:
        blas = "?"
    print(f"\nhost {llvm.get_host_cpu_name()} ({host_vector_bytes()}-byte vectors), numpy {np.__version__} "
          f"with {blas}; compile time per GEMM module: "
          + ", ".join(f"{n} {v.compile_seconds:.2f} s" for n, v in variants))
    print(f"GFLOP/s, {args.dtype}, C = {'A^T' if ta else 'A'} @ {'B^T' if tb else 'B'}, one thread.")
    print("Rounds call every variant once, interleaved. GFLOP/s: median (best) over rounds; "
          "ratio: median over rounds of numpy's time / ours in the same round (>1: gradc faster).\n")
    header = ["M x K x N", "rounds", "numpy 1T"] + [f"{n}" for n in names] + [f"ratio {n}" for n in names] + \
        ([] if args.no_threads else ["numpy default threads"])
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for (M, K, N), rnd, res in rows:
        cell = lambda r: f"{r['median']:.1f} ({r['best']:.1f})"
        cells = [f"{M}x{K}x{N}", str(rnd), cell(res["numpy 1T"])] + [cell(res[n]) for n in names] + \
            [f"{res[n]['paired']:.2f}" for n in names]
        if not args.no_threads:
            d = default.get(f"{M}x{K}x{N}")
            cells.append("-" if d is None else f"{d:.1f}")
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
