"""Helper threads for compiled calls, run by native code: a call wakes them without Python.

Each helper is a Python thread parked for good inside a native loop (`worker`, GIL released).
A parallel call goes through `run`, also native: it publishes the job (the module's entry and
its arguments) in a control block, bumps a sequence word, runs the entry as thread 0, and waits until
every helper has run it as thread 1..n-1. The entry shares each kernel's work out between the
threads (by thread index, or in chunks they claim: chunks.py) and meets at barriers between
kernels; results do not depend on timing.

Idle helpers spin on the sequence word for `SPIN_ROUNDS` pauses (back-to-back training steps find
them awake), then sleep on it with futex(2). A call that finds the helpers busy (another Python
thread is using them) runs on one thread instead of waiting, so concurrent callers never block
each other. After fork() the child starts with a fresh control block and no helpers, which start
again on its first parallel call.
"""
from __future__ import annotations

import atexit
import ctypes
import os
import platform
import sys
import threading
import time
import warnings

import numpy as np
from llvmlite import ir

from . import runtime

MAX_THREADS = max(1, min(os.cpu_count() or 1, 8))
"""The most threads a call may use (each parallel GEMM keeps a packing area per thread)."""
SPIN_ROUNDS = 12_000  # `pause`s before an idle helper sleeps: about 0.25 ms here (Emerald Rapids)

_FUTEX_SYSCALL = {"x86_64": 202, "aarch64": 98}.get(platform.machine()) if sys.platform == "linux" else None
_FUTEX_WAIT, _FUTEX_WAKE = 128, 129  # FUTEX_WAIT|FUTEX_PRIVATE_FLAG, FUTEX_WAKE|FUTEX_PRIVATE_FLAG
if _FUTEX_SYSCALL is None:
    MAX_THREADS = 1  # helpers need futex(2) to sleep; elsewhere every call runs on one thread

I32, I64 = ir.IntType(32), ir.IntType(64)
PTR = ir.PointerType(ir.IntType(8))
ENTRY_TYPE = ir.FunctionType(ir.VoidType(), [PTR, PTR, PTR, PTR, I64, I64])
"""A module's entry: (args, dims, workspace, sync, threads, thread). `sync` is two zeroed i64 a line
apart, shared by the call's threads: the barrier's arrivals, then the counter chunks are claimed
from (backends/chunks.py)."""
RUN_TYPE = ir.FunctionType(ir.VoidType(), [PTR, PTR, PTR, PTR, PTR, I64])
"""run: (control block, entry, args, dims, workspace, threads)."""

# the control block: one 64-byte line per field, so spinning on one never slows writes to another
(SEQUENCE, BUSY, SLEEPERS, DONE, BARRIER, CLAIMS, HELPERS, QUIT,
 JOB_ENTRY, JOB_ARGS, JOB_DIMS, JOB_WORKSPACE, JOB_THREADS, READY) = range(14)
# READY is written by Python only: the threads a parallel call may use now, or 0 while the helpers
# that `threads` needs have not been started (native callers then leave it to Python to start them)
LINE = 64


def _spin_hint(b: ir.IRBuilder) -> None:
    """Tell the core it is in a spin loop (x86 `pause`)."""
    if platform.machine() in ("x86_64", "AMD64"):
        b.call(declare_external(b.module, "llvm.x86.sse2.pause", ir.VoidType(), []), [])


def _wait_until(b: ir.IRBuilder, counter: ir.Value, target: ir.Value) -> None:
    """Spin until the i64 at `counter` reaches `target`, yielding the core now and then: when
    another process holds the other core, pure spinning would wait out whole scheduler time slices."""
    fn = b.function
    start = b.block
    wait, done = fn.append_basic_block("wait"), fn.append_basic_block("waited")
    b.branch(wait)
    b.position_at_end(wait)
    spins = b.phi(I64, name="spins")
    spins.add_incoming(ir.Constant(I64, 0), start)
    arrived = b.load_atomic(counter, "acquire", 8)
    _spin_hint(b)
    with b.if_then(b.icmp_unsigned("==", b.and_(spins, ir.Constant(I64, 255)), ir.Constant(I64, 255))):
        b.call(declare_external(b.module, "sched_yield", I32, []), [])
    spins.add_incoming(b.add(spins, ir.Constant(I64, 1)), b.block)
    b.cbranch(b.icmp_unsigned("<", arrived, target), wait, done)
    b.position_at_end(done)


