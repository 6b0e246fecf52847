"""The call boundary in native code: `fast_call`, a Python builtin that reads numpy arrays' headers.

Each compiled function has a builtin (`gradc_fast`, made by `fast_function`) which Python calls
as a C function (METH_FASTCALL), not through ctypes. All of them run the one `fast_call` of the
shared runtime, each with a context that describes its function (`describe`: dtypes, ranks,
extents and symbolic dims, the workspace bound, the work, the entry's address): learning an array's data address in Python costs about 0.7 µs,
and a ctypes call 0.15 µs an argument, more than a tiny step's arithmetic. It reads the argument
objects' headers, whose layout is numpy's public C struct `PyArrayObject_fields`, and checks what
the Python path would: the exact type ndarray, the dtype, the rank, that the data is C-contiguous
and aligned, and every extent, binding each symbolic dim where it first occurs. It then checks that
its workspace is large enough for these dims, decides the thread count from the operation count,
makes the outputs with numpy's C function PyArray_Empty, releases the interpreter lock around the
shared runtime's `run` (threads.py) and returns the outputs' tuple. Anything it refuses (it returns
None) takes the Python path, which copies what it can, raises the error that names the argument,
or grows the workspace for the next call. The tiny seed step went from 8.8 µs a call through ctypes
to 6.1 µs, and `jit(lambda x: x + 1.0)` from 2.3 to 1.4 µs (0.8 µs on a quiet machine).

The layouts are verified on real objects at import; where they do not match (another numpy or
Python build) `ARRAY_LAYOUT` or `ARRAY_EMPTY` is None and every call takes the Python path. The
builtin's context points at `RUNTIME`, addresses that change from process to process (ndarray's
type object, the dtype objects, the C functions it calls and the helper threads' control block),
kept out of the IR so that its text, which users read, is the same in every process.
"""
from __future__ import annotations

import ctypes
import weakref
from dataclasses import dataclass

import numpy as np
from llvmlite import ir

from gradc.ir.graph import Graph

from . import runtime
from .codegen import emit_loop
from .runtime import after_fork_in_child
from .threads import LINE, POOL, READY, declare_run, run_address

Term = tuple[int, tuple[str, ...]]

I8, I32, I64, F64 = ir.IntType(8), ir.IntType(32), ir.IntType(64), ir.DoubleType()
PTR = ir.PointerType(I8)
C_CONTIGUOUS_AND_ALIGNED = 0x0001 | 0x0100  # NPY_ARRAY_C_CONTIGUOUS | NPY_ARRAY_ALIGNED
(RUNTIME_ARRAY_TYPE, RUNTIME_F32, RUNTIME_F64, RUNTIME_CONTROL, RUNTIME_NONE, RUNTIME_INCREF, RUNTIME_DECREF,
 RUNTIME_TUPLE_NEW, RUNTIME_SAVE_THREAD, RUNTIME_RESTORE_THREAD, RUNTIME_ARRAY_EMPTY, RUNTIME_PARALLEL_WORK) = range(12)
# a fast entry's context: int64 words, the first item of the tuple that is its `self`
(CONTEXT_RUNTIME, CONTEXT_WORKSPACE, CONTEXT_CAPACITY, CONTEXT_BUSY, CONTEXT_ENTRY, CONTEXT_WORKSPACE_SIZE,
 CONTEXT_DESCRIPTION) = range(7)
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


_C_API_SLOTS = ((RUNTIME_INCREF, "Py_IncRef"), (RUNTIME_DECREF, "Py_DecRef"), (RUNTIME_TUPLE_NEW, "PyTuple_New"),
                 (RUNTIME_SAVE_THREAD, "PyEval_SaveThread"), (RUNTIME_RESTORE_THREAD, "PyEval_RestoreThread"))


def _python_c_functions() -> dict[str, int] | None:
    """The addresses of the C-API functions gradc_fast calls (and of PyCFunction_NewEx, which makes
    it a builtin); None if this Python lacks one."""
    try:
        return {name: _c_function(name) for name in [n for _, n in _C_API_SLOTS] + ["PyCFunction_NewEx"]}
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
"""Where None, no function has a gradc_fast: every call takes the Python path."""
RUNTIME = np.zeros(12, np.int64)
RUNTIME[RUNTIME_ARRAY_TYPE] = id(np.ndarray)
RUNTIME[RUNTIME_F32] = id(np.dtype(np.float32))  # the dtype singletons numpy gives its arrays
RUNTIME[RUNTIME_F64] = id(np.dtype(np.float64))
RUNTIME[RUNTIME_CONTROL] = POOL.control_address  # zeroed in place after fork, never moved
RUNTIME[RUNTIME_NONE] = id(None)
for _slot, _name in _C_API_SLOTS:
    RUNTIME[_slot] = (PYTHON_C_FUNCTIONS or {}).get(_name, 0)
