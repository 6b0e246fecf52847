"""JIT-compiling a graph's LLVM module for the host CPU, and calling it safely on numpy arrays."""
from __future__ import annotations

import ctypes
import functools
import math
import os
import threading
import warnings
from typing import Callable, Sequence

import llvmlite.binding as llvm
import numpy as np

from gradc.ir.graph import Graph
from gradc.ir.types import ShapeError, TensorType

from gradc.ir.fusion import FusionResult, fuse

from . import runtime
from .boundary import ARRAY_EMPTY, PARALLEL_WORK, claim_workspace, fast_function, release_workspace
from .llvm import ENTRY, PROFILE, WORKSPACE_SIZE, ModuleBuilder
from .threads import POOL, run_address

_NO_DIMS = (ctypes.c_int64 * 1)()  # functions without symbolic dims read none
_MAX_PLANS = 64  # call plans kept per function with symbolic dims, one per distinct set of dims

_init_lock = threading.Lock()
runtime.after_fork_in_child(lambda: globals().update(_init_lock=threading.Lock()))
_initialized = False


def _initialize() -> None:
    global _initialized
    with _init_lock:
        if not _initialized:
            llvm.initialize_native_target()
            llvm.initialize_native_asmprinter()
            llvm.initialize_native_asmparser()
            _initialized = True


MAX_ISAS = ("avx512", "avx2")  # GRADC_MAX_ISA: the widest instruction set code may use


@functools.lru_cache(maxsize=1)
def host_feature_map() -> llvm.FeatureMap:
    """The host CPU's features, capped by `GRADC_MAX_ISA` (like XLA's `--xla_cpu_max_isa` or
    PyTorch's `ATEN_CPU_CAPABILITY`): `avx2` drops AVX-512 and AMX, so an AVX-512 machine builds and
    tests the code an AVX2-only machine runs (256-bit GEMM tiles, 16 vector registers' blocking)."""
    features = llvm.get_host_cpu_features()
    cap = os.environ.get("GRADC_MAX_ISA", "") or MAX_ISAS[0]
    if cap not in MAX_ISAS:  # reported and ignored, as a bad GRADC_NUM_THREADS
        warnings.warn(f"GRADC_MAX_ISA={cap!r}: expected one of {', '.join(MAX_ISAS)}; using the host's",
                      RuntimeWarning)
        cap = MAX_ISAS[0]
    if cap == "avx2":
        for name in features:
            if name.startswith(("avx512", "amx", "evex512", "avx10")):
                features[name] = False
    return features


def host_features() -> str:
    """The host's features; on AVX-512 hosts also 512-bit vectors for loops, which LLVM avoids on
    Intel by default (frequency concerns of older cores): measured 1.3-1.9x faster transcendentals
    here, and the GEMM already uses 512-bit registers."""
    features = host_feature_map()
    text = features.flatten()
    if os.environ.get("GRADC_PREFER_256", "") in ("", "0") and features.get("avx512f", False):
        text += ",-prefer-256-bit"
    return text


def host_target_machine() -> llvm.TargetMachine:
    """A fresh target machine for the host CPU and its features (MCJIT takes ownership of one)."""
    _initialize()
    target = llvm.Target.from_triple(llvm.get_process_triple())
    return target.create_target_machine(cpu=llvm.get_host_cpu_name(),
                                        features=host_features(),
                                        opt=3, jit=True)


def optimize_module(module: llvm.ModuleRef, tm: llvm.TargetMachine, speed_level: int = 3,
                    unroll: bool = False) -> None:
    # a fresh tuning-options/pass-builder pair per module: O3 pass managers are single-use
    pto = llvm.create_pipeline_tuning_options(speed_level=speed_level)
    pto.loop_vectorization = True
    pto.slp_vectorization = True
    # the GEMM is unrolled by hand; LLVM's unroller only adds compile time (measured: 40% of it)
    pto.loop_unrolling = unroll
    pass_builder = llvm.create_pass_builder(tm, pto)
    pass_builder.getModulePassManager().run(module, pass_builder)