class _Emitter:
    """Small helpers over an IRBuilder for control-block fields and atomics."""

    def __init__(self, b: ir.IRBuilder, control: ir.Value) -> None:
        self.b, self.control = b, control

    def field(self, index: int, ty: ir.Type = I64) -> ir.Value:
        return self.b.bitcast(self.b.gep(self.control, [ir.Constant(I64, index * LINE)], inbounds=True),
                              ty.as_pointer())

    def spin_hint(self) -> None:
        _spin_hint(self.b)

    def publish(self, fields: list[tuple[int, ir.Value]]) -> None:
        """Write `fields` between two bumps of the sequence word (odd while writing, then even),
        then wake sleeping helpers."""
        b, sequence = self.b, self.field(SEQUENCE, I32)
        b.atomic_rmw("add", sequence, ir.Constant(I32, 1), "seq_cst")
        for f, value in fields:
            b.store_atomic(value, self.field(f), "monotonic", 8)
        b.atomic_rmw("add", sequence, ir.Constant(I32, 1), "seq_cst")
        with b.if_then(b.icmp_unsigned("!=", b.load_atomic(self.field(SLEEPERS), "seq_cst", 8), ir.Constant(I64, 0))):
            self.futex(_FUTEX_WAKE, ir.Constant(I32, 2 ** 31 - 1))

    def futex(self, op: int, value: ir.Value) -> None:
        syscall = declare_external(self.b.module, "syscall", I64, [I64], var_arg=True)
        word = self.b.ptrtoint(self.field(SEQUENCE, I32), I64)
        self.b.call(syscall, [ir.Constant(I64, _FUTEX_SYSCALL), word, ir.Constant(I32, op), value,
                              ir.Constant(I64, 0)])


def declare_external(module: ir.Module, name: str, result: ir.Type, args: list[ir.Type],
                     var_arg: bool = False) -> ir.Function:
    """A C library function or an LLVM intrinsic, declared once in `module`."""
    return module.globals.get(name) or ir.Function(module, ir.FunctionType(result, args, var_arg=var_arg), name)


RUN, BARRIER_WAIT, STOP = (runtime.PREFIX + name for name in ("run", "barrier", "stop"))
WORKER_TYPE = ir.FunctionType(ir.VoidType(), [PTR])
"""A helper's loop, until the process exits: (control block)."""
BARRIER_TYPE = ir.FunctionType(ir.VoidType(), [PTR, I64])
"""(barrier counter, arrivals to wait for)."""


def declare_run(module: ir.Module) -> ir.Function:
    """`run` (see RUN_TYPE) as seen from a model's module: a function of the shared runtime."""
    return runtime.declare(module, RUN, RUN_TYPE, _define_run)


def declare_barrier(module: ir.Module) -> ir.Function:
    """`barrier(counter, target)`: count this thread's arrival, then wait for `target` arrivals."""
    return runtime.declare(module, BARRIER_WAIT, BARRIER_TYPE, _define_barrier)


def run_address() -> int:
    return runtime.address(RUN, _define_run)


def _worker_name() -> str:
    """The helper loop's runtime name, which spells out its spin budget (the code depends on it)."""
    return f"{runtime.PREFIX}worker.spin{SPIN_ROUNDS}"