RUNTIME[RUNTIME_ARRAY_EMPTY] = ARRAY_EMPTY or 0
PARALLEL_WORK = RUNTIME[RUNTIME_PARALLEL_WORK:RUNTIME_PARALLEL_WORK + 1].view(np.float64)
"""[operations]: a call of fewer runs on one thread (waking a helper would cost more than it saves);
one setting, in RUNTIME, for native and Python callers: assign PARALLEL_WORK[0] (tests use the
`parallel_work` fixture), never rebind the name."""
PARALLEL_WORK[0] = 4e6


def _word(b: ir.IRBuilder, obj: ir.Value, offset: int, ty: ir.Type) -> ir.Value:
    return b.load(b.bitcast(b.gep(obj, [ir.Constant(I64, offset)], inbounds=True), ty.as_pointer()))


class _Refusals:
    """Branches to one `refuse` block, where the builtin returns None."""

    def __init__(self, b: ir.IRBuilder, fn: ir.Function) -> None:
        self.b, self.fn = b, fn
        self.block = fn.append_basic_block("refuse")

    def require(self, ok: ir.Value) -> None:
        passed = self.fn.append_basic_block("ok")
        self.b.cbranch(ok, passed, self.block)
        self.b.position_at_end(passed)


FAST_CALL = runtime.PREFIX + "fast_call" + ("" if ARRAY_LAYOUT is None else ".t{}.a{}".format(
    TUPLE_ITEMS, ".".join(str(getattr(ARRAY_LAYOUT, f)) for f in ("type", "data", "ndim", "shape", "descr", "flags"))))
"""Its code reads array and tuple headers at this Python's offsets, so its name (by which its object
code is cached on disk) spells them out: another Python build sharing the cache compiles its own."""
MAX_RANK = 64  # numpy's NPY_MAXDIMS
UNBOUND = -1   # a symbolic dim not yet seen (extents are never negative)


def describe(graph: Graph, symbols: dict[str, int], slot_bytes: list[list[Term]], work: list[Term]) -> list[int]:
    """What `fast_call` needs to know of a compiled function, as int64 words (the context's from
    CONTEXT_DESCRIPTION on), in the order it reads them: the input, output and symbol counts; per
    input its dtype slot, rank and extents; the workspace bound (`slot_bytes`, summed: dims for
    which it reaches 2^61 bytes go to Python, which raises MemoryError); the operation count
    deciding the thread count (`work`, against PARALLEL_WORK); per output its dtype slot, rank and
    extents. An extent is its value, or -1 - s for symbolic dim s. A polynomial is its term count,
    then per term the coefficient (a double's bits), the factor count and the factors' dims."""
    def extents(shape) -> list[int]:
        return [d if isinstance(d, int) else -1 - symbols[d] for d in shape]

    def polynomial(terms: list[Term]) -> list[int]:
        out = [len(terms)]
        for coefficient, factors in terms:
            out += [int(np.float64(coefficient).view(np.int64)), len(factors)] + [symbols[d] for d in factors]
        return out
    words = [len(graph.inputs), len(graph.outputs), len(symbols)]
    for v in graph.inputs:
        words += [DTYPE_SLOTS[v.type.dtype], v.type.rank] + extents(v.type.shape)
    words += polynomial([term for slot in slot_bytes for term in slot]) + polynomial(work)
    for v in graph.outputs:
        words += [DTYPE_SLOTS[v.type.dtype], v.type.rank] + extents(v.type.shape)
    return words


