"""The shared runtime: model-independent native functions, compiled once per process.

The GEMM drivers (`gemm.define_gemm`: blocking loops, micro-kernels, packing routines) depend only
on the dtype, the transposes and the GEMM configuration, not on the model. A model's module
therefore only declares the ones it calls (`declare`); `link` compiles those this process has not
compiled yet, in a module of their own, and registers their addresses with `llvm.add_symbol`,
through which MCJIT resolves the model's calls. Measured on the seed network's training step: the
GEMM code was ~190 of ~420 ms of a model's compile, and its blocking loops (then emitted once per
matmul kernel) most of the rest.

Runtime functions are never freed: their engines stay alive for the process, as every later
model may call them.
"""
from __future__ import annotations

import threading
from typing import Callable

import llvmlite.binding as llvm
from llvmlite import ir

PREFIX = "gradc.rt."
"""Every runtime function's name starts with this; a name spells out everything its code depends on."""

_definitions: dict[str, Callable[[ir.Module], ir.Function]] = {}
_addresses: dict[str, int] = {}
_engines: list[llvm.ExecutionEngine] = []
_lock = threading.Lock()


def declare(module: ir.Module, name: str, fnty: ir.FunctionType,
            define: Callable[[ir.Module], ir.Function]) -> ir.Function:
    """The runtime function `name` as seen from `module`: a declaration, or the module's own
    definition when it has one. `define(m)` must define it, external, in another module `m`."""
    assert name.startswith(PREFIX), name
    _definitions.setdefault(name, define)
    existing = module.globals.get(name)
    return existing if existing is not None else ir.Function(module, fnty, name)


def link(module: ir.Module) -> None:
    """Make every runtime function `module` declares callable: compile the ones missing, once.

    MCJIT reports no unresolved symbol (calling one crashes), hence the check of every
    runtime-prefixed declaration here, before the module is compiled.
    """
    declared = [f.name for f in module.functions if f.is_declaration and f.name.startswith(PREFIX)]
    unknown = [name for name in declared if name not in _definitions]
    if unknown:
        raise RuntimeError(f"no definition of runtime function(s) {', '.join(unknown)}")
    with _lock:
        missing = [name for name in declared if name not in _addresses]
        if missing:
            _compile(missing)


def address(name: str, define: Callable[[ir.Module], ir.Function]) -> int:
    """The address of runtime function `name` (defined by `define`), compiled now if need be: for
    callers outside compiled code, such as a helper thread's loop."""
    _definitions.setdefault(name, define)
    with _lock:
        if name not in _addresses:
            _compile([name])
    return _addresses[name]


def compiled_names() -> list[str]:
    """The runtime functions this process has compiled so far."""
    return list(_addresses)


def _compile(names: list[str]) -> None:
    from .jit import host_target_machine, optimize_module  # jit imports this module
    tm = host_target_machine()
    module = ir.Module(name="gradc.runtime")
    module.triple, module.data_layout = tm.triple, str(tm.target_data)
    for name in names:
        _definitions[name](module)
    ref = llvm.parse_assembly(str(module))
    ref.verify()
    optimize_module(ref, tm)
    engine = llvm.create_mcjit_compiler(ref, tm)
    engine.finalize_object()
    for name in names:
        address = engine.get_function_address(name)
        llvm.add_symbol(name, address)
        _addresses[name] = address
    _engines.append(engine)
