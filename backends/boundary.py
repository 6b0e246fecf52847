"""The call boundary in native code: `gradc_fast` and `gradc_call` read and check numpy arrays' headers.

Handing numpy arrays to native code through ctypes costs about 0.7 µs an array just to learn each
data address in Python, more than a tiny step's arithmetic. `gradc_call` instead takes the array
objects themselves (ctypes passes a `py_object` as a bare pointer) and reads their headers, whose
layout is numpy's public C struct `PyArrayObject_fields`. It checks what the Python path would:
the exact type ndarray, the dtype, the rank, every extent (symbolic dims included), and that the
data is C-contiguous and aligned. Any mismatch returns the failing argument's number before anything
runs, and the caller then takes the Python path, which copies what it can and otherwise raises the
error that names the argument. The layout is verified on real arrays at import; if it does not match
(another numpy or Python build), `ARRAY_LAYOUT` is None and only the Python path is used.

    i32 gradc_call(ptr arrays, ptr dims, ptr workspace, ptr runtime, i64 threads)

takes one tuple of the inputs then the outputs (allocated by the caller with the right shapes): a
ctypes call costs about 0.15 µs an argument, so one tuple beats ten arrays. `dims` holds the
symbolic dims' values the caller sized the outputs and workspace for: every extent must match them
(read here, not bound here, so an array reshaped in place by another thread meanwhile cannot make
the kernels overrun what was allocated). `runtime` points
at `RUNTIME`, addresses that change from process to process (ndarray's type object, the dtype
objects, the C functions below and the helper threads' control block), kept out of the IR so that
its text, which users read, is the same in every process. Every call goes on to the shared runtime's
`run` (threads.py).

A function without symbolic dims (every un-annotated one: it is compiled per shape) also gets
`gradc_fast`, which Python calls as a builtin function (METH_FASTCALL) rather than through ctypes.
It does the same checks, makes the outputs itself with numpy's C function PyArray_Empty, releases
the interpreter lock around `run`, and returns the outputs' tuple: the tiny seed step went from 8.8
to 6.1 µs a call, and `jit(lambda x: x + 1.0)` from 2.3 to 1.4 µs. With symbolic dims, the output
shapes, the workspace size and the thread count depend on the dims, which Python works out (and
remembers) before calling `gradc_call`.
"""
from __future__ import annotations

import ctypes
import weakref
from dataclasses import dataclass

import numpy as np
from llvmlite import ir

from gradc.ir.graph import Graph

from .codegen import cold_code
from .runtime import after_fork_in_child
from .threads import LINE, POOL, READY, declare_run

I8, I32, I64 = ir.IntType(8), ir.IntType(32), ir.IntType(64)
PTR = ir.PointerType(I8)
CALL = "gradc_call"
C_CONTIGUOUS_AND_ALIGNED = 0x0001 | 0x0100  # NPY_ARRAY_C_CONTIGUOUS | NPY_ARRAY_ALIGNED
(RUNTIME_ARRAY_TYPE, RUNTIME_F32, RUNTIME_F64, RUNTIME_CONTROL, RUNTIME_NONE, RUNTIME_INCREF, RUNTIME_DECREF,
 RUNTIME_TUPLE_NEW, RUNTIME_SAVE_THREAD, RUNTIME_RESTORE_THREAD, RUNTIME_ARRAY_EMPTY) = range(11)
FAST = "gradc_fast"
# a fast entry's context: int64 words, the first item of the tuple that is its `self`
CONTEXT_RUNTIME, CONTEXT_WORKSPACE, CONTEXT_BUSY, CONTEXT_PARALLEL = range(4)
METH_FASTCALL = 0x0080
DTYPE_SLOTS = {"f32": RUNTIME_F32, "f64": RUNTIME_F64}


@dataclass(frozen=True)
class ArrayLayout:
    """Byte offsets of the header fields of a numpy array object."""

    type: int
    data: int
    ndim: int
    shape: int
    descr: int
    flags: int


