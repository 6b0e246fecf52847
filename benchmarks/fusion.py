"""Fusion, measured: kernels, temporary bytes and time of the seed network's training step, unfused vs fused.

    python benchmarks/fusion.py [--batch 256 --n 784 --m 1024 --p 10 --repeats 20]
"""
from __future__ import annotations

import argparse
import time

import numpy as np

import gradc as gc
from gradc.backends.jit import NativeFunction
from gradc.ir.fusion import fuse, unfused


def loss(U: gc.f32["m", "n"], V: gc.f32["p", "m"], x: gc.f32["B", "n"], y: gc.f32["B", "p"]):
    f = x @ U.T
    g = gc.sigmoid(f)
    h = g @ V.T
    return gc.mean((h - y) ** 2)


def median_time(fn, args, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn(*args)
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--n", type=int, default=784)
    parser.add_argument("--m", type=int, default=1024)
    parser.add_argument("--p", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    dims = {"B": args.batch, "n": args.n, "m": args.m, "p": args.p}

    graph = gc.value_and_grad(loss, wrt=("U", "V")).lower().graphs["optimized"]
    variants = {"unfused": NativeFunction(graph, unfused(graph)), "fused": NativeFunction(graph, fuse(graph))}
    rng = np.random.default_rng(0)
    arrays = [rng.standard_normal(s).astype(np.float32) * 0.1 for s in
              [(args.m, args.n), (args.p, args.m), (args.batch, args.n), (args.batch, args.p)]]
    results = {name: fn(*arrays) for name, fn in variants.items()}
    for a, b in zip(results["unfused"], results["fused"]):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)

    print(f"seed network value_and_grad step, B={args.batch} n={args.n} m={args.m} p={args.p}, float32")
    print(f"{'variant':<9} {'kernels':>7} {'values MB':>10} {'workspace MB':>13}  values written to memory")
    for name, fn in variants.items():
        temps = sorted(n or "?" for n in fn.memory.value_names())
        print(f"{name:<9} {fn.kernel_count:>7} {fn.memory.values_nbytes(dims) / 1e6:>10.3f} "
              f"{fn.memory.nbytes(dims) / 1e6:>13.3f}  {', '.join(temps)}")
    print("(values: intermediates stored between kernels; workspace: their shared slots plus GEMM packing)")
    # interleaved repeats so machine noise hits both variants alike
    times = {name: [] for name in variants}
    for _ in range(3):
        for name, fn in variants.items():
            times[name].append(median_time(fn, arrays, args.repeats))
    unfused_t, fused_t = (float(np.median(times[n])) for n in ("unfused", "fused"))
    print(f"time ratio unfused/fused: {unfused_t / fused_t:.2f}x  (fused is faster when > 1)")


if __name__ == "__main__":
    main()
