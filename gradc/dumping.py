"""Every stage of a compilation as text: for `gradc dump`, and written to disk under GRADC_DUMP.

With `GRADC_DUMP=DIR` in the environment, each compilation writes DIR/<function>/<nn>-<stage>.txt
for every stage (LLVM IR before and after optimisation included) plus timings.txt, as XLA's
--xla_dump_to does: a user sees what their training script compiled without changing it. The
stage list comes from `Lowered.stages`, so stages added to the pipeline are dumped too.
"""
from __future__ import annotations

import os
import re
import threading
import warnings
from pathlib import Path
from typing import Any

DUMP_ENV = "GRADC_DUMP"
UNOPTIMIZED_LLVM = "llvm-unoptimized"

# which entries of `Lowered.timings` each stage's passes record; stages not listed show none
_STAGE_TIMERS: dict[str, tuple[str, ...]] = {
    "traced": ("trace",),
    "grad": ("autodiff",),
    "fused": ("fuse", "fusion"),
    "llvm": ("llvm",),
}
_STAGE_TOTALS = {"optimized": "optimize"}


def _optimization_passes() -> tuple[str, ...]:
    try:
        from .ir.passes import SIMPLIFICATION
        return tuple(p.name for p in SIMPLIFICATION)
    except ImportError:  # the pass list moved: fall back to the total only
        return ()


def stage_order(lowered: Any) -> list[str]:
    """`lowered.stages`, with the LLVM IR before optimisation just before the optimised one."""
    stages = list(lowered.stages)
    if UNOPTIMIZED_LLVM not in stages and "llvm" in stages:
        stages.insert(stages.index("llvm"), UNOPTIMIZED_LLVM)
    return stages


def stage_timings(lowered: Any, stage: str) -> list[tuple[str, float]]:
    """(pass, seconds) for the passes that produced `stage`, the stage's total first when known."""
    timers = _STAGE_TIMERS.get(stage, ())
    if stage == "optimized":
        timers = (_STAGE_TOTALS["optimized"],) + _optimization_passes()
    return [(t, lowered.timings[t]) for t in timers if t in lowered.timings]


def header(lowered: Any, stage: str) -> str:
    """`==== optimized  4.10 ms (simplify 0.31 ms, cse 0.35 ms, ...) ====`"""
    timings = stage_timings(lowered, stage)
    text = f"==== {stage}"
    if timings:
        (first, seconds), rest = timings[0], timings[1:]
        text += f"  {seconds * 1e3:.2f} ms"
        if first in _STAGE_TOTALS.values():
            text += " (" + ", ".join(f"{name} {s * 1e3:.2f} ms" for name, s in rest) + ")" if rest else ""
        else:
            text += f" ({first})"
    return text + " ===="


def stage_text(lowered: Any, stage: str) -> str:
    text = lowered.as_text(stage)
    if stage == UNOPTIMIZED_LLVM:
        text = _annotate_kernels(text, lowered)
    return text if text.endswith("\n") else text + "\n"


def _annotate_kernels(llvm_ir: str, lowered: Any) -> str:
    """Above each kernel's `define`, the ops it computes and their source lines: LLVM IR has no
    other trace of them. (After optimisation the kernels are inlined into the entry point.)"""
    graph = lowered.graphs.get("fused")
    kernels = {k.name: k for k in getattr(graph, "kernels", None) or ()}
    if not kernels:
        return llvm_ir
    from .ir.text import value_names
    names = value_names(graph)
    out = []
    for line in llvm_ir.splitlines():
        m = re.match(r'define [^@]*@"?(k\d+)\.', line)
        if m and m.group(1) in kernels:
            out += [f"; %{names[op.result]} = {op.name}  # {op.loc}" for op in kernels[m.group(1)].ops]
        out.append(line)
    return "\n".join(out) + "\n"


def unaccounted_timings(lowered: Any, stages: list[str]) -> list[tuple[str, float]]:
    """Timings no stage header showed (a pass added since this file was written)."""
    shown = {name for s in stages for name, _ in stage_timings(lowered, s)}
    return [(k, v) for k, v in lowered.timings.items() if k not in shown]


# --- GRADC_DUMP ------------------------------------------------------------------------------------

_lock = threading.Lock()
_directories_used: dict[Path, int] = {}


def _directory_for(root: Path, function: str) -> Path:
    """DIR/<function> for the first compilation of that name in this process, then <function>-2, ...
    so a second signature does not overwrite the first; a new process starts over."""
    safe = re.sub(r"[^\w.-]", "_", function) or "function"
    base = root / safe
    with _lock:
        count = _directories_used.get(base, 0) + 1
        _directories_used[base] = count
    return base if count == 1 else root / f"{safe}-{count}"


def dump_to_directory(lowered: Any, root: str | os.PathLike) -> Path:
    """Write every stage of `lowered` to ROOT/<function>/<nn>-<stage>.txt; returns the folder."""
    function = lowered.graphs["traced"].name
    directory = _directory_for(Path(root), function)
    directory.mkdir(parents=True, exist_ok=True)
    for old in directory.glob("[0-9][0-9]-*.txt"):  # a rerun replaces the previous run's dump
        old.unlink()
    stages = stage_order(lowered)
    for n, stage in enumerate(stages):
        try:
            text = stage_text(lowered, stage)
        except Exception as e:  # the failure will surface at the call; the earlier stages still help
            text = f"# stage {stage} failed: {type(e).__name__}: {e}\n"
        (directory / f"{n:02d}-{stage}.txt").write_text(text, encoding="utf-8")
    signature = ", ".join(f"%{v.name}: {v.type}" for v in lowered.graphs["traced"].inputs)
    lines = [f"{function}({signature})", ""] + [
        f"{name:20s} {seconds * 1e3:10.3f} ms" for name, seconds in lowered.timings.items()]
    (directory / "timings.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return directory


def dump_if_requested(lowered: Any) -> Path | None:
    """The GRADC_DUMP hook of `Compiled._compile`: dump when the variable is set, never raise."""
    root = os.environ.get(DUMP_ENV)
    if not root:
        return None
    try:
        return dump_to_directory(lowered, root)
    except OSError as e:  # a full disk or a read-only folder must not stop the user's training
        warnings.warn(f"{DUMP_ENV}={root}: could not write the dump: {e}", RuntimeWarning, stacklevel=2)
        return None