def _probe_array_layout() -> ArrayLayout | None:
    """numpy's struct after the object header, checked field by field against arrays we know."""
    header = object.__basicsize__  # ob_type is the header's last field, in every CPython build
    layout = ArrayLayout(type=header - 8, data=header, ndim=header + 8, shape=header + 16, descr=header + 40,
                         flags=header + 48)
    if layout.flags + 4 > np.ndarray.__basicsize__:
        return None
    probes = [np.empty((3, 5), np.float32), np.empty((4, 2), np.float64, order="F")[::2], np.empty((), np.float32)]
    for a in probes:
        base = id(a)
        ndim = ctypes.c_int32.from_address(base + layout.ndim).value
        if (ctypes.c_void_p.from_address(base + layout.type).value != id(np.ndarray)
                or ctypes.c_void_p.from_address(base + layout.data).value != a.ctypes.data
                or ctypes.c_void_p.from_address(base + layout.descr).value != id(a.dtype)
                or ndim != a.ndim
                or ctypes.c_int32.from_address(base + layout.flags).value != a.flags.num):
            return None
        if ndim and tuple((ctypes.c_int64 * ndim).from_address(
                ctypes.c_void_p.from_address(base + layout.shape).value)) != a.shape:
            return None
    return layout


def _tuple_items_offset() -> int | None:
    """Where a tuple's item pointers start (CPython's PyTupleObject), checked on a real tuple."""
    offset = tuple.__basicsize__
    probe = (object(), object(), object())
    items = (ctypes.c_void_p * 3).from_address(id(probe) + offset)
    return offset if tuple(items) == tuple(id(x) for x in probe) and tuple.__itemsize__ == 8 else None


TUPLE_ITEMS = _tuple_items_offset()
ARRAY_LAYOUT = _probe_array_layout() if TUPLE_ITEMS is not None else None


def _c_function(name: str) -> int:
    return ctypes.cast(getattr(ctypes.pythonapi, name), ctypes.c_void_p).value


def _python_c_functions() -> dict[int, int] | None:
    """RUNTIME's slots of the C-API functions gradc_fast calls; None if this Python lacks one."""
    try:
        return {slot: _c_function(name) for slot, name in (
            (RUNTIME_INCREF, "Py_IncRef"), (RUNTIME_DECREF, "Py_DecRef"), (RUNTIME_TUPLE_NEW, "PyTuple_New"),
            (RUNTIME_SAVE_THREAD, "PyEval_SaveThread"), (RUNTIME_RESTORE_THREAD, "PyEval_RestoreThread"),
            (-1, "PyCFunction_NewEx"))}
    except (AttributeError, ValueError):
        return None


def _array_empty() -> int | None:
    """numpy's C function `PyArray_Empty` (slot 184 of its C-API table, fixed by numpy's ABI), if a
    call of it through ctypes makes the array it should; None where it does not."""
    try:
        core = getattr(np, "_core", None) or np.core
        capsule = core._multiarray_umath._ARRAY_API
        get = ctypes.pythonapi.PyCapsule_GetPointer
        get.restype, get.argtypes = ctypes.c_void_p, [ctypes.py_object, ctypes.c_char_p]
        address = ctypes.c_void_p.from_address(get(capsule, None) + 8 * 184).value
        empty = ctypes.PYFUNCTYPE(ctypes.py_object, ctypes.c_int, ctypes.c_void_p, ctypes.py_object,
                                  ctypes.c_int)(address)
        dtype = np.dtype(np.float32)
        ctypes.pythonapi.Py_IncRef(ctypes.py_object(dtype))  # PyArray_Empty steals a reference
        probe = empty(2, ctypes.addressof((ctypes.c_int64 * 2)(3, 5)), dtype, 0)
    except (AttributeError, TypeError, ValueError):
        return None
    ok = type(probe) is np.ndarray and probe.shape == (3, 5) and probe.dtype == dtype and probe.flags.c_contiguous
    return address if ok else None


PYTHON_C_FUNCTIONS = _python_c_functions() if ARRAY_LAYOUT is not None else None
ARRAY_EMPTY = _array_empty() if PYTHON_C_FUNCTIONS is not None else None
"""Where None, functions without symbolic dims have no gradc_fast and go through gradc_call."""
RUNTIME = np.zeros(11, np.int64)
RUNTIME[RUNTIME_ARRAY_TYPE] = id(np.ndarray)
RUNTIME[RUNTIME_F32] = id(np.dtype(np.float32))  # the dtype singletons numpy gives its arrays
RUNTIME[RUNTIME_F64] = id(np.dtype(np.float64))
RUNTIME[RUNTIME_CONTROL] = POOL.control_address  # zeroed in place after fork, never moved
RUNTIME[RUNTIME_NONE] = id(None)
for _slot, _address in (PYTHON_C_FUNCTIONS or {}).items():
    if _slot >= 0:
        RUNTIME[_slot] = _address
