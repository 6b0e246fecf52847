"""Helper threads for compiled calls, run by native code: a call wakes them without Python.

Each helper is a Python thread parked for good inside a native loop (`gradc_worker`, GIL released).
A parallel call goes through `gradc_run`, also native: it publishes the job (the module's entry and
its arguments) in a control block, bumps a sequence word, runs the entry as thread 0, and waits until
every helper has run it as thread 1..n-1. The entry splits each kernel's work by thread index and
meets at barriers between kernels, so results do not depend on timing.

Idle helpers spin on the sequence word for about `SPIN_CYCLES` (back-to-back training steps find
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

import numpy as np
from llvmlite import ir

from . import runtime

MAX_THREADS = max(1, min(os.cpu_count() or 1, 8))
"""The most threads a call may use (each parallel GEMM keeps a packing area per thread)."""
SPIN_CYCLES = 600_000  # about 0.2 ms of time-stamp counter before an idle helper sleeps

_FUTEX_SYSCALL = {"x86_64": 202, "aarch64": 98}.get(platform.machine()) if sys.platform == "linux" else None
_FUTEX_WAIT, _FUTEX_WAKE = 128, 129  # FUTEX_WAIT|FUTEX_PRIVATE_FLAG, FUTEX_WAKE|FUTEX_PRIVATE_FLAG
if _FUTEX_SYSCALL is None:
    MAX_THREADS = 1  # helpers need futex(2) to sleep; elsewhere every call runs on one thread

I32, I64 = ir.IntType(32), ir.IntType(64)
PTR = ir.PointerType(ir.IntType(8))
ENTRY_TYPE = ir.FunctionType(ir.VoidType(), [PTR, PTR, PTR, PTR, I64, I64])
"""A module's entry: (args, dims, workspace, barrier counter, threads, thread)."""
RUN_TYPE = ir.FunctionType(ir.VoidType(), [PTR, PTR, PTR, PTR, PTR, I64])
"""gradc_run: (control block, entry, args, dims, workspace, threads)."""

# the control block: one 64-byte line per field, so spinning on one never slows writes to another
(SEQUENCE, BUSY, SLEEPERS, DONE, BARRIER, HELPERS, QUIT,
 JOB_ENTRY, JOB_ARGS, JOB_DIMS, JOB_WORKSPACE, JOB_THREADS) = range(12)
LINE = 64


class _Emitter:
    """Small helpers over an IRBuilder for control-block fields and atomics."""

    def __init__(self, b: ir.IRBuilder, control: ir.Value) -> None:
        self.b, self.control = b, control

    def field(self, index: int, ty: ir.Type = I64) -> ir.Value:
        return self.b.bitcast(self.b.gep(self.control, [ir.Constant(I64, index * LINE)], inbounds=True),
                              ty.as_pointer())

    def spin_hint(self) -> None:
        if platform.machine() in ("x86_64", "AMD64"):
            self.b.call(declare(self.b.module, "llvm.x86.sse2.pause", ir.VoidType(), []), [])

    def futex(self, op: int, value: ir.Value) -> None:
        syscall = declare(self.b.module, "syscall", I64, [I64], var_arg=True)
        word = self.b.ptrtoint(self.field(SEQUENCE, I32), I64)
        self.b.call(syscall, [ir.Constant(I64, _FUTEX_SYSCALL), word, ir.Constant(I32, op), value,
                              ir.Constant(I64, 0)])


def declare(module: ir.Module, name: str, result: ir.Type, args: list[ir.Type], var_arg: bool = False) -> ir.Function:
    return module.globals.get(name) or ir.Function(module, ir.FunctionType(result, args, var_arg=var_arg), name)


WORKER, RUN, BARRIER_WAIT = (runtime.PREFIX + name for name in ("worker", "run", "barrier"))
WORKER_TYPE = ir.FunctionType(ir.VoidType(), [PTR, I64])
"""A helper's endless loop: (control block, thread index)."""
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