def _define_fast_call(module: ir.Module) -> ir.Function:
    """`ptr fast_call(ptr self, ptr args, i64 nargs)`, a METH_FASTCALL C function of Python's, one
    for every compiled function: `self` = (context, owner, method), and the context's words say
    which function it calls and what it takes (`describe`). It checks the inputs (binding the
    symbolic dims from their extents), makes the outputs with numpy's PyArray_Empty, runs the
    function's entry with the interpreter lock released, and returns the outputs as a tuple. It
    returns None, refusing, when an argument (or the argument count) does not fit, when another
    thread is using the workspace or the workspace is too small for these dims, or when the
    helper threads it needs have not been started: the caller then takes the Python path, which
    reports, copies, allocates or starts what is needed. NULL, with numpy's error set (MemoryError,
    or ValueError for an impossible size), when numpy cannot make an output.

    Shared by every function rather than emitted into each: a model's own module was a quarter
    of its compile time smaller without it (the seed step: 96 -> 72 ms)."""
    fn = ir.Function(module, ir.FunctionType(PTR, [PTR, PTR, I64]), FAST_CALL)
    self_, vector, nargs = fn.args
    b = ir.IRBuilder(fn.append_basic_block("entry"))
    zero, one = ir.Constant(I64, 0), ir.Constant(I64, 1)

    def at(base: ir.Value, offset: int, ty: ir.Type = PTR) -> ir.Value:
        return b.bitcast(b.gep(base, [ir.Constant(I64, offset)], inbounds=True), ty.as_pointer())

    def element(array: ir.Value, index: ir.Value) -> ir.Value:
        return b.gep(array, [index], inbounds=True)

    context_object = b.load(at(self_, TUPLE_ITEMS))
    context = b.bitcast(b.load(at(context_object, ARRAY_LAYOUT.data)), I64.as_pointer())

    def context_word(slot: int) -> ir.Value:
        return b.gep(context, [ir.Constant(I64, slot)], inbounds=True)

    runtime_table = b.inttoptr(b.load(context_word(CONTEXT_RUNTIME)), I64.as_pointer())

    def runtime_word(slot: ir.Value | int) -> ir.Value:
        return b.load(element(runtime_table, slot if isinstance(slot, ir.Value) else ir.Constant(I64, slot)))

    def c_function(slot: int, result: ir.Type, params: list[ir.Type]) -> ir.Value:
        return b.inttoptr(runtime_word(slot), ir.FunctionType(result, params).as_pointer())

    cursor = b.alloca(I64, name="cursor")
    b.store(ir.Constant(I64, CONTEXT_DESCRIPTION), cursor)

    def next_word() -> ir.Value:
        position = b.load(cursor)
        b.store(b.add(position, one), cursor)
        return b.load(element(context, position))

    def loop(count: ir.Value, body, name: str) -> None:
        emit_loop(b, zero, count, 1, body, name)

    refusals = _Refusals(b, fn)
    n_in, n_out, n_symbols = next_word(), next_word(), next_word()
    refusals.require(b.icmp_signed("==", nargs, n_in))
    dims = b.alloca(I64, size=b.add(n_symbols, one), name="dims")
    # the slot past the dims too: a static extent reads it (and discards it) rather than branching
    loop(b.add(n_symbols, one), lambda s: b.store(ir.Constant(I64, UNBOUND), element(dims, s)), "unbind")
    args = b.alloca(PTR, size=b.add(n_in, n_out), name="args")

    def dim_of(code: ir.Value) -> tuple[ir.Value, ir.Value]:
        """Whether an extent's code (see `describe`) names a symbolic dim, and that dim's slot (the
        spare slot past them when it does not)."""
        symbolic = b.icmp_signed("<", code, zero)
        return symbolic, element(dims, b.select(symbolic, b.sub(ir.Constant(I64, -1), code), n_symbols))
    items = b.bitcast(vector, PTR.as_pointer())
    layout, array_type = ARRAY_LAYOUT, runtime_word(RUNTIME_ARRAY_TYPE)

    def check_input(i: ir.Value) -> None:
        """The header as the Python path would check it (see the module docstring), then each
        extent against its dim, binding a symbolic dim where it first occurs."""
        obj = b.load(element(items, i))
        dtype_slot, rank = next_word(), next_word()
        refusals.require(b.icmp_unsigned("==", _word(b, obj, layout.type, I64), array_type))  # exactly ndarray
        refusals.require(b.icmp_unsigned("==", _word(b, obj, layout.descr, I64), runtime_word(dtype_slot)))
        refusals.require(b.icmp_signed("==", b.sext(_word(b, obj, layout.ndim, I32), I64), rank))
        flags = b.and_(_word(b, obj, layout.flags, I32), ir.Constant(I32, C_CONTIGUOUS_AND_ALIGNED))
        refusals.require(b.icmp_unsigned("==", flags, ir.Constant(I32, C_CONTIGUOUS_AND_ALIGNED)))
        shape = b.bitcast(_word(b, obj, layout.shape, PTR), I64.as_pointer())

        def check_extent(axis: ir.Value) -> None:
            code, extent = next_word(), b.load(element(shape, axis))
            symbolic, dim = dim_of(code)
            with b.if_then(b.and_(symbolic, b.icmp_signed("==", b.load(dim), ir.Constant(I64, UNBOUND)))):
                b.store(extent, dim)
            refusals.require(b.icmp_signed("==", extent, b.select(symbolic, b.load(dim), code)))
        loop(rank, check_extent, "axis")
        b.store(_word(b, obj, layout.data, PTR), element(args, i))
    loop(n_in, check_input, "input")

    def polynomial(at_least_one: bool) -> ir.Value:
        """The next polynomial of the description at these dims, in double precision: never wraps,
        unlike 64-bit integers. `at_least_one`: a dim of 0 counts as 1, so that a bound of the
        products' partial results (which 64-bit code may form before it meets the zero) does not
        vanish."""
        total, product = b.alloca(F64, name="total"), b.alloca(F64, name="product")  # not in the loops
        b.store(ir.Constant(F64, 0.0), total)

        def term(_: ir.Value) -> None:
            b.store(b.bitcast(next_word(), F64), product)

            def factor(_: ir.Value) -> None:
                value = b.load(element(dims, next_word()))
                if at_least_one:
                    value = b.select(b.icmp_unsigned("==", value, zero), one, value)
                b.store(b.fmul(b.load(product), b.uitofp(value, F64)), product)
            loop(next_word(), factor, "factor")
            b.store(b.fadd(b.load(total), b.load(product)), total)
        loop(next_word(), term, "term")
        return b.load(total)

    refusals.require(b.fcmp_ordered("<", polynomial(at_least_one=True), ir.Constant(F64, 2.0 ** 61)))
    dims_pointer = b.bitcast(dims, PTR)
    workspace_size = b.inttoptr(b.load(context_word(CONTEXT_WORKSPACE_SIZE)),
                                ir.FunctionType(I64, [PTR]).as_pointer())
    needed = b.call(workspace_size, [dims_pointer])
    refusals.require(b.icmp_unsigned("<=", needed, b.load(context_word(CONTEXT_CAPACITY))))

    threshold = b.bitcast(runtime_word(RUNTIME_PARALLEL_WORK), F64)
    parallel = b.fcmp_ordered(">=", polynomial(at_least_one=False), threshold)
    control = b.inttoptr(runtime_word(RUNTIME_CONTROL), PTR)
    ready = b.load(b.bitcast(b.gep(control, [ir.Constant(I64, READY * LINE)], inbounds=True), I64.as_pointer()))
    threads = b.select(parallel, ready, one)
    refusals.require(b.icmp_unsigned("!=", threads, zero))  # helpers not started
    busy = context_word(CONTEXT_BUSY)
    claimed = b.extract_value(b.cmpxchg(busy, zero, one, "acquire", "monotonic"), 1)
    refusals.require(claimed)

    incref = c_function(RUNTIME_INCREF, ir.VoidType(), [PTR])
    decref = c_function(RUNTIME_DECREF, ir.VoidType(), [PTR])
    empty = c_function(RUNTIME_ARRAY_EMPTY, PTR, [I32, I64.as_pointer(), PTR, I32])
    outputs = b.alloca(PTR, size=b.add(n_out, one), name="outputs")
    extents = b.alloca(I64, MAX_RANK, name="extents")

    def drop_outputs(count: ir.Value) -> None:
        loop(count, lambda j: b.call(decref, [b.load(element(outputs, j))]), "drop")

    def make_output(j: ir.Value) -> None:
        dtype_slot, rank = next_word(), next_word()

        def extent(axis: ir.Value) -> None:
            code = next_word()
            symbolic, dim = dim_of(code)
            b.store(b.select(symbolic, b.load(dim), code), element(extents, axis))
        loop(rank, extent, "extent")
        descr = b.inttoptr(runtime_word(dtype_slot), PTR)
        b.call(incref, [descr])  # stolen by PyArray_Empty
        array = b.call(empty, [b.trunc(rank, I32), extents, descr, ir.Constant(I32, 0)])
        with b.if_then(b.icmp_unsigned("==", array, ir.Constant(PTR, None)), likely=False):
            drop_outputs(j)
            b.store_atomic(zero, busy, "release", 8)
            b.ret(ir.Constant(PTR, None))  # numpy's MemoryError is set
        b.store(array, element(outputs, j))
        b.store(b.load(at(array, ARRAY_LAYOUT.data)), element(args, b.add(n_in, j)))
    loop(n_out, make_output, "output")

    workspace = b.inttoptr(b.load(context_word(CONTEXT_WORKSPACE)), PTR)
    entry = b.inttoptr(b.load(context_word(CONTEXT_ENTRY)), PTR)
    state = b.call(c_function(RUNTIME_SAVE_THREAD, PTR, []), [])
    b.call(declare_run(module), [control, entry, b.bitcast(args, PTR), dims_pointer, workspace, threads])
    b.call(c_function(RUNTIME_RESTORE_THREAD, ir.VoidType(), [PTR]), [state])
    b.store_atomic(zero, busy, "release", 8)

    result = b.call(c_function(RUNTIME_TUPLE_NEW, PTR, [I64]), [n_out])
    with b.if_then(b.icmp_unsigned("==", result, ir.Constant(PTR, None)), likely=False):
        drop_outputs(n_out)
        b.ret(ir.Constant(PTR, None))
    items_of_result = b.bitcast(b.gep(result, [ir.Constant(I64, TUPLE_ITEMS)], inbounds=True), PTR.as_pointer())
    loop(n_out, lambda j: b.store(b.load(element(outputs, j)), element(items_of_result, j)), "give")  # our references
    b.ret(result)

    b.position_at_end(refusals.block)
    none = b.inttoptr(runtime_word(RUNTIME_NONE), PTR)
    b.call(c_function(RUNTIME_INCREF, ir.VoidType(), [PTR]), [none])
    b.ret(none)
    return fn