RUNTIME[RUNTIME_ARRAY_EMPTY] = ARRAY_EMPTY or 0


def _check_inputs(b: ir.IRBuilder, items: list[ir.Value], graph: Graph,
                  runtime_word, dim_values: ir.Value | None, symbols: dict[str, int], args: ir.Value,
                  require) -> None:
    """Check each input object as the Python path would (see the module docstring) and store its
    data address into `args`; `require(ok, number)` branches away when an input is refused."""
    layout = ARRAY_LAYOUT

    def word(obj: ir.Value, offset: int, ty: ir.Type) -> ir.Value:
        return b.load(b.bitcast(b.gep(obj, [ir.Constant(I64, offset)], inbounds=True), ty.as_pointer()))

    array_type = runtime_word(RUNTIME_ARRAY_TYPE)
    for i, (obj, v) in enumerate(zip(items, graph.inputs), start=1):
        t = v.type
        require(b.icmp_unsigned("==", word(obj, layout.type, I64), array_type), i)  # exactly ndarray
        require(b.icmp_unsigned("==", word(obj, layout.descr, I64), runtime_word(DTYPE_SLOTS[t.dtype])), i)
        require(b.icmp_signed("==", word(obj, layout.ndim, I32), ir.Constant(I32, t.rank)), i)
        flags = b.and_(word(obj, layout.flags, I32), ir.Constant(I32, C_CONTIGUOUS_AND_ALIGNED))
        require(b.icmp_unsigned("==", flags, ir.Constant(I32, C_CONTIGUOUS_AND_ALIGNED)), i)
        shape = b.bitcast(word(obj, layout.shape, PTR), I64.as_pointer())
        for axis, d in enumerate(t.shape):
            extent = b.load(b.gep(shape, [ir.Constant(I64, axis)], inbounds=True))
            expected = ir.Constant(I64, d) if isinstance(d, int) else \
                b.load(b.gep(dim_values, [ir.Constant(I64, symbols[d])], inbounds=True))
            require(b.icmp_signed("==", extent, expected), i)
        b.store(word(obj, layout.data, PTR), b.gep(args, [ir.Constant(I64, i - 1)], inbounds=True))


class _Refusals:
    """Branches to one `refuse` block, which knows (as a phi) which argument was refused."""

    def __init__(self, b: ir.IRBuilder, fn: ir.Function) -> None:
        self.b, self.fn, self.sources = b, fn, []
        self.block = fn.append_basic_block("refuse")

    def require(self, ok: ir.Value, number: int) -> None:
        passed = self.fn.append_basic_block("ok")
        self.sources.append((self.b.block, number))
        self.b.cbranch(ok, passed, self.block)
        self.b.position_at_end(passed)

    def number(self) -> ir.Value:
        """At the start of the refuse block: the refused argument's number."""
        self.b.position_at_end(self.block)
        phi = self.b.phi(I32, "refused")
        for block, n in self.sources:
            phi.add_incoming(ir.Constant(I32, n), block)
        return phi


def _runtime_words(b: ir.IRBuilder, runtime: ir.Value):
    def runtime_word(slot: int) -> ir.Value:
        return b.load(b.gep(b.bitcast(runtime, I64.as_pointer()), [ir.Constant(I64, slot)], inbounds=True))
    return runtime_word