def _define_worker(module: ir.Module) -> ir.Function:
    """A helper's loop. The sequence word works as a seqlock: odd while `run` writes a job, even
    once it is published. A helper runs a job only if the word held the same even value before
    and after it read the job, so a helper that sat out one job (or woke late) never acts on half of
    the next one, nor runs one job twice."""
    fn = ir.Function(module, WORKER_TYPE, _worker_name())
    (control,) = fn.args
    b = ir.IRBuilder(fn.append_basic_block("entry"))
    e = _Emitter(b, control)
    sequence = e.field(SEQUENCE, I32)
    first_seen = b.load_atomic(sequence, "acquire", 4)
    # registered only once `first_seen` is read, so every job a caller counts this helper in reaches
    # it; the index comes from the count, so helpers 1..HELPERS are always all registered
    index = b.add(b.atomic_rmw("add", e.field(HELPERS), ir.Constant(I64, 1), "seq_cst"), ir.Constant(I64, 1))
    start = b.block
    wait, spin, still, sleep, read, job = (fn.append_basic_block(n) for n in
                                           ("wait", "spin", "still", "sleep", "read", "job"))
    b.branch(wait)

    b.position_at_end(wait)  # a round of waiting for the sequence word to move on from `seen`
    seen = b.phi(I32, "seen")
    seen.add_incoming(first_seen, start)
    b.branch(spin)

    b.position_at_end(spin)
    spins = b.phi(I64, "spins")
    spins.add_incoming(ir.Constant(I64, 0), wait)
    now = b.load_atomic(sequence, "acquire", 4)
    e.spin_hint()
    published = b.icmp_unsigned("==", b.and_(now, ir.Constant(I32, 1)), ir.Constant(I32, 0))
    b.cbranch(b.and_(b.icmp_unsigned("!=", now, seen), published), read, still)

    b.position_at_end(still)
    more = b.add(spins, ir.Constant(I64, 1))
    spins.add_incoming(more, still)
    b.cbranch(b.icmp_unsigned(">", more, ir.Constant(I64, SPIN_ROUNDS)), sleep, spin)

    b.position_at_end(sleep)  # announce the sleep, then sleep only if nothing was published meanwhile
    sleepers = e.field(SLEEPERS)
    b.atomic_rmw("add", sleepers, ir.Constant(I64, 1), "seq_cst")
    with b.if_then(b.icmp_unsigned("==", b.load_atomic(sequence, "seq_cst", 4), seen)):
        e.futex(_FUTEX_WAIT, seen)
    b.atomic_rmw("sub", sleepers, ir.Constant(I64, 1), "seq_cst")
    seen.add_incoming(seen, b.block)
    b.branch(wait)

    b.position_at_end(read)
    quit_ = b.load_atomic(e.field(QUIT), "acquire", 8)
    fields = {f: b.load_atomic(e.field(f), "monotonic", 8)
              for f in (JOB_ENTRY, JOB_ARGS, JOB_DIMS, JOB_WORKSPACE, JOB_THREADS)}
    b.fence("acquire")
    stale = b.icmp_unsigned("!=", b.load_atomic(sequence, "monotonic", 4), now)
    seen.add_incoming(seen, read)  # a newer job was being written: read again
    leave = fn.append_basic_block("leave")
    b.cbranch(stale, wait, job)
    b.position_at_end(job)
    b.cbranch(b.icmp_unsigned("!=", quit_, ir.Constant(I64, 0)), leave, fn.append_basic_block("work"))
    b.position_at_end(leave)  # the process is exiting: stop running code that is about to be freed
    b.atomic_rmw("sub", e.field(HELPERS), ir.Constant(I64, 1), "seq_cst")
    b.ret_void()

    b.position_at_end(fn.basic_blocks[-1])  # helpers past the job's thread count sit it out
    threads = fields[JOB_THREADS]
    with b.if_then(b.icmp_unsigned("<", index, threads)):
        entry = b.inttoptr(fields[JOB_ENTRY], ENTRY_TYPE.as_pointer())
        args = [b.inttoptr(fields[f], PTR) for f in (JOB_ARGS, JOB_DIMS, JOB_WORKSPACE)]
        b.call(entry, args + [e.field(BARRIER, ir.IntType(8)), threads, index])
        b.atomic_rmw("add", e.field(DONE), ir.Constant(I64, 1), "release")
    seen.add_incoming(now, b.block)
    b.branch(wait)
    return fn