def fast_call_address() -> int:
    run_address()  # fast_call calls it: compiled first, so that its symbol resolves
    return runtime.address(FAST_CALL, _define_fast_call)


class _MethodDef(ctypes.Structure):
    _fields_ = [("name", ctypes.c_char_p), ("function", ctypes.c_void_p), ("flags", ctypes.c_int),
                ("doc", ctypes.c_char_p)]


_contexts: weakref.WeakValueDictionary = weakref.WeakValueDictionary()  # id -> context


def _free_workspaces_after_fork() -> None:
    for context in list(_contexts.values()):  # the calls that held them are not in the child
        context[CONTEXT_BUSY] = 0


after_fork_in_child(_free_workspaces_after_fork)


def fast_function(entry: int, workspace_size: int, description: list[int], engine: object):
    """A Python builtin function calling the shared `fast_call` (see _define_fast_call) for the
    compiled function whose entry and workspace size function are at these addresses and whose
    `description` is given. It keeps `engine` (which holds the code) and its workspace (see
    `claim_workspace`; none yet) alive, not the NativeFunction."""
    new_function = ctypes.PYFUNCTYPE(ctypes.py_object, ctypes.POINTER(_MethodDef), ctypes.py_object,
                                     ctypes.py_object)(PYTHON_C_FUNCTIONS["PyCFunction_NewEx"])
    context = np.zeros(CONTEXT_DESCRIPTION + len(description), np.int64)
    _contexts[id(context)] = context
    context[CONTEXT_RUNTIME] = RUNTIME.ctypes.data
    context[CONTEXT_ENTRY], context[CONTEXT_WORKSPACE_SIZE] = entry, workspace_size
    context[CONTEXT_DESCRIPTION:] = description
    method = _MethodDef(b"gradc_fast", fast_call_address(), METH_FASTCALL, None)
    return new_function(ctypes.byref(method), (context, [engine, None], method), None)


def claim_workspace(fast, size: int) -> int | None:
    """For a call from Python: the address of the builtin `fast`'s workspace, grown to `size` bytes
    if need be (the next native call then fits too), claimed until `release_workspace`; None when
    a call is using it or it cannot grow. Only with the GIL held: native calls claim and release it
    with the GIL held too."""
    context, keep, _ = fast.__self__
    if context[CONTEXT_BUSY]:
        return None
    if context[CONTEXT_CAPACITY] < size:
        try:
            keep[1] = buffer = np.empty(size, np.uint8)
        except MemoryError:
            return None
        context[CONTEXT_WORKSPACE], context[CONTEXT_CAPACITY] = buffer.ctypes.data, size
    context[CONTEXT_BUSY] = 1
    return int(context[CONTEXT_WORKSPACE])


def release_workspace(fast) -> None:
    fast.__self__[0][CONTEXT_BUSY] = 0