class NativeFunction:
    """A graph compiled to native code. Call it with one numpy array per graph input."""

    def __init__(self, graph: Graph, fusion: FusionResult | None = None, profile: bool = False) -> None:
        """`profile`: time each step of every call (see `step_times`); for `Lowered.profile`."""
        _initialize()
        self._run = ctypes.CFUNCTYPE(None, *[ctypes.c_void_p] * 5, ctypes.c_int64)(run_address())
        self.graph = graph
        self.fusion = fusion if fusion is not None else fuse(graph)
        self.input_types: list[TensorType] = [v.type for v in graph.inputs]
        self.input_names = [v.name for v in graph.inputs]
        self.output_types: list[TensorType] = [v.type for v in graph.outputs]
        tm = host_target_machine()
        builder = ModuleBuilder(graph, self.fusion, tm.triple, str(tm.target_data), profile=profile)
        self.memory = builder.memory
        self.kernel_count = len(builder.kernels) + len(builder.output_copies)
        self.symbols = list(builder.symbols)
        module_ir = builder.build()
        runtime.link(module_ir)  # the shared functions it calls, compiled once per process
        self.llvm_ir_unoptimized = str(module_ir)
        module = llvm.parse_assembly(self.llvm_ir_unoptimized)
        module.verify()
        optimize_module(module, tm)
        self._llvm_ir: str | None = None
        self._engine = llvm.create_mcjit_compiler(module, tm)
        self._engine.finalize_object()
        self._entry_address = self._engine.get_function_address(ENTRY)
        self._work_terms = builder.work()
        self.steps = builder.steps
        self._step_times = (ctypes.c_int64 * len(self.steps)).from_address(
            self._engine.get_global_value_address(PROFILE)) if profile else None
        self._workspace_size = ctypes.CFUNCTYPE(ctypes.c_int64, ctypes.c_void_p)(
            self._engine.get_function_address(WORKSPACE_SIZE))
        self._prepare_call_path()
        self.fast = self._fast_function(builder.fast_description())

    def _prepare_call_path(self) -> None:
        """Decide at compile time everything a call would otherwise work out again."""
        index = {s: i for i, s in enumerate(self.symbols)}
        self._inputs = []
        for name, t in zip(self.input_names, self.input_types):
            static = None if t.symbols else tuple(t.shape)
            axes = [(axis, index.get(d), d) for axis, d in enumerate(t.shape)]
            self._inputs.append((name, t, t.np_dtype, static, axes))
        self._n_inputs = len(self._inputs)
        self._dims_type = ctypes.c_int64 * max(len(self.symbols), 1)
        self._pointers = ctypes.c_void_p * (len(self.input_types) + len(self.output_types))
        self._outputs = [(t.np_dtype, [(index.get(d), d) for d in t.shape]) for t in self.output_types]
        self._per_thread = threading.local()  # a workspace per thread: calls never share one
        self._plans: dict[tuple[int, ...], tuple] = {}
        self._static_plan = None if self.symbols else self._plan(())

    def _fast_function(self, description: list[int]):
        """The builtin function a call goes to first (boundary.fast_function), or None where this
        Python or numpy lacks what it needs: then every call takes the Python path."""
        if ARRAY_EMPTY is None:
            return None
        fast = fast_function(self._entry_address, self._engine.get_function_address(WORKSPACE_SIZE),
                             description, self._engine)
        if self._static_plan is not None and claim_workspace(fast, self._static_plan[1]) is not None:
            release_workspace(fast)  # sized now: the first call can take the fast path
        return fast

    def _plan(self, dims: tuple[int, ...]) -> tuple[list[tuple[tuple, np.dtype]], int, float, ctypes.Array]:
        """For these values of the symbolic dims: output shapes, workspace bytes, operation count,
        and the dims as native code reads them."""
        plan = self._plans.get(dims)
        if plan is None:
            self._check_addressable(dims)
            if len(self._plans) >= _MAX_PLANS:
                self._plans.clear()
            values = self._dims_type(*dims)
            plan = self._plans[dims] = (self._output_shapes(dims), int(self._workspace_size(values)),
                                        self._work(dims), values)
        return plan

    def _check_addressable(self, dims: Sequence[int]) -> None:
        """Refuse dims whose intermediate values would not fit in a 64-bit address space: native
        code sizes the workspace with 64-bit arithmetic, which would wrap (zero-size inputs can
        carry huge extents)."""
        values = dict(zip(self.symbols, dims))
        need = self.memory.nbytes(values)
        if need >= 2 ** 62:
            dims_text = ", ".join(f"{s}={n}" for s, n in values.items())
            raise MemoryError(f"{self.graph.name}: with {dims_text} its intermediate values would need "
                              f"{need} bytes, more than a process can address")

    def _work(self, dims: Sequence[int]) -> float:
        return sum(self.kernel_work(dims))

    def kernel_work(self, dims: Sequence[int] = ()) -> list[float]:
        """Each kernel's operation count for these values of the symbolic dims (GEMMs: 2·M·N·K)."""
        values = dict(zip(self.symbols, dims))
        return [float(coefficient) * math.prod(values[d] for d in factors) for coefficient, factors in self._work_terms]

    def dims_of(self, args: Sequence) -> tuple[int, ...]:
        """The symbolic dims' values these arguments give (checked as a call checks them)."""
        return tuple(self._check(args)[1][:len(self.symbols)])

    def threads_for(self, args: Sequence) -> int:
        """How many threads a call with these arguments runs on."""
        return self._threads(self._work(self.dims_of(args)), start=False)

    def step_times(self, reset: bool = False) -> list[float]:
        """Seconds spent so far in each step (`steps`: kernels, combine steps, output copies), each
        until every thread has finished it; only for a function compiled with `profile`."""
        if self._step_times is None:
            raise RuntimeError("step_times needs a NativeFunction compiled with profile=True")
        times = [t * 1e-9 for t in self._step_times]
        if reset:
            ctypes.memset(self._step_times, 0, ctypes.sizeof(self._step_times))
        return times

    def _output_shapes(self, dims: Sequence[int]) -> list[tuple[tuple, np.dtype]]:
        return [(tuple(d if i is None else dims[i] for i, d in spec), dtype) for dtype, spec in self._outputs]

    def _shape_error(self, name: str, t: TensorType, a: np.ndarray, binding: str = "") -> ShapeError:
        return ShapeError(f"argument {name!r}: expected shape {t}{binding}, got {a.ndim}-D shape {list(a.shape)}")

    def _workspace(self, size: int) -> int | None:
        local = self._per_thread
        try:
            if local.size >= size:
                return local.address
        except AttributeError:  # this thread's first call
            pass
        local.buffer = np.empty(size, np.uint8) if size else None
        local.size, local.address = size, local.buffer.ctypes.data if size else None
        return local.address

    @property
    def llvm_ir(self) -> str:
        """The optimized module's text, made on first use (optimized again: the compiled module has
        been through code generation since; and most compiles never look at it)."""
        if self._llvm_ir is None:
            module = llvm.parse_assembly(self.llvm_ir_unoptimized)
            optimize_module(module, host_target_machine())
            self._llvm_ir = str(module)
        return self._llvm_ir

    def asm(self) -> str:
        """Host assembly of the optimized module (compiled again with a separate target machine)."""
        module = llvm.parse_assembly(self.llvm_ir)
        return host_target_machine().emit_assembly(module)

    def _check(self, args: Sequence) -> tuple[list[np.ndarray], ctypes.Array]:
        """The arrays native code may read (C-ordered, aligned, checked) and the symbols' values."""
        if len(args) != self._n_inputs:
            raise TypeError(f"{self.graph.name} takes {self._n_inputs} arguments "
                            f"({', '.join(self.input_names)}), got {len(args)}")
        dims = self._dims_type() if self.symbols else _NO_DIMS
        bound: list[str | None] = [None] * len(self.symbols)  # the argument that set each symbol
        arrays = []
        for (name, t, dtype, static, axes), a in zip(self._inputs, args):
            if type(a) is not np.ndarray:
                a = np.asarray(a)
            if a.dtype != dtype:
                raise TypeError(f"argument {name!r}: expected dtype {dtype} ({t}), got {a.dtype}")
            if static is not None:
                if a.shape != static:
                    raise self._shape_error(name, t, a)
            elif a.ndim != t.rank:
                raise self._shape_error(name, t, a)
            else:
                for axis, i, d in axes:
                    n = a.shape[axis]
                    if i is None:
                        if n != d:
                            raise self._shape_error(name, t, a)
                    elif bound[i] is None:
                        dims[i], bound[i] = n, name
                    elif dims[i] != n:
                        source = "an earlier axis" if bound[i] == name else f"argument {bound[i]!r}"
                        raise self._shape_error(name, t, a, f" with {d}={dims[i]} (from {source})")
            flags = a.flags
            if not (flags.c_contiguous and flags.aligned):
                a = np.array(a, order="C")  # a copy: never read a strided or misaligned buffer wrongly
            arrays.append(a)
        return arrays, dims

    def _threads(self, work: float, start: bool = True) -> int:
        """The thread count for `work` operations; `start`: the helper threads it needs too."""
        # below PARALLEL_WORK operations, waking a helper thread costs more than it saves
        threads = POOL.threads
        if work < PARALLEL_WORK[0] or threads < 2:
            return 1
        if start and not POOL.started:
            POOL.start()
        return threads

    def __call__(self, *args: np.ndarray) -> Sequence[np.ndarray]:
        """Check the arguments, then make one native call; returns fresh output arrays."""
        outputs = self.fast(*args) if self.fast is not None else None
        return outputs if outputs is not None else self.checked_call(args)

    def hot_path(self) -> Callable[..., Sequence[np.ndarray] | None]:
        """What a caller that has seen these arguments' types before calls first, with the arguments:
        the outputs, or None when it refuses them (then call this object)."""
        return self.fast if self.fast is not None else lambda *args: None

    def checked_call(self, args: Sequence) -> list[np.ndarray]:
        """The path for anything the fast path refuses: lists, strided or misaligned arrays (copied),
        and wrong arguments (a Python exception naming the argument)."""
        arrays, dims = self._check(args)
        shapes, size, work, _ = self._static_plan or self._plan(tuple(dims[:len(self.symbols)]))
        outputs = [np.empty(shape, dtype) for shape, dtype in shapes]
        pointers = self._pointers(*(a.ctypes.data for a in arrays), *(a.ctypes.data for a in outputs))
        # the builtin's workspace, grown for these dims (so the next call fits), unless a call is
        # using it: then this thread's own
        claimed = claim_workspace(self.fast, size) if self.fast is not None else None
        try:
            workspace = (claimed or None) if claimed is not None else self._workspace(size)
            self._run(POOL.control_address, self._entry_address, pointers, dims, workspace, self._threads(work))
        finally:
            if claimed is not None:
                release_workspace(self.fast)
        return outputs