def _define_worker(module: ir.Module) -> ir.Function:
    fn = ir.Function(module, WORKER_TYPE, WORKER)
    control, index = fn.args
    b = ir.IRBuilder(fn.append_basic_block("entry"))
    e = _Emitter(b, control)
    clock = module.declare_intrinsic("llvm.readcyclecounter", (), ir.FunctionType(I64, []))
    sequence = e.field(SEQUENCE, I32)
    first_seen = b.load_atomic(sequence, "acquire", 4)
    # counted only once `first_seen` is read, so every job a caller sends to this helper reaches it
    b.atomic_rmw("add", e.field(HELPERS), ir.Constant(I64, 1), "seq_cst")
    start = b.block
    wait, spin, still, sleep, run = (fn.append_basic_block(n) for n in ("wait", "spin", "still", "sleep", "run"))
    b.branch(wait)

    b.position_at_end(wait)  # a round of waiting for the sequence word to move on from `seen`
    seen = b.phi(I32, "seen")
    seen.add_incoming(first_seen, start)
    started = b.call(clock, [])
    b.branch(spin)

    b.position_at_end(spin)
    now = b.load_atomic(sequence, "acquire", 4)
    e.spin_hint()
    b.cbranch(b.icmp_unsigned("!=", now, seen), run, still)

    b.position_at_end(still)
    expired = b.icmp_unsigned(">", b.sub(b.call(clock, []), started), ir.Constant(I64, SPIN_CYCLES))
    b.cbranch(expired, sleep, spin)

    b.position_at_end(sleep)  # announce the sleep, then sleep only if nothing was published meanwhile
    sleepers = e.field(SLEEPERS)
    b.atomic_rmw("add", sleepers, ir.Constant(I64, 1), "seq_cst")
    with b.if_then(b.icmp_unsigned("==", b.load_atomic(sequence, "seq_cst", 4), seen)):
        e.futex(_FUTEX_WAIT, seen)
    b.atomic_rmw("sub", sleepers, ir.Constant(I64, 1), "seq_cst")
    seen.add_incoming(seen, b.block)
    b.branch(wait)

    b.position_at_end(run)
    leave, job = fn.append_basic_block("leave"), fn.append_basic_block("job")
    b.cbranch(b.icmp_unsigned("!=", b.load_atomic(e.field(QUIT), "acquire", 8), ir.Constant(I64, 0)), leave, job)
    b.position_at_end(leave)  # the process is exiting: stop running code that is about to be freed
    b.atomic_rmw("sub", e.field(HELPERS), ir.Constant(I64, 1), "seq_cst")
    b.ret_void()

    b.position_at_end(job)  # helpers past the job's thread count sit it out
    job_threads = b.load(e.field(JOB_THREADS))
    with b.if_then(b.icmp_unsigned("<", index, job_threads)):
        _run_job(b, e, index, job_threads)
    seen.add_incoming(now, b.block)
    b.branch(wait)
    return fn


def _run_job(b: ir.IRBuilder, e: _Emitter, index: ir.Value, threads: ir.Value) -> None:
    entry = b.inttoptr(b.load(e.field(JOB_ENTRY)), ENTRY_TYPE.as_pointer())
    args = [b.inttoptr(b.load(e.field(f)), PTR) for f in (JOB_ARGS, JOB_DIMS, JOB_WORKSPACE)]
    b.call(entry, args + [e.field(BARRIER, ir.IntType(8)), threads, index])
    b.atomic_rmw("add", e.field(DONE), ir.Constant(I64, 1), "release")


def _define_run(module: ir.Module) -> ir.Function:
    fn = ir.Function(module, RUN_TYPE, RUN)
    control, entry_address, args, dims, workspace, threads = fn.args
    b = ir.IRBuilder(fn.append_basic_block("entry"))
    e = _Emitter(b, control)
    entry = b.bitcast(entry_address, ENTRY_TYPE.as_pointer())
    # never more threads than helpers running (none yet, or none after fork) plus the caller
    running = b.add(b.load_atomic(e.field(HELPERS), "acquire", 8), ir.Constant(I64, 1))
    threads = b.select(b.icmp_unsigned("<", running, threads), running, threads)
    claimed = b.extract_value(b.cmpxchg(e.field(BUSY), ir.Constant(I64, 0), ir.Constant(I64, 1),
                                        "acquire", "monotonic"), 1)
    parallel = b.and_(b.icmp_unsigned(">", threads, ir.Constant(I64, 1)), claimed)
    with b.if_else(parallel) as (shared, alone):
        with shared:
            for f, value in ((JOB_ENTRY, entry_address), (JOB_ARGS, args), (JOB_DIMS, dims),
                             (JOB_WORKSPACE, workspace)):
                b.store(b.ptrtoint(value, I64), e.field(f))
            b.store(threads, e.field(JOB_THREADS))
            b.store(ir.Constant(I64, 0), e.field(DONE))
            b.store(ir.Constant(I64, 0), e.field(BARRIER))
            b.atomic_rmw("add", e.field(SEQUENCE, I32), ir.Constant(I32, 1), "seq_cst")
            with b.if_then(b.icmp_unsigned("!=", b.load_atomic(e.field(SLEEPERS), "seq_cst", 8),
                                           ir.Constant(I64, 0))):
                e.futex(_FUTEX_WAKE, ir.Constant(I32, 2 ** 31 - 1))
            b.call(entry, [args, dims, workspace, e.field(BARRIER, ir.IntType(8)), threads, ir.Constant(I64, 0)])
            helpers = b.sub(threads, ir.Constant(I64, 1))
            wait, done = fn.append_basic_block("join"), fn.append_basic_block("joined")
            b.branch(wait)
            b.position_at_end(wait)
            finished = b.load_atomic(e.field(DONE), "acquire", 8)
            e.spin_hint()
            b.cbranch(b.icmp_unsigned("<", finished, helpers), wait, done)
            b.position_at_end(done)
            b.store_atomic(ir.Constant(I64, 0), e.field(BUSY), "release", 8)
        with alone:
            counter = b.alloca(I64)
            b.store(ir.Constant(I64, 0), counter)
            with b.if_then(claimed):
                b.store_atomic(ir.Constant(I64, 0), e.field(BUSY), "release", 8)
            b.call(entry, [args, dims, workspace, b.bitcast(counter, PTR), ir.Constant(I64, 1), ir.Constant(I64, 0)])
    b.ret_void()
    return fn


