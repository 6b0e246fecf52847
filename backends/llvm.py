"""Lowering an optimized graph to one LLVM module: a kernel function per op and one entry point.

The entry point `gradc_entry(ptr args, ptr dims, ptr workspace)` takes the input and output
buffer addresses (inputs first), the values of the symbolic dims, and one workspace that holds
every temporary; it calls the kernels in graph order, so a compiled call is one native call.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

from llvmlite import ir

from gradc.ir.graph import Graph, Value
from gradc.ir.ops import ELEMENTWISE
from gradc.ir.types import Dim, Shape, TensorType

from . import mathlib

I64 = ir.IntType(64)
PTR = ir.PointerType(ir.IntType(8))
FLOAT_TYPES = {"f32": ir.FloatType(), "f64": ir.DoubleType()}
ALIGNMENT = 64
ENTRY, WORKSPACE_SIZE = "gradc_entry", "gradc_workspace_size"


class ScalarEmitter:
    """The scalar vocabulary the ops' elementwise formulas are written in, emitted as LLVM IR."""

    def __init__(self, builder: ir.IRBuilder, fty: ir.Type) -> None:
        self.b, self.fty = builder, fty

    def const(self, x: float) -> ir.Value:
        return ir.Constant(self.fty, float(x))

    def add(self, a, b): return self.b.fadd(a, b)
    def sub(self, a, b): return self.b.fsub(a, b)
    def mul(self, a, b): return self.b.fmul(a, b)
    def div(self, a, b): return self.b.fdiv(a, b)
    def neg(self, a): return self.b.fneg(a)
    def gt(self, a, b): return self.b.fcmp_ordered(">", a, b)
    def eq(self, a, b): return self.b.fcmp_ordered("==", a, b)
    def select(self, c, a, b): return self.b.select(c, a, b)
    def exp(self, x): return mathlib.emit_exp(self.b, x)
    def log(self, x): return mathlib.emit_log(self.b, x)
    def tanh(self, x): return mathlib.emit_tanh(self.b, x)
    def sigmoid(self, x): return mathlib.emit_sigmoid(self.b, x)

    def sqrt(self, x):
        return self.b.call(self.b.module.declare_intrinsic("llvm.sqrt", [self.fty]), [x])

    def maximum(self, a, b):
        """numpy.maximum: NaN if either side is NaN."""
        fn = self.b.module.declare_intrinsic("llvm.maximum", [self.fty],
                                             ir.FunctionType(self.fty, [self.fty, self.fty]))
        return self.b.call(fn, [a, b])


def contiguous_strides(shape: Shape) -> list[tuple[Dim, ...]]:
    """Row-major strides, each as the tuple of dims whose product it is."""
    return [tuple(shape[a + 1:]) for a in range(len(shape))]


@dataclass
class Operand:
    """How a kernel reads one input: a buffer (or an immediate scalar) and a stride per output axis."""

    pointer: ir.Value | None
    strides: list[tuple[Dim, ...] | None]  # None: the axis does not move this operand
    immediate: float | None = None


class Kernel:
    """Helpers for one kernel function: dims, strides and loop nests."""

    def __init__(self, module: ir.Module, name: str, n_buffers: int, symbols: dict[str, int]) -> None:
        self.fn = ir.Function(module, ir.FunctionType(ir.VoidType(), [PTR] * (n_buffers + 1)), name)
        self.fn.linkage = "internal"
        for arg in self.fn.args[:-1]:
            arg.add_attribute("noalias")
        self.b = ir.IRBuilder(self.fn.append_basic_block("entry"))
        self.buffers = list(self.fn.args[:-1])
        self._dims_ptr = self.fn.args[-1]
        self._symbols = symbols
        self._dim_cache: dict[tuple, ir.Value] = {}

    def size(self, factors: Sequence[Dim]) -> ir.Value:
        """The product of `factors` (ints and symbols), computed once at the top of the kernel."""
        key = tuple(sorted(map(str, factors)))
        if key not in self._dim_cache:
            with self.b.goto_block(self.fn.entry_basic_block):
                self.b.position_at_start(self.fn.entry_basic_block)
                self._dim_cache[key] = _DimReader(self.b, self._dims_ptr, self._symbols).product(factors)
        return self._dim_cache[key]

    def loop(self, count: ir.Value, body: Callable[[ir.Value], None], name: str = "i") -> None:
        b = self.b
        start = b.block
        header = self.fn.append_basic_block(f"{name}.header")
        inner = self.fn.append_basic_block(f"{name}.body")
        done = self.fn.append_basic_block(f"{name}.done")
        b.branch(header)
        b.position_at_end(header)
        index = b.phi(I64, name=name)
        index.add_incoming(ir.Constant(I64, 0), start)
        b.cbranch(b.icmp_signed("<", index, count), inner, done)
        b.position_at_end(inner)
        body(index)
        index.add_incoming(b.add(index, ir.Constant(I64, 1), flags=("nuw", "nsw")), b.block)
        b.branch(header)
        b.position_at_end(done)

    def nest(self, shape: Shape, body: Callable[[list[ir.Value]], None], name: str = "i") -> None:
        """Loops over every index of `shape`, outermost axis first."""
        def level(axis: int, indices: list[ir.Value]) -> None:
            if axis == len(shape):
                body(indices)
            else:
                self.loop(self.size([shape[axis]]), lambda i: level(axis + 1, indices + [i]), f"{name}{axis}")
        level(0, [])

    def offset(self, indices: Sequence[ir.Value], strides: Sequence[tuple[Dim, ...] | None]) -> ir.Value:
        total = ir.Constant(I64, 0)
        for index, stride in zip(indices, strides):
            if stride is None:
                continue
            term = index if not stride else self.b.mul(index, self.size(stride), flags=("nuw", "nsw"))
            total = term if isinstance(total, ir.Constant) else self.b.add(total, term, flags=("nuw", "nsw"))
        return total

    def element(self, pointer: ir.Value, offset: ir.Value, fty: ir.Type) -> ir.Value:
        return self.b.gep(self.b.bitcast(pointer, fty.as_pointer()), [offset], inbounds=True)

    def finish(self) -> None:
        self.b.ret_void()


