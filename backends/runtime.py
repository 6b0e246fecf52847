"""The shared runtime: model-independent native functions, compiled once per process.

The GEMM drivers (`gemm.define_gemm`: blocking loops, micro-kernels, packing routines) depend only
on the dtype, the transposes and the GEMM configuration, not on the model. A model's module
therefore only declares the ones it calls (`declare`); `link` compiles those this process has not
compiled yet, in a module of their own, and registers their addresses with `llvm.add_symbol`,
through which MCJIT resolves the model's calls. Measured on the seed network's training step: the
GEMM code was ~190 of ~420 ms of a model's compile, and its blocking loops (then emitted once per
matmul kernel) most of the rest.

Runtime functions are never freed: their engines stay alive for the process, as every later
model may call them. Their object code is also kept on disk (`cache_dir`), keyed by a hash of the
host, the backend's source and the names compiled together, so a new process loads it instead of
compiling it again.
"""
from __future__ import annotations

import functools
import hashlib
import os
import re
import tempfile
import threading
from pathlib import Path
from typing import Callable

import llvmlite
import llvmlite.binding as llvm
from llvmlite import ir

PREFIX = "gradc.rt."
"""Every runtime function's name starts with this; a name spells out everything its code depends on."""

CACHE_ENTRIES = 64
"""Object files kept in the cache; past that the least recently used go (a new gradc version, new
names or another host each add a few, tens of KB apiece)."""

_definitions: dict[str, Callable[[ir.Module], ir.Function]] = {}
_addresses: dict[str, int] = {}
_engines: list[llvm.ExecutionEngine] = []


def after_fork_in_child(callback: Callable[[], None]) -> None:
    """Run `callback` in the child process after os.fork, on platforms that have fork."""
    if hasattr(os, "register_at_fork"):
        os.register_at_fork(after_in_child=callback)


_lock = threading.Lock()
after_fork_in_child(lambda: globals().update(_lock=threading.Lock()))  # a fork mid-compile
cache_hits = 0  # runtime modules loaded from the cache (see cache_dir) rather than compiled


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


def cache_dir() -> Path | None:
    """Where compiled runtime code is kept between processes: GRADC_CACHE_DIR, else
    ~/.cache/gradc (XDG_CACHE_HOME); GRADC_CACHE_DIR set to an empty string turns it off. Only this
    model-independent library code is cached; a model's own code is compiled every time."""
    setting = os.environ.get("GRADC_CACHE_DIR")
    if setting is not None:
        return Path(setting) if setting else None
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "gradc"


@functools.lru_cache(maxsize=1)
def _code_version() -> str | None:
    """A digest of the backend's source: the runtime IR is a function of it and the names. None
    (no caching) when the source is not there to read, as in a bytecode-only install."""
    sources = sorted(Path(__file__).parent.glob("*.py"))
    if not sources:
        return None
    digest = hashlib.sha256(llvmlite.__version__.encode())
    for path in sources:
        digest.update(path.read_bytes())
    return digest.hexdigest()


def _cache_key(names: list[str]) -> str:
    from .jit import host_features  # jit imports this module
    host = f"{llvm.get_process_triple()} {llvm.get_host_cpu_name()} {host_features()}"
    return hashlib.sha256(f"{host}\n{_code_version()}\n{' '.join(sorted(names))}".encode()).hexdigest()


def _ours(path: Path) -> bool:
    """Only code this user compiled is ever loaded (or evicted)."""
    return not hasattr(os, "getuid") or path.stat().st_uid == os.getuid()


def _cached_object(key: str) -> bytes | None:
    """The object code stored under `key`, if present and intact (its name carries its digest)."""
    folder = cache_dir()
    if folder is None or _code_version() is None:
        return None
    for path in folder.glob(f"{key}.*.o"):
        try:  # another process may evict it meanwhile
            if not _ours(path):
                continue
            data = path.read_bytes()
            if path.name == f"{key}.{hashlib.sha256(data).hexdigest()}.o":
                os.utime(path)  # recently used: evicted last
                return data
        except OSError:
            continue
    return None


_ENTRY_NAME = re.compile(r"[0-9a-f]{64}\.[0-9a-f]{64}\.o")


def _evict(folder: Path) -> None:
    """Delete all but the CACHE_ENTRIES most recently used of our object files (a user's own files
    in the same folder are never touched)."""
    entries = []
    for path in folder.glob("*.o"):
        try:
            if _ENTRY_NAME.fullmatch(path.name) and _ours(path):
                entries.append((path.stat().st_mtime, path))
        except OSError:  # another process evicted it meanwhile
            pass
    for _, path in sorted(entries, reverse=True)[CACHE_ENTRIES:]:
        try:
            path.unlink()
        except OSError:
            pass


def _store_object(key: str, data: bytes) -> None:
    folder = cache_dir()
    if folder is None or _code_version() is None:
        return
    try:  # written aside, then renamed: a reader never sees half a file
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, delete=False) as out:
            out.write(data)
        os.replace(out.name, folder / f"{key}.{hashlib.sha256(data).hexdigest()}.o")
        _evict(folder)
    except OSError:
        pass  # a read-only or full disk only costs the next process a compile


def _compile(names: list[str]) -> None:
    global cache_hits
    from .jit import host_target_machine, optimize_module  # jit imports this module
    tm = host_target_machine()
    module = ir.Module(name="gradc.runtime")
    module.triple, module.data_layout = tm.triple, str(tm.target_data)
    key = _cache_key(names)
    cached = _cached_object(key)
    if cached is None:
        for name in names:
            _definitions[name](module)
    else:  # MCJIT loads the object in place of this empty module's code
        cache_hits += 1
    ref = llvm.parse_assembly(str(module))
    ref.verify()
    if cached is None:
        optimize_module(ref, tm)
    engine = llvm.create_mcjit_compiler(ref, tm)
    engine.set_object_cache(lambda _module, data: _store_object(key, data), lambda _module: cached)
    engine.finalize_object()
    for name in names:
        address = engine.get_function_address(name)
        llvm.add_symbol(name, address)
        _addresses[name] = address
    _engines.append(engine)
