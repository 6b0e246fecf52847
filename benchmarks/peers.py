"""Peers, measured: the seed network's training step in gradc against numpy by hand, JAX and PyTorch.

    python benchmarks/peers.py [--sizes tiny,small,medium,large] [--repeats 15] [--quick]
                               [--single-threaded] [--settle 0.2] [--without jax,torch]
                               [--skip step,matmul,compile,overhead]

    pip install -e '.[bench]'     # JAX and PyTorch (CPU build); without them their columns say so

The step is the loss and its gradients with respect to U and V, float32:

    f = x Uᵀ, g = σ(f), h = g Vᵀ, L = mean((h − y)²)
    dh = 2 (h − y) / N, dV = dhᵀ g, dU = (dh V ⊙ g ⊙ (1 − g))ᵀ x

Contenders: gradc (`gc.value_and_grad(loss, wrt=("U", "V"))`, called with numpy arrays), numpy
written by hand (the formulas above), `jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))` on arrays
already on the device (calls block until the result is ready), and PyTorch eager autograd
(`torch.autograd.grad`). Every contender's result is checked against the same formulas in float64.

Sections: (1) the training step at each size; (2) a matmul alone, C = A @ B square, in GFLOP/s;
(3) the cold compile time of the step (a fresh gc.value_and_grad object's first call against a fresh
`jax.jit`'s first call, at the size "small"); (4) the per-call overhead of a tiny compiled function.

Timing: every section runs `--repeats` rounds; a round takes one sample of every contender, in an
order that rotates from round to round, so that a slow phase of a shared machine hits all of them.
Before each sample the script pauses (`--settle`, 0.2 s) so that the previous contender's thread
pool, which busy-waits for a while after a call, is asleep and does not compete with the next.
A sample of a fast call times a loop of calls (sized to last about 10 ms) and divides. Tables show
the median over rounds; a ratio is the median over rounds of (peer's time / gradc's time) in the same
round: above 1, gradc is faster. "cores used" is the process's CPU time over wall time while a
contender ran. Threads: gradc one per CPU it may run on; numpy (OpenBLAS) and JAX (XLA) with their default thread
counts; PyTorch with torch.set_num_threads(2). --single-threaded asks each contender for one thread and
pins every thread of the process to one CPU.
"""
from __future__ import annotations

import argparse
import ctypes
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

import gradc as gc

SIZES = {  # name: (B, n, m, p) -- x: B x n, U: m x n, V: p x m, y: B x p
    "tiny": (32, 64, 32, 10),
    "small": (64, 784, 128, 10),
    "medium": (256, 784, 1024, 10),
    "large": (512, 2048, 2048, 512),
}
MATMUL_SIZES = (256, 512, 1024, 2048)
TORCH_THREADS = 2  # the machine has 2 cores; more threads would only oversubscribe them
SAMPLE_SECONDS = 0.010  # a sample of a fast call loops for about this long
# Pause before each sample, so that the previous contender's idle thread pool (OpenBLAS and OpenMP
# threads busy-wait for a while after a call) has gone to sleep and does not compete with the next.
SETTLE_SECONDS = 0.2  # --settle; 0.05 s was too short for torch's OpenMP pool here, 0.1-0.2 s enough
TOLERANCE = 1e-3  # max |result - float64 reference| / max |reference|, per output
PEERS = ("numpy", "jax", "torch")
NOT_INSTALLED = "not installed"


# ----------------------------------------------------------------------------- optional peers

def import_peers(without: set[str], single_threaded: bool):
    jax = jnp = torch = None
    if single_threaded:  # before jax is imported: XLA reads its flags once
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                                   " --xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1").strip()
    if "jax" not in without:
        try:
            import jax
            import jax.numpy as jnp
        except ImportError:
            jax = jnp = None
    if "torch" not in without:
        try:
            import torch
            torch.set_num_threads(1 if single_threaded else TORCH_THREADS)
        except ImportError:
            torch = None
    return jax, jnp, torch


# ----------------------------------------------------------------------------- the step, five ways

def gradc_loss(U, V, x, y):
    f = x @ U.T
    g = gc.sigmoid(f)
    h = g @ V.T
    return gc.mean((h - y) ** 2)


def numpy_step(U, V, x, y):
    """The hand-derived step, in the arrays' own dtype."""
    g = 1 / (1 + np.exp(-(x @ U.T)))
    h = g @ V.T
    r = h - y
    dh = 2 * r / r.size
    return np.mean(r * r), (dh @ V * g * (1 - g)).T @ x, dh.T @ g


