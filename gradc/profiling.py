"""Where a compiled call's time goes: each kernel's share, timed inside native code.

    print(gc.value_and_grad(loss, wrt=("U", "V")).lower(*args).profile(*args))

The profiled code is a second compilation of the same fused graph whose entry reads the clock
around every step (a kernel, the step packing a large GEMM's transposed operand before it, the
combine step of a kernel that reduces its whole output, or a copy into an output) and the barrier
after it, on the main thread: a step ends when every thread has
finished it. What the steps leave of a call's wall time is the boundary: argument checks, output
allocation and waking the helper threads.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Sequence

from .backends.jit import NativeFunction


@dataclass(frozen=True)
class Step:
    name: str      # k0, k0.pack_a, k0.combine, output1.copy
    kind: str      # the kernel's fusion class (matmul, matmul+reduce, loop, ...), or pack_a / combine / copy
    ops: str       # the ops it runs
    seconds: float  # per call
    flops: float   # per call; 0 where not counted


@dataclass(frozen=True)
class Profile:
    """Per-call times of each step of a compiled function, and the call's wall time."""

    function: str
    steps: list[Step]
    wall: float     # seconds per call, measured from Python
    calls: int
    threads: int

    def __str__(self) -> str:
        total = sum(s.seconds for s in self.steps)
        rows = [("step", "kind", "time", "share", "GFLOP/s", "ops")]
        for s in self.steps:
            rate = f"{s.flops / s.seconds / 1e9:.1f}" if s.flops and s.seconds > 0 else "-"
            rows.append((s.name, s.kind, _time(s.seconds), f"{s.seconds / self.wall:.1%}", rate, s.ops))
        rows.append(("steps", "", _time(total), f"{total / self.wall:.1%}", "", ""))
        rows.append(("boundary", "", _time(self.wall - total), f"{(self.wall - total) / self.wall:.1%}", "",
                     "checks, outputs, waking helpers"))
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
        lines = [f"{self.function}: {_time(self.wall)} a call (mean of {self.calls}), {self.threads} thread(s)"]
        for r in rows:
            lines.append("  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
                         + "  " + r[-1])
        return "\n".join(line.rstrip() for line in lines)


def _time(seconds: float) -> str:
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.2f} ms"
    return f"{seconds * 1e6:.1f} µs"


def profile(native: NativeFunction, args: Sequence[Any], calls: int = 0, warmup: int = 2) -> Profile:
    """Time `calls` calls of `native` (compiled with profile=True) on `args` after `warmup` calls;
    `calls` 0: as many as fit in about half a second, at least 3."""
    for _ in range(warmup):
        native(*args)
    if calls <= 0:
        start = time.perf_counter()
        native(*args)
        calls = max(3, min(10_000, int(0.5 / max(time.perf_counter() - start, 1e-7))))
    native.step_times(reset=True)
    start = time.perf_counter()
    for _ in range(calls):
        native(*args)
    wall = (time.perf_counter() - start) / calls
    seconds = [t / calls for t in native.step_times(reset=True)]
    kernels = {k.name: k for k in native.fusion.kernels}
    work = dict(zip((k.name for k in native.fusion.kernels), native.kernel_work(native.dims_of(args))))
    steps = []
    for name, t in zip(native.steps, seconds):
        kernel = kernels.get(name)
        if kernel is not None:
            steps.append(Step(name, kernel.label, ", ".join(op.name for op in kernel.ops), t,
                              work[name] if kernel.matmul is not None else 0.0))
        else:
            steps.append(Step(name, name.rsplit(".", 1)[-1], "", t, 0.0))
    return Profile(native.graph.name, steps, wall, calls, native.threads_for(args))
