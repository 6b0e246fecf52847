"""The call boundary in native code: `gradc_call` reads and checks numpy arrays' headers itself.

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
objects and the helper threads' control block), kept out of the IR so that its text, which users
read, is the same in every process. Every call goes on to the shared runtime's `run` (threads.py).
"""
from __future__ import annotations

import ctypes
from dataclasses import dataclass

import numpy as np
from llvmlite import ir

from gradc.ir.graph import Graph

from .codegen import cold_code
from .threads import POOL, declare_run

I8, I32, I64 = ir.IntType(8), ir.IntType(32), ir.IntType(64)
PTR = ir.PointerType(I8)
CALL = "gradc_call"
C_CONTIGUOUS_AND_ALIGNED = 0x0001 | 0x0100  # NPY_ARRAY_C_CONTIGUOUS | NPY_ARRAY_ALIGNED
RUNTIME_ARRAY_TYPE, RUNTIME_F32, RUNTIME_F64, RUNTIME_CONTROL = range(4)
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
RUNTIME = np.zeros(4, np.int64)
RUNTIME[RUNTIME_ARRAY_TYPE] = id(np.ndarray)
RUNTIME[RUNTIME_F32] = id(np.dtype(np.float32))  # the dtype singletons numpy gives its arrays
RUNTIME[RUNTIME_F64] = id(np.dtype(np.float64))
RUNTIME[RUNTIME_CONTROL] = POOL.control_address  # zeroed in place after fork, never moved


def emit_call(module: ir.Module, graph: Graph, symbols: dict[str, int], entry: ir.Function) -> None:
    """`gradc_call` for `graph` (see the module docstring); needs ARRAY_LAYOUT."""
    layout = ARRAY_LAYOUT
    n_in, n_out = len(graph.inputs), len(graph.outputs)
    fn = ir.Function(module, ir.FunctionType(I32, [PTR, PTR, PTR, PTR, I64]), CALL)
    cold_code(fn)  # measured: no slower a call (it is a few dozen loads and compares)
    arrays, dims, workspace, runtime, threads = fn.args
    b = ir.IRBuilder(fn.append_basic_block("entry"))
    items = [b.load(b.bitcast(b.gep(arrays, [ir.Constant(I64, TUPLE_ITEMS + 8 * i)], inbounds=True), PTR.as_pointer()))
             for i in range(n_in + n_out)]
    args = b.alloca(PTR, n_in + n_out, name="args")
    refuse = fn.append_basic_block("refuse")

    def word(obj: ir.Value, offset: int, ty: ir.Type) -> ir.Value:
        return b.load(b.bitcast(b.gep(obj, [ir.Constant(I64, offset)], inbounds=True), ty.as_pointer()))

    def runtime_word(slot: int) -> ir.Value:
        return b.load(b.gep(b.bitcast(runtime, I64.as_pointer()), [ir.Constant(I64, slot)], inbounds=True))

    refusals: list[tuple[ir.Block, int]] = []

    def require(ok: ir.Value, number: int) -> None:
        """Go on when `ok`; otherwise return `number`, the argument refused."""
        passed = fn.append_basic_block("ok")
        refusals.append((b.block, number))
        b.cbranch(ok, passed, refuse)
        b.position_at_end(passed)

    array_type = runtime_word(RUNTIME_ARRAY_TYPE)
    dim_values = b.bitcast(dims, I64.as_pointer())
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
    for j, obj in enumerate(items[n_in:]):
        b.store(word(obj, layout.data, PTR), b.gep(args, [ir.Constant(I64, n_in + j)], inbounds=True))

    control = b.inttoptr(runtime_word(RUNTIME_CONTROL), PTR)
    b.call(declare_run(module), [control, b.bitcast(entry, PTR), b.bitcast(args, PTR), dims, workspace, threads])
    b.ret(ir.Constant(I32, 0))

    b.position_at_end(refuse)
    number = b.phi(I32, "refused")
    for block, n in refusals:
        number.add_incoming(ir.Constant(I32, n), block)
    b.ret(number)