def _define_run(module: ir.Module) -> ir.Function:
    fn = ir.Function(module, RUN_TYPE, RUN)
    control, entry_address, args, dims, workspace, threads = fn.args
    b = ir.IRBuilder(fn.append_basic_block("entry"))
    e = _Emitter(b, control)
    sync = b.alloca(ir.ArrayType(I64, 2 * LINE // 8), name="sync")  # a one-thread call's own
    entry = b.bitcast(entry_address, ENTRY_TYPE.as_pointer())
    # never more threads than helpers running (none yet, or none after fork) plus the caller
    running = b.add(b.load_atomic(e.field(HELPERS), "acquire", 8), ir.Constant(I64, 1))
    threads = b.select(b.icmp_unsigned("<", running, threads), running, threads)
    several = b.icmp_unsigned(">", threads, ir.Constant(I64, 1))
    before = b.block
    with b.if_then(several):  # a one-thread call never touches BUSY, so it never holds others back
        tried = b.extract_value(b.cmpxchg(e.field(BUSY), ir.Constant(I64, 0), ir.Constant(I64, 1),
                                          "acquire", "monotonic"), 1)
        after_try = b.block
    claimed = b.phi(ir.IntType(1), "claimed")
    claimed.add_incoming(ir.Constant(ir.IntType(1), 0), before)
    claimed.add_incoming(tried, after_try)
    with b.if_else(claimed) as (shared, alone):
        with shared:
            b.store(ir.Constant(I64, 0), e.field(DONE))
            b.store(ir.Constant(I64, 0), e.field(BARRIER))
            b.store(ir.Constant(I64, 0), e.field(CLAIMS))
            e.publish([(JOB_ENTRY, b.ptrtoint(entry_address, I64)), (JOB_ARGS, b.ptrtoint(args, I64)),
                       (JOB_DIMS, b.ptrtoint(dims, I64)), (JOB_WORKSPACE, b.ptrtoint(workspace, I64)),
                       (JOB_THREADS, threads)])
            b.call(entry, [args, dims, workspace, e.field(BARRIER, ir.IntType(8)), threads, ir.Constant(I64, 0)])
            _wait_until(b, e.field(DONE), b.sub(threads, ir.Constant(I64, 1)))  # the helpers are done
            b.store_atomic(ir.Constant(I64, 0), e.field(BUSY), "release", 8)
        with alone:
            b.store(ir.Constant(sync.type.pointee, None), sync)
            b.call(entry, [args, dims, workspace, b.bitcast(sync, PTR), ir.Constant(I64, 1), ir.Constant(I64, 0)])
    b.ret_void()
    return fn


def _define_stop(module: ir.Module) -> ir.Function:
    """`stop(control)`: publish a job that says quit (see NativePool.stop)."""
    fn = ir.Function(module, ir.FunctionType(ir.VoidType(), [PTR]), STOP)
    b = ir.IRBuilder(fn.append_basic_block("entry"))
    e = _Emitter(b, fn.args[0])
    e.publish([(QUIT, ir.Constant(I64, 1))])
    b.ret_void()
    return fn


def _define_barrier(module: ir.Module) -> ir.Function:
    """Count this thread's arrival, then wait (`_wait_until`) for `target` arrivals."""
    fn = ir.Function(module, BARRIER_TYPE, BARRIER_WAIT)
    counter, target = fn.args
    b = ir.IRBuilder(fn.append_basic_block("entry"))
    counter = b.bitcast(counter, I64.as_pointer())
    b.atomic_rmw("add", counter, ir.Constant(I64, 1), "seq_cst")
    _wait_until(b, counter, target)
    b.ret_void()
    return fn


def default_threads() -> int:
    """GRADC_NUM_THREADS if set, else the CPUs this process may run on (at most MAX_THREADS)."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    default = max(1, min(cpus, MAX_THREADS))
    setting = os.environ.get("GRADC_NUM_THREADS", "").strip()
    if not setting:
        return default
    # like OMP_NUM_THREADS in libgomp: a bad value is reported and ignored, not fatal to `import gradc`
    if not (setting.isascii() and setting.isdecimal()) or int(setting) < 1:
        warnings.warn(f"GRADC_NUM_THREADS={setting!r} is not a positive integer; using {default} threads",
                      RuntimeWarning)
        return default
    if int(setting) > MAX_THREADS:
        warnings.warn(f"GRADC_NUM_THREADS={setting}: at most {MAX_THREADS} threads here (the CPUs, up to 8); "
                      f"using {MAX_THREADS}", RuntimeWarning)
    return min(int(setting), MAX_THREADS)


class NativePool:
    """The process's helper threads and their control block."""

    def __init__(self) -> None:
        self.threads = default_threads()
        self._helpers = 0  # started and waiting in their loop, with thread indices 1.._helpers
        self._stopped = False
        self._lock = threading.Lock()
        self.control = np.zeros(16 * LINE, np.uint8)
        self.control_address = self.control.ctypes.data  # never moves (zeroed in place after fork)
        self._publish_ready()
        runtime.after_fork_in_child(self._forget_helpers)
        atexit.register(self.stop)

    def _publish_ready(self) -> None:  # callers hold the lock, or are alone (init, after fork)
        ctypes.c_int64.from_address(self.control_address + READY * LINE).value = self.threads if self.started else 0

    @property
    def started(self) -> bool:
        return self._helpers >= self.threads - 1

    def set_threads(self, threads: int) -> None:
        if not isinstance(threads, int) or not 1 <= threads <= MAX_THREADS:
            raise ValueError(f"threads: expected an int from 1 to {MAX_THREADS}, got {threads!r}")
        with self._lock:
            if not self._stopped:  # after stop (at exit) every call runs on one thread
                self.threads = threads
                self._publish_ready()

    def start(self) -> None:
        """Start the helpers a call on `threads` threads needs (the first parallel call does this),
        and wait until each has entered its loop."""
        with self._lock:
            wanted = self.threads - 1
            address = self.control_address
            worker = ctypes.CFUNCTYPE(None, ctypes.c_void_p)(runtime.address(_worker_name(), _define_worker))
            self._stop = ctypes.CFUNCTYPE(None, ctypes.c_void_p)(runtime.address(STOP, _define_stop))
            for i in range(self._helpers + 1, wanted + 1):
                threading.Thread(target=worker, args=(address,), name=f"gradc-helper-{i}", daemon=True).start()
            running = ctypes.c_int64.from_address(address + HELPERS * LINE)
            while running.value < wanted:
                time.sleep(0.0001)
            self._helpers = max(self._helpers, wanted)
            self._publish_ready()

    def stop(self, timeout: float = 1.0) -> None:
        """Make the helpers leave their loop and wait for them (at exit: their code, in an engine
        about to be freed, must not run any more); from then on every call runs on one thread."""
        with self._lock:
            self._stopped, self.threads = True, 1
            self._publish_ready()
            if self._helpers == 0:
                return
            self._stop(self.control_address)  # compiled by start: nothing to compile at exit
            running = ctypes.c_int64.from_address(self.control_address + HELPERS * LINE)
            deadline = time.monotonic() + timeout
            while running.value > 0 and time.monotonic() < deadline:
                time.sleep(0.0001)
            self._helpers = 0

    def _forget_helpers(self) -> None:
        # the child has only the forking thread: the helpers and whatever they were doing are gone
        self.control[:] = 0
        self._helpers = 0
        self._lock = threading.Lock()
        self._publish_ready()


POOL = NativePool()


def set_num_threads(threads: int) -> None:
    """How many threads compiled calls may use from now on (like torch.set_num_threads); the default
    is GRADC_NUM_THREADS, else the CPUs this process may run on. Results do not depend on it."""
    POOL.set_threads(threads)


def get_num_threads() -> int:
    return POOL.threads