def _define_barrier(module: ir.Module) -> ir.Function:
    """Spin until `target` arrivals, yielding the core now and then: when another process holds
    the other core, pure spinning would wait out whole scheduler time slices."""
    fn = ir.Function(module, BARRIER_TYPE, BARRIER_WAIT)
    counter, target = fn.args
    b = ir.IRBuilder(fn.append_basic_block("entry"))
    e = _Emitter(b, counter)
    counter = b.bitcast(counter, I64.as_pointer())
    b.atomic_rmw("add", counter, ir.Constant(I64, 1), "seq_cst")
    start = b.block
    wait, done = fn.append_basic_block("wait"), fn.append_basic_block("done")
    b.branch(wait)
    b.position_at_end(wait)
    spins = b.phi(I64, name="spins")
    spins.add_incoming(ir.Constant(I64, 0), start)
    arrived = b.load_atomic(counter, "acquire", 8)
    e.spin_hint()
    with b.if_then(b.icmp_unsigned("==", b.and_(spins, ir.Constant(I64, 255)), ir.Constant(I64, 255))):
        b.call(declare(module, "sched_yield", I32, []), [])
    spins.add_incoming(b.add(spins, ir.Constant(I64, 1)), b.block)
    b.cbranch(b.icmp_unsigned("<", arrived, target), wait, done)
    b.position_at_end(done)
    b.ret_void()
    return fn


def default_threads() -> int:
    """GRADC_NUM_THREADS if set, else the CPUs this process may run on (at most MAX_THREADS)."""
    setting = os.environ.get("GRADC_NUM_THREADS", "")
    if setting:
        return max(1, min(int(setting), MAX_THREADS))
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(cpus, MAX_THREADS))


class NativePool:
    """The process's helper threads and their control block."""

    def __init__(self) -> None:
        self.threads = default_threads()
        self._helpers = 0  # started and waiting in gradc_worker, with thread indices 1.._helpers
        self._lock = threading.Lock()
        self.control = np.zeros(16 * LINE, np.uint8)
        os.register_at_fork(after_in_child=self._forget_helpers)
        atexit.register(self.stop)

    @property
    def control_address(self) -> int:
        return self.control.ctypes.data

    @property
    def started(self) -> bool:
        return self._helpers >= self.threads - 1

    def set_threads(self, threads: int) -> None:
        if not isinstance(threads, int) or not 1 <= threads <= MAX_THREADS:
            raise ValueError(f"threads: expected an int from 1 to {MAX_THREADS}, got {threads!r}")
        self.threads = threads

    def start(self) -> None:
        """Start the helpers a call on `threads` threads needs (the first parallel call does this),
        and wait until each has entered its loop."""
        with self._lock:
            wanted = self.threads - 1
            address = self.control_address
            worker = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_int64)(runtime.address(WORKER, _define_worker))
            for i in range(self._helpers + 1, wanted + 1):
                threading.Thread(target=worker, args=(address, i), name=f"gradc-helper-{i}", daemon=True).start()
            running = ctypes.c_int64.from_address(address + HELPERS * LINE)
            while running.value < wanted:
                time.sleep(0.0001)
            self._helpers = max(self._helpers, wanted)

    def stop(self, timeout: float = 1.0) -> None:
        """Make the helpers leave their loop and wait for them (at exit: their code, in an engine
        about to be freed, must not run any more). Like a job, but one that says quit."""
        if self._helpers == 0:
            return
        address = self.control_address
        ctypes.c_int64.from_address(address + QUIT * LINE).value = 1
        sequence = ctypes.c_int32.from_address(address + SEQUENCE * LINE)
        sequence.value += 1
        if _FUTEX_SYSCALL is not None:
            ctypes.CDLL(None).syscall(ctypes.c_long(_FUTEX_SYSCALL), ctypes.c_void_p(address),
                                      ctypes.c_int(_FUTEX_WAKE), ctypes.c_int(2 ** 31 - 1), None)
        running = ctypes.c_int64.from_address(address + HELPERS * LINE)
        deadline = time.monotonic() + timeout
        while running.value > 0 and time.monotonic() < deadline:
            time.sleep(0.0001)
        self._helpers, self.threads = 0, 1  # no parallel calls after this

    def _forget_helpers(self) -> None:
        # the child has only the forking thread: the helpers and whatever they were doing are gone
        self.control[:] = 0
        self._helpers = 0
        self._lock = threading.Lock()


POOL = NativePool()


def set_num_threads(threads: int) -> None:
    """How many threads compiled calls may use from now on (like torch.set_num_threads); the default
    is GRADC_NUM_THREADS, else the CPUs this process may run on. Results do not depend on it."""
    POOL.set_threads(threads)


def get_num_threads() -> int:
    return POOL.threads