def reference(U, V, x, y):
    """numpy_step in float64: what every contender is checked against."""
    return numpy_step(*(a.astype(np.float64) for a in (U, V, x, y)))


def make_jax_loss(jnp, jax):
    def loss(U, V, x, y):  # a new function object each time: no cache of jax's can know it
        h = jax.nn.sigmoid(x @ U.T) @ V.T
        return jnp.mean((h - y) ** 2)
    return loss


def step_contenders(arrays, jax, jnp, torch):
    """name -> (call, to_numpy): call() runs one step to completion; to_numpy(result) -> (L, dU, dV)."""
    U, V, x, y = arrays
    step = gc.value_and_grad(gradc_loss, wrt=("U", "V"))
    out = {
        "gradc": (lambda: step(U, V, x, y), lambda r: (r[0], *r[1])),
        "numpy": (lambda: numpy_step(U, V, x, y), lambda r: r),
    }
    if jax is not None:
        jstep = jax.jit(jax.value_and_grad(make_jax_loss(jnp, jax), argnums=(0, 1)))
        jargs = [jax.device_put(a) for a in arrays]
        out["jax"] = (lambda: jax.block_until_ready(jstep(*jargs)),
                      lambda r: (np.asarray(r[0]), *(np.asarray(g) for g in r[1])))
    if torch is not None:
        Ut, Vt = (torch.from_numpy(a).requires_grad_() for a in (U, V))
        xt, yt = (torch.from_numpy(a) for a in (x, y))

        def torch_step():
            h = torch.sigmoid(xt @ Ut.T) @ Vt.T
            L = torch.mean((h - yt) ** 2)
            dU, dV = torch.autograd.grad(L, (Ut, Vt))
            return L.detach(), dU, dV

        out["torch"] = (torch_step, lambda r: tuple(t.numpy() for t in r))
    return out


def make_arrays(B, n, m, p, seed=0):
    rng = np.random.default_rng(seed)
    U = rng.standard_normal((m, n), dtype=np.float32) / np.float32(math.sqrt(n))
    V = rng.standard_normal((p, m), dtype=np.float32) / np.float32(math.sqrt(m))
    x = rng.standard_normal((B, n), dtype=np.float32)
    y = rng.standard_normal((B, p), dtype=np.float32)
    return U, V, x, y


def relative_error(results, ref) -> float:
    err = 0.0
    for got, want in zip(results, ref):
        got = np.asarray(got, dtype=np.float64)
        scale = max(float(np.max(np.abs(want))), 1e-30)
        err = max(err, float(np.max(np.abs(got - want))) / scale)
    return err


# ----------------------------------------------------------------------------- timing

def inner_count(call) -> int:
    """How many calls one sample loops over, so that it lasts about SAMPLE_SECONDS."""
    start = time.perf_counter()
    call()
    once = time.perf_counter() - start
    if once >= SAMPLE_SECONDS:
        return 1
    start = time.perf_counter()
    for _ in range(10):
        call()
    once = (time.perf_counter() - start) / 10
    return max(1, min(100_000, math.ceil(SAMPLE_SECONDS / max(once, 1e-9))))


def sample(call, count: int) -> tuple[float, float]:
    """(wall seconds, CPU seconds of the whole process, every thread) for `count` calls."""
    cpu, start = time.process_time(), time.perf_counter()
    for _ in range(count):
        call()
    return time.perf_counter() - start, time.process_time() - cpu


class Timings(dict):
    """name -> seconds per call, one entry per round; `.cores[name]`: CPU time / wall time over all rounds."""
    cores: dict[str, float]


def interleaved(calls: dict, repeats: int) -> Timings:
    """Seconds per call of each contender, one sample per round, order rotating each round."""
    counts = {name: inner_count(call) for name, call in calls.items()}
    names = list(calls)
    times, wall, cpu = Timings({name: [] for name in names}), dict.fromkeys(names, 0.0), dict.fromkeys(names, 0.0)
    for r in range(repeats):
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            if SETTLE_SECONDS > 0:
                time.sleep(SETTLE_SECONDS)
            w, c = sample(calls[name], counts[name])
            times[name].append(w / counts[name])
            wall[name] += w
            cpu[name] += c
    times.cores = {name: cpu[name] / max(wall[name], 1e-12) for name in names}
    return times