def elementwise_strides(operand: TensorType, out: TensorType) -> list[tuple[Dim, ...] | None]:
    """numpy broadcasting: trailing axes line up; size-1 and missing axes do not move."""
    lead = out.rank - operand.rank
    strides = contiguous_strides(operand.shape)
    return [None if a < lead or (operand.shape[a - lead] == 1 and out.shape[a] != 1) else strides[a - lead]
            for a in range(out.rank)]


def layout_strides(op_name: str, attrs: dict, operand: TensorType, out: TensorType):
    strides = contiguous_strides(operand.shape)
    if op_name == "broadcast":
        result: list = [None] * out.rank
        for i, d in enumerate(attrs["dims"]):
            if not (operand.shape[i] == 1 and out.shape[d] != 1):
                result[d] = strides[i]
        return result
    if op_name == "transpose":
        return [strides[p] for p in attrs["perm"]]
    return contiguous_strides(out.shape)  # reshape: the same linear order


class ModuleBuilder:
    """Builds the LLVM module for a graph: buffers, kernels, the entry point and the workspace size."""

    def __init__(self, graph: Graph, triple: str = "", data_layout: str = "") -> None:
        self.graph = graph
        self.module = ir.Module(name=graph.name)
        self.module.triple, self.module.data_layout = triple, data_layout
        self.symbols: dict[str, int] = {}
        for v in graph.inputs:
            for d in v.type.symbols:
                self.symbols.setdefault(d, len(self.symbols))
        self.temporaries: list[Value] = []
        self.calls: list[tuple[ir.Function, list[tuple[str, int]]]] = []
        self._plan_buffers()

    # -- buffers ---------------------------------------------------------------------------------
    def _plan_buffers(self) -> None:
        """Each value lives in an input, an output, a workspace slot, or (constants) nowhere."""
        g = self.graph
        self.location: dict[Value, tuple[str, int]] = {v: ("arg", i) for i, v in enumerate(g.inputs)}
        self.output_copies: list[tuple[int, Value]] = []
        produced = {op.result for op in g.ops if op.name != "const"}
        for j, v in enumerate(g.outputs):
            if v in produced and v not in self.location:
                self.location[v] = ("arg", len(g.inputs) + j)
            else:
                self.output_copies.append((j, v))
        for op in g.ops:
            if op.result not in self.location and (op.name != "const" or self._needs_buffer(op.result)):
                self.location[op.result] = ("temp", len(self.temporaries))
                self.temporaries.append(op.result)

    def _needs_buffer(self, const: Value) -> bool:
        return any(op.opdef.kind not in (ELEMENTWISE, "layout") and const in op.operands for op in self.graph.ops)

    # -- module ----------------------------------------------------------------------------------
    def build(self) -> ir.Module:
        for index, op in enumerate(self.graph.ops):
            if op.name == "const" and op.result not in self.location:
                continue
            operands = [v for v in op.operands if v in self.location]
            kernel = Kernel(self.module, f"k{index}.{op.name}", 1 + len(operands), self.symbols)
            buffers = dict(zip([op.result] + operands, kernel.buffers))
            self._lower(kernel, op.name, op.attrs, op.result, op.operands, buffers)
            kernel.finish()
            self.calls.append((kernel.fn, [self.location[v] for v in [op.result] + operands]))
        for j, v in self.output_copies:  # outputs that are inputs, constants or repeated
            sources = [v] if v in self.location else []
            kernel = Kernel(self.module, f"output{j}.copy", 1 + len(sources), self.symbols)
            target = Value(v.type)
            buffers = dict(zip([target] + sources, kernel.buffers))
            self._lower(kernel, "stop_gradient", {}, target, [v], buffers)
            kernel.finish()
            self.calls.append((kernel.fn, [("arg", len(self.graph.inputs) + j)] +
                               [self.location[x] for x in sources]))
        self._build_entry()
        self._build_workspace_size()
        return self.module

    def _slot_offsets(self, b: ir.IRBuilder, dims: ir.Value) -> tuple[list[ir.Value], ir.Value]:
        reader = _DimReader(b, dims, self.symbols)
        offsets, total = [], ir.Constant(I64, 0)
        for v in self.temporaries:
            offsets.append(total)
            nbytes = b.mul(reader.product(v.type.shape), ir.Constant(I64, v.type.np_dtype.itemsize))
            rounded = b.and_(b.add(nbytes, ir.Constant(I64, ALIGNMENT - 1)), ir.Constant(I64, -ALIGNMENT))
            total = b.add(total, rounded)
        return offsets, total

    def _build_entry(self) -> None:
        fn = ir.Function(self.module, ir.FunctionType(ir.VoidType(), [PTR, PTR, PTR]), ENTRY)
        args, dims, workspace = fn.args
        b = ir.IRBuilder(fn.append_basic_block("entry"))
        offsets, _ = self._slot_offsets(b, dims)

        def pointer(location: tuple[str, int]) -> ir.Value:
            kind, i = location
            if kind == "temp":
                return b.gep(workspace, [offsets[i]], inbounds=True)
            slot = b.gep(b.bitcast(args, PTR.as_pointer()), [ir.Constant(I64, i)], inbounds=True)
            return b.load(slot)

        for kernel, locations in self.calls:
            b.call(kernel, [pointer(loc) for loc in locations] + [dims])
        b.ret_void()

    def _build_workspace_size(self) -> None:
        fn = ir.Function(self.module, ir.FunctionType(I64, [PTR]), WORKSPACE_SIZE)
        b = ir.IRBuilder(fn.append_basic_block("entry"))
        _, total = self._slot_offsets(b, fn.args[0])
        b.ret(total)

    # -- lowering of one op ----------------------------------------------------------------------
    def _operand(self, v: Value, strides, buffers: dict[Value, ir.Value]) -> Operand:
        if v in buffers:
            return Operand(buffers[v], strides)
        return Operand(None, strides, immediate=v.producer.attrs["value"])

    def _lower(self, k: Kernel, name: str, attrs: dict, result: Value, operands: list[Value],
               buffers: dict[Value, ir.Value]) -> None:
        from gradc.ir.ops import OPS
        opdef, out = OPS[name], result.type
        fty = FLOAT_TYPES[out.dtype]
        out_ptr = buffers[result]
        if opdef.kind == ELEMENTWISE:
            ins = [self._operand(v, elementwise_strides(v.type, out), buffers) for v in operands]
            self._lower_map(k, out, out_ptr, ins, lambda e, *xs: opdef.scalar(e, *xs, **attrs))
        elif opdef.kind == "layout":
            ins = [self._operand(operands[0], layout_strides(name, attrs, operands[0].type, out), buffers)]
            self._lower_map(k, out, out_ptr, ins, lambda e, x: x)
        elif name == "const":
            self._lower_map(k, out, out_ptr, [], lambda e: e.const(attrs["value"]))
        elif name == "size":
            shape = operands[0].type.shape
            count = k.size([shape[a] for a in attrs["axes"]])
            k.b.store(k.b.sitofp(count, fty), k.element(out_ptr, ir.Constant(I64, 0), fty))
        elif opdef.kind == "reduction":
            self._lower_reduction(k, name, attrs, out, out_ptr, operands[0], buffers[operands[0]])
        elif name == "matmul":
            self._lower_matmul(k, attrs, out, out_ptr, *(buffers[v] for v in operands),
                               *(v.type for v in operands))
        else:
            raise NotImplementedError(f"no LLVM lowering for op {name!r}")

    def _lower_map(self, k: Kernel, out: TensorType, out_ptr: ir.Value, ins: list[Operand],
                   formula: Callable) -> None:
        fty = FLOAT_TYPES[out.dtype]
        out_strides = contiguous_strides(out.shape)

        def body(indices: list[ir.Value]) -> None:
            e = ScalarEmitter(k.b, fty)
            values = [e.const(o.immediate) if o.pointer is None else
                      k.b.load(k.element(o.pointer, k.offset(indices, o.strides), fty)) for o in ins]
            k.b.store(formula(e, *values), k.element(out_ptr, k.offset(indices, out_strides), fty))
        k.nest(out.shape, body)

    def _lower_reduction(self, k: Kernel, name: str, attrs: dict, out: TensorType, out_ptr: ir.Value,
                         operand: Value, in_ptr: ir.Value) -> None:
        fty = FLOAT_TYPES[out.dtype]
        shape, axes = operand.type.shape, attrs["axes"]
        kept = [a for a in range(len(shape)) if a not in axes]
        in_strides = contiguous_strides(shape)
        b = k.b
        with b.goto_entry_block():
            acc = b.alloca(fty, name="acc")
        init = 0.0 if name == "reduce_sum" else float("-inf")
        out_strides = contiguous_strides(tuple(shape[a] for a in kept))

        def outer(out_index: list[ir.Value]) -> None:
            b.store(ir.Constant(fty, init), acc)

            def inner(red_index: list[ir.Value]) -> None:
                offset = k.offset(out_index + red_index, [in_strides[a] for a in kept + axes])
                x = b.load(k.element(in_ptr, offset, fty))
                if name == "reduce_sum":
                    b.store(b.fadd(b.load(acc), x, flags=("reassoc", "contract")), acc)
                else:
                    b.store(ScalarEmitter(b, fty).maximum(b.load(acc), x), acc)
            k.nest(tuple(shape[a] for a in axes), inner, "r")
            b.store(b.load(acc), k.element(out_ptr, k.offset(out_index, out_strides), fty))
        k.nest(tuple(shape[a] for a in kept), outer)

    def _lower_matmul(self, k: Kernel, attrs: dict, out: TensorType, c_ptr, a_ptr, b_ptr,
                      a_type: TensorType, b_type: TensorType) -> None:
        fty = FLOAT_TYPES[out.dtype]
        b = k.b
        ta, tb = attrs["transpose_a"], attrs["transpose_b"]
        m, n = out.shape
        kdim = a_type.shape[0] if ta else a_type.shape[1]
        M, N, K = k.size([m]), k.size([n]), k.size([kdim])
        flags = ("contract",)

        def at(ptr, row, col, cols):
            return b.load(k.element(ptr, b.add(b.mul(row, cols, flags=("nuw", "nsw")), col, flags=("nuw", "nsw")), fty))

        def a_elem(i, kk):
            return at(a_ptr, kk, i, M) if ta else at(a_ptr, i, kk, K)

        if not tb:  # C[i, :] += A(i, k) * B[k, :], the inner loop runs along rows of B and C
            def row(i):
                k.loop(N, lambda j: b.store(ir.Constant(fty, 0.0), k.element(c_ptr, b.add(b.mul(i, N), j), fty)), "z")

                def step(kk):
                    a = a_elem(i, kk)

                    def axpy(j):
                        c = k.element(c_ptr, b.add(b.mul(i, N, flags=("nuw", "nsw")), j, flags=("nuw", "nsw")), fty)
                        b.store(b.fadd(b.load(c), b.fmul(a, at(b_ptr, kk, j, N), flags=flags), flags=flags), c)
                    k.loop(N, axpy, "j")
                k.loop(K, step, "k")
            k.loop(M, row, "i")
        else:  # C[i, j] = dot(A(i, :), B[j, :]): both read along k
            with b.goto_entry_block():
                acc = b.alloca(fty, name="acc")

            def row(i):
                def col(j):
                    b.store(ir.Constant(fty, 0.0), acc)

                    def step(kk):
                        prod = b.fmul(a_elem(i, kk), at(b_ptr, j, kk, K), flags=flags)
                        b.store(b.fadd(b.load(acc), prod, flags=("reassoc", "contract")), acc)
                    k.loop(K, step, "k")
                    b.store(b.load(acc), k.element(c_ptr, b.add(b.mul(i, N), j), fty))
                k.loop(N, col, "j")
            k.loop(M, row, "i")


class _DimReader:
    """Reads symbolic dims in the entry and workspace-size functions."""

    def __init__(self, b: ir.IRBuilder, dims: ir.Value, symbols: dict[str, int]) -> None:
        self.b, self.dims, self.symbols = b, dims, symbols

    def product(self, factors: Sequence[Dim]) -> ir.Value:
        static = 1
        value: ir.Value | None = None
        for d in factors:
            if isinstance(d, str):
                ptr = self.b.gep(self.dims, [ir.Constant(I64, 8 * self.symbols[d])], inbounds=True)
                dim = self.b.load(self.b.bitcast(ptr, I64.as_pointer()), name=f"dim.{d}")
                value = dim if value is None else self.b.mul(value, dim, flags=("nuw", "nsw"))
            else:
                static *= d
        if value is None:
            return ir.Constant(I64, static)
        return value if static == 1 else self.b.mul(value, ir.Constant(I64, static), flags=("nuw", "nsw"))