def emit_call(module: ir.Module, graph: Graph, symbols: dict[str, int], entry: ir.Function) -> None:
    """`gradc_call` for `graph` (see the module docstring); needs ARRAY_LAYOUT."""
    n_in, n_out = len(graph.inputs), len(graph.outputs)
    fn = ir.Function(module, ir.FunctionType(I32, [PTR, PTR, PTR, PTR, I64]), CALL)
    cold_code(fn)  # measured: no slower a call (it is a few dozen loads and compares)
    arrays, dims, workspace, runtime, threads = fn.args
    b = ir.IRBuilder(fn.append_basic_block("entry"))
    items = [b.load(b.bitcast(b.gep(arrays, [ir.Constant(I64, TUPLE_ITEMS + 8 * i)], inbounds=True), PTR.as_pointer()))
             for i in range(n_in + n_out)]
    args = b.alloca(PTR, n_in + n_out, name="args")
    refusals = _Refusals(b, fn)
    runtime_word = _runtime_words(b, runtime)
    _check_inputs(b, items[:n_in], graph, runtime_word, b.bitcast(dims, I64.as_pointer()), symbols, args,
                  refusals.require)
    for j, obj in enumerate(items[n_in:]):
        data = b.gep(obj, [ir.Constant(I64, ARRAY_LAYOUT.data)], inbounds=True)
        b.store(b.load(b.bitcast(data, PTR.as_pointer())), b.gep(args, [ir.Constant(I64, n_in + j)], inbounds=True))

    control = b.inttoptr(runtime_word(RUNTIME_CONTROL), PTR)
    b.call(declare_run(module), [control, b.bitcast(entry, PTR), b.bitcast(args, PTR), dims, workspace, threads])
    b.ret(ir.Constant(I32, 0))
    b.ret(refusals.number())


def emit_fast_call(module: ir.Module, graph: Graph, entry: ir.Function) -> None:
    """`gradc_fast`, a METH_FASTCALL C function of Python's (see `fast_function`) for a graph without
    symbolic dims: it checks the inputs as `gradc_call` does, makes the outputs with numpy's
    PyArray_Empty, runs the entry with the interpreter lock released, and returns the outputs as a
    tuple; or None, refusing, when an argument (or the argument count) does not fit, when another
    thread is using its workspace, or when the helper threads it needs have not been started: the
    caller then takes the Python path. NULL, with Python's error set, when numpy cannot allocate.

        ptr gradc_fast(ptr self, ptr args, i64 nargs)     self = (context, owner)
    """
    n_in, n_out = len(graph.inputs), len(graph.outputs)
    fn = ir.Function(module, ir.FunctionType(PTR, [PTR, PTR, I64]), FAST)
    cold_code(fn)
    self_, vector, nargs = fn.args
    b = ir.IRBuilder(fn.append_basic_block("entry"))

    def at(base: ir.Value, offset: int, ty: ir.Type = PTR) -> ir.Value:
        return b.bitcast(b.gep(base, [ir.Constant(I64, offset)], inbounds=True), ty.as_pointer())

    context_object = b.load(at(self_, TUPLE_ITEMS))
    context = b.bitcast(b.load(at(context_object, ARRAY_LAYOUT.data)), I64.as_pointer())

    def context_word(slot: int) -> ir.Value:
        return b.gep(context, [ir.Constant(I64, slot)], inbounds=True)

    runtime = b.inttoptr(b.load(context_word(CONTEXT_RUNTIME)), PTR)
    runtime_word = _runtime_words(b, runtime)

    def c_function(slot: int, result: ir.Type, params: list[ir.Type]) -> ir.Value:
        return b.inttoptr(runtime_word(slot), ir.FunctionType(result, params).as_pointer())

    refusals = _Refusals(b, fn)
    refusals.require(b.icmp_signed("==", nargs, ir.Constant(I64, n_in)), 0)
    items = [b.load(b.gep(b.bitcast(vector, PTR.as_pointer()), [ir.Constant(I64, i)], inbounds=True))
             for i in range(n_in)]
    args = b.alloca(PTR, n_in + n_out, name="args")
    _check_inputs(b, items, graph, runtime_word, None, {}, args, refusals.require)

    parallel = b.icmp_unsigned("!=", b.load(context_word(CONTEXT_PARALLEL)), ir.Constant(I64, 0))
    control = b.inttoptr(runtime_word(RUNTIME_CONTROL), PTR)
    ready = b.load(b.bitcast(b.gep(control, [ir.Constant(I64, READY * LINE)], inbounds=True), I64.as_pointer()))
    threads = b.select(parallel, ready, ir.Constant(I64, 1))
    refusals.require(b.icmp_unsigned("!=", threads, ir.Constant(I64, 0)), 0)  # helpers not started
    busy = context_word(CONTEXT_BUSY)
    claimed = b.extract_value(b.cmpxchg(busy, ir.Constant(I64, 0), ir.Constant(I64, 1), "acquire", "monotonic"), 1)
    refusals.require(claimed, 0)

    incref = c_function(RUNTIME_INCREF, ir.VoidType(), [PTR])
    decref = c_function(RUNTIME_DECREF, ir.VoidType(), [PTR])
    empty = c_function(RUNTIME_ARRAY_EMPTY, PTR, [I32, I64.as_pointer(), PTR, I32])
    outputs = []
    for j, v in enumerate(graph.outputs):
        extents = ir.GlobalVariable(module, ir.ArrayType(I64, max(v.type.rank, 1)), f"gradc_fast.shape{j}")
        extents.global_constant, extents.linkage = True, "internal"
        extents.initializer = ir.Constant(extents.value_type, list(v.type.shape) or [0])
        descr = b.inttoptr(runtime_word(DTYPE_SLOTS[v.type.dtype]), PTR)
        b.call(incref, [descr])  # stolen by PyArray_Empty
        array = b.call(empty, [ir.Constant(I32, v.type.rank), b.bitcast(extents, I64.as_pointer()), descr,
                               ir.Constant(I32, 0)])
        with b.if_then(b.icmp_unsigned("==", array, ir.Constant(PTR, None)), likely=False):
            for earlier in outputs:
                b.call(decref, [earlier])
            b.store_atomic(ir.Constant(I64, 0), busy, "release", 8)
            b.ret(ir.Constant(PTR, None))  # numpy's MemoryError is set
        outputs.append(array)
        b.store(b.load(at(array, ARRAY_LAYOUT.data)), b.gep(args, [ir.Constant(I64, n_in + j)], inbounds=True))

    workspace = b.inttoptr(b.load(context_word(CONTEXT_WORKSPACE)), PTR)
    state = b.call(c_function(RUNTIME_SAVE_THREAD, PTR, []), [])
    b.call(declare_run(module), [control, b.bitcast(entry, PTR), b.bitcast(args, PTR), ir.Constant(PTR, None),
                                 workspace, threads])
    b.call(c_function(RUNTIME_RESTORE_THREAD, ir.VoidType(), [PTR]), [state])
    b.store_atomic(ir.Constant(I64, 0), busy, "release", 8)

    result = b.call(c_function(RUNTIME_TUPLE_NEW, PTR, [I64]), [ir.Constant(I64, n_out)])
    with b.if_then(b.icmp_unsigned("==", result, ir.Constant(PTR, None)), likely=False):
        for array in outputs:
            b.call(decref, [array])
        b.ret(ir.Constant(PTR, None))
    for j, array in enumerate(outputs):  # the tuple takes over our references
        b.store(array, at(result, TUPLE_ITEMS + 8 * j))
    b.ret(result)

    refusals.number()
    none = b.inttoptr(runtime_word(RUNTIME_NONE), PTR)
    b.call(c_function(RUNTIME_INCREF, ir.VoidType(), [PTR]), [none])
    b.ret(none)