def cores_cell(times: Timings) -> str:
    """'gradc/numpy/jax/torch' cores used, '-' for a peer not measured."""
    return "/".join(f"{times.cores[c]:.1f}" if c in times.cores else "-" for c in ("gradc",) + PEERS)


def median(ts) -> float:
    return float(statistics.median(ts))


def paired_ratio(times, peer, base="gradc") -> float:
    return median([p / b for p, b in zip(times[peer], times[base])])


class OtherLoad:
    """How many CPUs other processes kept busy while a table was measured (from /proc/stat, Linux)."""

    def __enter__(self):
        self.start = self._read()
        return self

    def __exit__(self, *exc):
        self.end = self._read()

    @staticmethod
    def _read():
        try:
            with open("/proc/stat") as f:
                fields = [int(v) for v in f.readline().split()[1:]]
        except (OSError, ValueError):
            return None
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
        busy = (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")  # user..steal; guest is in user
        own = os.times()
        return time.perf_counter(), busy, own.user + own.system

    def line(self) -> str:
        if self.start is None or self.end is None:
            return ""
        wall = self.end[0] - self.start[0]
        others = max(0.0, (self.end[1] - self.start[1]) - (self.end[2] - self.start[2])) / max(wall, 1e-9)
        return (f"(other processes kept {others:.1f} of {os.cpu_count()} CPUs busy during this table; "
                f"took {wall:.0f} s)")


def fmt_time(seconds: float) -> str:
    if seconds < 1e-3:
        return f"{seconds * 1e6:.1f} µs"
    if seconds < 1.0:
        return f"{seconds * 1e3:.2f} ms"
    return f"{seconds:.2f} s"


def table(header, rows) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- sections

def bench_steps(sizes, repeats, jax, jnp, torch) -> tuple[str, bool]:
    rows, ok = [], True
    for name in sizes:
        B, n, m, p = SIZES[name]
        arrays = make_arrays(B, n, m, p)
        ref = reference(*arrays)
        contenders = step_contenders(arrays, jax, jnp, torch)
        errors = {}
        for cname, (call, to_numpy) in contenders.items():  # first call: compiles; checked here
            errors[cname] = relative_error(to_numpy(call()), ref)
        bad = [c for c, e in errors.items() if not e <= TOLERANCE]
        ok = ok and not bad
        times = interleaved({c: call for c, (call, _) in contenders.items()}, repeats)
        cells = [name, f"{B}, {n}, {m}, {p}", fmt_time(median(times["gradc"]))]
        cells += [fmt_time(median(times[c])) if c in times else NOT_INSTALLED for c in PEERS]
        cells += [f"{paired_ratio(times, c):.2f}" if c in times else "-" for c in PEERS]
        cells.append(cores_cell(times))
        cells.append(("FAIL " + ", ".join(f"{c} {errors[c]:.1e}" for c in bad)) if bad else
                     f"ok, max {max(errors.values()):.1e}")
        rows.append(cells)
    header = ["size", "B, n, m, p", "gradc", "numpy", "jax", "torch",
              "numpy/gradc", "jax/gradc", "torch/gradc", "cores used g/n/j/t", "check vs float64"]
    return table(header, rows), ok


def bench_matmul(sizes, repeats, jax, jnp, torch) -> tuple[str, bool]:
    mm = gc.jit(lambda a, b: a @ b)
    rows, ok = [], True
    for N in sizes:
        rng = np.random.default_rng(N)
        a = rng.standard_normal((N, N), dtype=np.float32)
        b = rng.standard_normal((N, N), dtype=np.float32)
        want = a.astype(np.float64) @ b.astype(np.float64)
        calls = {"gradc": lambda: mm(a, b), "numpy": lambda: np.matmul(a, b)}
        if jax is not None:
            jmm = jax.jit(jnp.matmul)
            ja, jb = jax.device_put(a), jax.device_put(b)
            calls["jax"] = lambda: jmm(ja, jb).block_until_ready()
        if torch is not None:
            ta, tb = torch.from_numpy(a), torch.from_numpy(b)
            calls["torch"] = lambda: torch.matmul(ta, tb)
        errors = {c: relative_error([np.asarray(call())], [want]) for c, call in calls.items()}
        bad = [c for c, e in errors.items() if not e <= TOLERANCE]
        ok = ok and not bad
        times = interleaved(calls, repeats)
        gflops = {c: 2.0 * N ** 3 / median(ts) / 1e9 for c, ts in times.items()}
        cells = [f"{N}", f"{gflops['gradc']:.1f}"]
        cells += [f"{gflops[c]:.1f}" if c in gflops else NOT_INSTALLED for c in PEERS]
        cells += [f"{paired_ratio(times, c):.2f}" if c in times else "-" for c in PEERS]
        cells.append(cores_cell(times))
        cells.append(("FAIL " + ", ".join(f"{c} {errors[c]:.1e}" for c in bad)) if bad else
                     f"ok, max {max(errors.values()):.1e}")
        rows.append(cells)
    # the ratio columns are time ratios, peer's time / gradc's, as in the step table
    header = ["N (N x N @ N x N)", "gradc GFLOP/s", "numpy", "jax", "torch",
              "numpy/gradc", "jax/gradc", "torch/gradc", "cores used g/n/j/t", "check vs float64"]
    return table(header, rows), ok


FRESH_PROCESS_STEP = """
import sys, time
sys.path.insert(0, sys.argv[1])
from peers import SIZES, gradc_loss, make_arrays
import gradc as gc
arrays = make_arrays(*SIZES["small"])
start = time.perf_counter()
gc.value_and_grad(gradc_loss, wrt=("U", "V"))(*arrays)
print(time.perf_counter() - start)
"""


FRESH_PROCESS_JAX_STEP = """
import sys, time
sys.path.insert(0, sys.argv[1])
from peers import SIZES, make_arrays, make_jax_loss
import jax, jax.numpy as jnp
arrays = [jax.device_put(a) for a in make_arrays(*SIZES["small"])]  # the backend is up before timing
start = time.perf_counter()
jax.block_until_ready(jax.jit(jax.value_and_grad(make_jax_loss(jnp, jax), argnums=(0, 1)))(*arrays))
print(time.perf_counter() - start)
"""


def fresh_process_compile(script: str, cache: str | None = None) -> float:
    """The first call of the step in a new process; `cache`: gradc's GRADC_CACHE_DIR."""
    env = dict(os.environ) if cache is None else dict(os.environ, GRADC_CACHE_DIR=cache)
    out = subprocess.run([sys.executable, "-c", script, os.path.dirname(os.path.abspath(__file__))],
                         capture_output=True, text=True, timeout=600, check=True, env=env)
    return float(out.stdout.split()[-1])


def bench_compile(repeats, jax, jnp, torch) -> str:
    """First call of a fresh step object, at the size 'small', against a fresh jax.jit's first call."""
    B, n, m, p = SIZES["small"]
    arrays = make_arrays(B, n, m, p)
    jargs = [jax.device_put(a) for a in arrays] if jax is not None else None
    firsts = {"gradc": [], "jax": []}
    phases: dict[str, list[float]] = {}
    warm = {"gradc": [], "jax": []}
    for r in range(repeats):
        order = ["gradc", "jax"] if r % 2 == 0 else ["jax", "gradc"]
        for name in order:
            if name == "gradc":
                step = gc.value_and_grad(gradc_loss, wrt=("U", "V"))
                start = time.perf_counter()
                step(*arrays)
                firsts["gradc"].append(time.perf_counter() - start)
                start = time.perf_counter()
                step(*arrays)
                warm["gradc"].append(time.perf_counter() - start)
                for phase, t in getattr(step.lower(*arrays), "timings", {}).items():
                    phases.setdefault(phase, []).append(t)
            elif jax is not None:
                jax.clear_caches()
                jstep = jax.jit(jax.value_and_grad(make_jax_loss(jnp, jax), argnums=(0, 1)))
                start = time.perf_counter()
                jax.block_until_ready(jstep(*jargs))
                firsts["jax"].append(time.perf_counter() - start)
                start = time.perf_counter()
                jax.block_until_ready(jstep(*jargs))
                warm["jax"].append(time.perf_counter() - start)
    fresh = {"gradc": [], "gradc cached": [], "jax": []}
    with tempfile.TemporaryDirectory() as cached:
        fresh_process_compile(FRESH_PROCESS_STEP, cached)  # fills the cache, untimed
        for _ in range(max(1, repeats // 2)):
            with tempfile.TemporaryDirectory() as empty:
                fresh["gradc"].append(fresh_process_compile(FRESH_PROCESS_STEP, empty))
            fresh["gradc cached"].append(fresh_process_compile(FRESH_PROCESS_STEP, cached))
            if jax is not None:
                fresh["jax"].append(fresh_process_compile(FRESH_PROCESS_JAX_STEP))
    cached_median = median(fresh["gradc cached"])
    rows = [["gradc: fresh gc.value_and_grad, first call", fmt_time(median(firsts["gradc"])),
             fmt_time(median(warm["gradc"]))],
            ["gradc: the same, first model of a new process (+ shared runtime, compiled)",
             fmt_time(median(fresh["gradc"])), "-"],
            ["gradc: the same, shared runtime loaded from its on-disk cache",
             fmt_time(cached_median), "-"]]
    rows.append(["jax: fresh jax.jit(jax.value_and_grad), first call",
                 fmt_time(median(firsts["jax"])) if firsts["jax"] else NOT_INSTALLED,
                 fmt_time(median(warm["jax"])) if warm["jax"] else "-"])
    if fresh["jax"]:
        rows.append(["jax: the same, first jit of a new process (backend already up)",
                     fmt_time(median(fresh["jax"])), "-"])
    rows.append(["torch: eager, nothing to compile", "n/a" if torch is not None else NOT_INSTALLED, "-"])
    notes = []
    if firsts["jax"]:
        notes.append(f"jax first call / gradc first call: {median(firsts['jax']) / median(firsts['gradc']):.2f}"
                     + (f"; in a new process: {median(fresh['jax']) / median(fresh['gradc']):.2f} with gradc's "
                        f"runtime compiled, {median(fresh['jax']) / cached_median:.2f} with it cached"
                        if fresh["jax"] else ""))
    notes.append("A model's own code is never cached: every first call compiles it. The shared runtime "
                 "(GEMM blocking loops, micro-kernels, packing; the helper threads' loop) is model-"
                 "independent: compiled once per process by the first model that uses it, and its "
                 "object code kept on disk (GRADC_CACHE_DIR) for later processes. The first row finds it "
                 "in memory, the second compiles it (an empty cache), the third loads it from disk.")
    if phases:
        main_phases = [k for k in ("trace", "autodiff", "optimize", "fuse", "llvm") if k in phases]
        notes.append("gradc's first call by phase (median): " +
                     ", ".join(f"{k} {fmt_time(median(phases[k]))}" for k in main_phases))
    text = table(["step at size small, float32", "first call (median)", "second call"], rows)
    return text + ("\n\n" + "\n".join(notes) if notes else "")


def bench_overhead(repeats, jax, jnp, torch) -> str:
    x = np.arange(4, dtype=np.float32)
    inc = gc.jit(lambda v: v + 1.0)
    np.testing.assert_allclose(inc(x), x + 1)
    noop = lambda v: v  # noqa: E731
    calls = {"gradc": lambda: inc(x), "python no-op": lambda: noop(x), "numpy": lambda: x + 1.0}
    labels = {"gradc": "gradc: gc.jit(lambda x: x + 1.0)(x)", "python no-op": "Python no-op: (lambda x: x)(x)",
              "numpy": "numpy: x + 1.0", "jax": "jax: jax.jit(lambda x: x + 1.0)(x), blocking",
              "torch": "torch: x + 1.0 (eager)"}
    if jax is not None:
        jinc = jax.jit(lambda v: v + 1.0)
        jx = jax.device_put(x)
        np.testing.assert_allclose(np.asarray(jinc(jx)), x + 1)
        calls["jax"] = lambda: jinc(jx).block_until_ready()
    if torch is not None:
        tx = torch.from_numpy(x)
        calls["torch"] = lambda: tx + 1.0
    times = interleaved(calls, repeats)
    rows = []
    for name in ["gradc", "python no-op", "numpy", "jax", "torch"]:
        if name in times:
            rows.append([labels[name], fmt_time(median(times[name])), f"{paired_ratio(times, name):.2f}"])
        else:
            rows.append([labels[name], NOT_INSTALLED, "-"])
    return table(["a 4-element float32 array", "per call (median)", "time / gradc's"], rows)


# ----------------------------------------------------------------------------- header

def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return platform.processor() or "unknown CPU"


def pin_to_one_cpu() -> int | None:
    """Pin every thread of this process to one CPU (threads started later inherit it); that CPU or None.

    Thread-count settings are requests a library may not honour in full (XLA's are not a hard limit);
    affinity is. On a shared machine the chosen CPU may be the busy one, but then every contender
    shares it alike, round after round.
    """
    if not hasattr(os, "sched_setaffinity"):
        return None
    cpu = min(os.sched_getaffinity(0))
    try:
        for tid in os.listdir("/proc/self/task"):
            try:
                os.sched_setaffinity(int(tid), {cpu})
            except ProcessLookupError:  # a thread that ended meanwhile
                pass
    except OSError:
        return None
    return cpu


def openblas_function(name: str):
    """`openblas_<name>` of the OpenBLAS that numpy loaded, under any of its symbol spellings, or None."""
    try:
        with open("/proc/self/maps") as maps:
            paths = sorted({line.split()[-1] for line in maps if "openblas" in line.lower()})
        for path in paths:
            lib = ctypes.CDLL(path)
            for symbol in (f"scipy_openblas_{name}64_", f"openblas_{name}64_", f"scipy_openblas_{name}",
                           f"openblas_{name}"):
                if hasattr(lib, symbol):
                    return getattr(lib, symbol)
    except OSError:
        pass
    return None


def openblas_threads() -> str:
    """numpy's OpenBLAS thread count, asked of the loaded library itself (best effort)."""
    get = openblas_function("get_num_threads")
    return str(get()) if get is not None else "?"


def gradc_source() -> str:
    """Where the gradc being measured comes from: its folder and, in a git work tree, the commit."""
    package = os.path.dirname(os.path.abspath(gc.__file__))
    root = os.path.dirname(package)
    text = f"gradc from {root}"
    try:
        git = ["git", "--no-optional-locks", "-C", root]
        commit = subprocess.run(git + ["rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                timeout=10)
        if commit.returncode != 0:
            return text
        dirty = subprocess.run(git + ["diff", "--quiet", "HEAD", "--", "gradc", "ir", "backends"],
                               capture_output=True, timeout=10).returncode != 0
        text += f", commit {commit.stdout.strip()}" + (" with uncommitted changes to gradc/ ir/ backends/"
                                                       if dirty else "")
    except (OSError, subprocess.SubprocessError):
        pass
    return text


def threads_line(args, jax, torch) -> str:
    if args.single_threaded:
        parts = [f"gradc {gc.get_num_threads()} (gc.set_num_threads(1))",
                 f"numpy 1 (OpenBLAS reports {openblas_threads()})"]
        if torch is not None:
            parts.append(f"torch {torch.get_num_threads()}")
        if jax is not None:
            parts.append("jax 1 asked through XLA_FLAGS (no multi-threaded Eigen, intra-op parallelism 1)")
        cpu = getattr(args, "pinned_cpu", None)
        pinned = (f"; and every thread of the process pinned to CPU {cpu}" if cpu is not None else
                  "; the process could not be pinned to one CPU, so the jax figures may use more")
        return "threads (--single-threaded): " + "; ".join(parts) + pinned
    parts = [f"gradc {gc.get_num_threads()} (the CPUs it may run on)", f"numpy default (OpenBLAS, {openblas_threads()} threads)"]
    if torch is not None:
        parts.append(f"torch {torch.get_num_threads()} (torch.set_num_threads({TORCH_THREADS}))")
    if jax is not None:
        parts.append("jax default (XLA CPU)")
    return "threads: " + "; ".join(parts)


def vector_isa() -> str:
    """Which vectors gradc's code uses (GRADC_MAX_ISA=avx2 caps an AVX-512 host to AVX2's)."""
    from gradc.backends.gemm import host_vector_bytes
    cap = os.environ.get("GRADC_MAX_ISA")
    return f"{host_vector_bytes() * 8}-bit vectors" + (f" (GRADC_MAX_ISA={cap})" if cap else "")


def header(args, jax, torch) -> str:
    versions = [f"gradc {getattr(gc, '__version__', '') or _dist_version('gradc')}",
                f"numpy {np.__version__}",
                f"jax {jax.__version__}" if jax is not None else f"jax {NOT_INSTALLED}",
                f"torch {torch.__version__}" if torch is not None else f"torch {NOT_INSTALLED}",
                f"Python {platform.python_version()}"]
    lines = [
        f"gradc peer benchmark, {time.strftime('%Y-%m-%d %H:%M')}",
        f"machine: {cpu_model()}, {os.cpu_count()} logical CPUs ({platform.machine()}); shared, so timings are noisy",
        f"gradc code: {vector_isa()}",
        "versions: " + ", ".join(versions),
        gradc_source(),
        threads_line(args, jax, torch),
        f"timing: {args.repeats} rounds per table, contenders interleaved in rotating order, a {args.settle:g} s pause "
        "before each sample, median over rounds;",
        "        ratio = median over rounds of (peer's time / gradc's time in the same round): > 1 means gradc is faster;",
        "        cores used = the process's CPU time / wall time while each contender ran (every thread, including "
        "another library's pool still spinning after its own call)",
    ]
    return "\n".join(lines)


def _dist_version(name: str) -> str:
    try:
        from importlib.metadata import version
        return version(name)
    except Exception:
        return "?"


def main() -> int:
    global SETTLE_SECONDS  # --settle sets it for interleaved()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default=None,
                        help=f"comma-separated, of {','.join(SIZES)} (default: all; --quick: all but large)")
    parser.add_argument("--repeats", type=int, default=None, help="rounds per table (default 15; --quick: 5)")
    parser.add_argument("--quick", action="store_true",
                        help="5 rounds, no 'large' step and no 2048 matmul (under a minute)")
    parser.add_argument("--without", default="", help="act as if these peers were not installed: jax,torch")
    parser.add_argument("--skip", default="", help="sections to leave out: step,matmul,compile,overhead")
    parser.add_argument("--settle", type=float, default=SETTLE_SECONDS,
                        help=f"seconds to pause before each sample, so the previous contender's thread "
                             f"pool goes idle (default {SETTLE_SECONDS})")
    parser.add_argument("--single-threaded", action="store_true",
                        help="ask numpy (OpenBLAS), torch and jax (XLA) for one thread each and pin every thread "
                             "of the process to one CPU: a fair comparison when other processes keep a core busy")
    args = parser.parse_args()

    if args.sizes is None:
        sizes = [s for s in SIZES if not (args.quick and s == "large")]
    else:
        sizes = [s.strip() for s in args.sizes.split(",") if s.strip()]
        unknown = [s for s in sizes if s not in SIZES]
        if unknown:
            parser.error(f"unknown size(s) {', '.join(unknown)}; choose from {', '.join(SIZES)}")
    if args.repeats is None:
        args.repeats = 5 if args.quick else 15
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    if args.settle < 0:
        parser.error("--settle must not be negative")
    SETTLE_SECONDS = args.settle
    matmul_sizes = [N for N in MATMUL_SIZES if not (args.quick and N == 2048)]
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    without = {s.strip() for s in args.without.split(",") if s.strip()}

    jax, jnp, torch = import_peers(without, args.single_threaded)
    if args.single_threaded:
        set_threads = openblas_function("set_num_threads")
        if set_threads is None:
            parser.error("--single-threaded: cannot find numpy's OpenBLAS to set its thread count "
                         "(set OPENBLAS_NUM_THREADS=1 instead)")
        set_threads(1)
        gc.set_num_threads(1)
        args.pinned_cpu = pin_to_one_cpu()
    started = time.perf_counter()
    print(header(args, jax, torch))
    ok = True
    if "step" not in skip and sizes:
        print("\n## Training step: loss, dL/dU, dL/dV (float32), time per step\n")
        with OtherLoad() as load:
            text, good = bench_steps(sizes, args.repeats, jax, jnp, torch)
        print(text + "\n" + load.line(), flush=True)
        ok = ok and good
    if "matmul" not in skip:
        print("\n## Matmul alone, float32, GFLOP/s (gradc: gc.jit(lambda a, b: a @ b); ratio columns are "
              "peer's time / gradc's)\n")
        with OtherLoad() as load:
            text, good = bench_matmul(matmul_sizes, args.repeats, jax, jnp, torch)
        print(text + "\n" + load.line(), flush=True)
        ok = ok and good
    if "compile" not in skip:
        print("\n## Cold compile of the step\n")
        with OtherLoad() as load:
            text = bench_compile(max(3, min(args.repeats, 5)), jax, jnp, torch)
        print(text + "\n" + load.line(), flush=True)
    if "overhead" not in skip:
        print("\n## Per-call overhead of a tiny compiled function\n")
        with OtherLoad() as load:
            text = bench_overhead(args.repeats, jax, jnp, torch)
        print(text + "\n" + load.line(), flush=True)
    print(f"\ntotal {time.perf_counter() - started:.0f} s" + ("" if ok else "; SOME RESULTS FAILED THE CHECK"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
