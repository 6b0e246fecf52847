"""JIT-compiling a graph's LLVM module for the host CPU, and calling it safely on numpy arrays."""
from __future__ import annotations

import ctypes
import threading
from typing import Sequence

import llvmlite.binding as llvm
import numpy as np

from gradc.ir.graph import Graph
from gradc.ir.types import ShapeError, TensorType

from gradc.ir.fusion import FusionResult, fuse, unfused

from .llvm import ENTRY, WORKSPACE_SIZE, ModuleBuilder

_init_lock = threading.Lock()
_initialized = False


def _initialize() -> None:
    global _initialized
    with _init_lock:
        if not _initialized:
            llvm.initialize_native_target()
            llvm.initialize_native_asmprinter()
            llvm.initialize_native_asmparser()
            _initialized = True


def host_target_machine() -> llvm.TargetMachine:
    """A fresh target machine for the host CPU and its features (MCJIT takes ownership of one)."""
    _initialize()
    target = llvm.Target.from_triple(llvm.get_process_triple())
    return target.create_target_machine(cpu=llvm.get_host_cpu_name(),
                                        features=llvm.get_host_cpu_features().flatten(),
                                        opt=3, jit=True)


def optimize_module(module: llvm.ModuleRef, tm: llvm.TargetMachine) -> None:
    # a fresh tuning-options/pass-builder pair per module: O3 pass managers are single-use
    pto = llvm.create_pipeline_tuning_options(speed_level=3)
    pto.loop_vectorization = True
    pto.slp_vectorization = True
    pass_builder = llvm.create_pass_builder(tm, pto)
    pass_builder.getModulePassManager().run(module, pass_builder)


class NativeFunction:
    """A graph compiled to native code. Call it with one numpy array per graph input."""

    def __init__(self, graph: Graph, fusion: FusionResult | None = None) -> None:
        _initialize()
        self.graph = graph
        self.fusion = fusion if fusion is not None else fuse(graph)
        self.input_types: list[TensorType] = [v.type for v in graph.inputs]
        self.input_names = [v.name for v in graph.inputs]
        self.output_types: list[TensorType] = [v.type for v in graph.outputs]
        tm = host_target_machine()
        builder = ModuleBuilder(graph, self.fusion, tm.triple, str(tm.target_data))
        self.memory = builder.memory
        self.kernel_count = len(builder.kernels) + len(builder.output_copies)
        self.symbols = list(builder.symbols)
        self.llvm_ir_unoptimized = str(builder.build())
        module = llvm.parse_assembly(self.llvm_ir_unoptimized)
        module.verify()
        optimize_module(module, tm)
        self.llvm_ir = str(module)
        self._engine = llvm.create_mcjit_compiler(module, tm)
        self._engine.finalize_object()
        self._entry = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p)(
            self._engine.get_function_address(ENTRY))
        self._workspace_size = ctypes.CFUNCTYPE(ctypes.c_int64, ctypes.c_void_p)(
            self._engine.get_function_address(WORKSPACE_SIZE))
        self._static_workspace = None if self.symbols else int(self._workspace_size(None))
        self._pointers = ctypes.c_void_p * (len(self.input_types) + len(self.output_types))
        self._np_dtypes = [t.np_dtype for t in self.input_types]
        self._symbol_index = {s: i for i, s in enumerate(self.symbols)}

    def asm(self) -> str:
        """Host assembly of the optimized module (compiled again with a separate target machine)."""
        module = llvm.parse_assembly(self.llvm_ir)
        return host_target_machine().emit_assembly(module)

    def _check(self, args: Sequence) -> tuple[list[np.ndarray], np.ndarray]:
        if len(args) != len(self.input_types):
            raise TypeError(f"{self.graph.name} takes {len(self.input_types)} arguments "
                            f"({', '.join(self.input_names)}), got {len(args)}")
        dims = np.zeros(max(len(self.symbols), 1), np.int64)
        bound = [False] * len(self.symbols)
        arrays = []
        for name, t, dtype, a in zip(self.input_names, self.input_types, self._np_dtypes, args):
            if type(a) is not np.ndarray:
                a = np.asarray(a)
            if a.dtype != dtype:
                raise TypeError(f"argument {name!r}: expected dtype {dtype} ({t}), got {a.dtype}")
            if a.ndim != t.rank:
                raise ShapeError(f"argument {name!r}: expected shape {t}, got {a.ndim}-D shape {list(a.shape)}")
            for d, n in zip(t.shape, a.shape):
                if type(d) is int:
                    if d != n:
                        raise ShapeError(f"argument {name!r}: expected shape {t}, got {list(a.shape)}")
                else:
                    i = self._symbol_index[d]
                    if not bound[i]:
                        dims[i], bound[i] = n, True
                    elif dims[i] != n:
                        raise ShapeError(f"argument {name!r}: expected shape {t} with {d}={dims[i]} "
                                         f"(from an earlier argument), got {list(a.shape)}")
            if not (a.flags.c_contiguous and a.flags.aligned):
                a = np.array(a, order="C")  # a copy: never read a strided or misaligned buffer wrongly
            arrays.append(a)
        return arrays, dims

    def __call__(self, *args: np.ndarray) -> list[np.ndarray]:
        arrays, dims = self._check(args)
        env = {s: int(dims[i]) for i, s in enumerate(self.symbols)} if self.symbols else None
        outputs = [np.empty(tuple(env[d] if type(d) is str else d for d in t.shape) if env else t.shape,
                            t.np_dtype) for t in self.output_types]
        pointers = self._pointers(*(a.ctypes.data for a in arrays), *(o.ctypes.data for o in outputs))
        dims_address = dims.ctypes.data
        size = self._static_workspace if self._static_workspace is not None else \
            self._workspace_size(dims_address)
        workspace = np.empty(max(size, 1), np.uint8)
        self._entry(pointers, dims_address, workspace.ctypes.data)
        return outputs