class _MethodDef(ctypes.Structure):
    _fields_ = [("name", ctypes.c_char_p), ("function", ctypes.c_void_p), ("flags", ctypes.c_int),
                ("doc", ctypes.c_char_p)]


_contexts: weakref.WeakValueDictionary = weakref.WeakValueDictionary()  # id -> context


def _free_workspaces_after_fork() -> None:
    for context in list(_contexts.values()):  # the calls that held them are not in the child
        context[CONTEXT_BUSY] = 0


after_fork_in_child(_free_workspaces_after_fork)


def fast_function(address: int, workspace: int | None, parallel: bool, owner: object):
    """A Python builtin function calling `gradc_fast` at `address` (see emit_fast_call); it keeps
    `owner` (the engine holding the code, and the workspace) alive. `workspace`: its own, used by
    one call at a time. The thread threshold `parallel` is decided here, once."""
    new_function = ctypes.PYFUNCTYPE(ctypes.py_object, ctypes.POINTER(_MethodDef), ctypes.py_object,
                                     ctypes.py_object)(PYTHON_C_FUNCTIONS[-1])
    context = np.zeros(4, np.int64)
    _contexts[id(context)] = context
    context[CONTEXT_RUNTIME] = RUNTIME.ctypes.data
    context[CONTEXT_WORKSPACE] = workspace or 0
    context[CONTEXT_PARALLEL] = int(parallel)
    method = _MethodDef(b"gradc_fast", address, METH_FASTCALL, None)
    return new_function(ctypes.byref(method), (context, owner, method), None)
