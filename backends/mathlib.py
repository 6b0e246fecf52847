"""Vectorizable transcendental functions emitted as LLVM IR.

LLVM turns ``llvm.exp``/``llvm.log`` (and calls to libm) inside a vectorized
loop into one scalar libm call per lane, which is several times slower than
numpy.  The functions here instead emit the math as plain IR: FP arithmetic,
integer bit manipulation and a few intrinsics (``llvm.fma``, ``llvm.rint``,
``llvm.fabs``, ``llvm.copysign``) that every x86 vector ISA implements
natively, so the loop vectorizer widens them like any other arithmetic.  They
also take vectors directly (``gradc.exp.v64f32``, for a matmul's row epilogue),
lane for lane the same bits as the scalar helper.

Each ``emit_*`` call gets (or creates once per module) an ``internal
alwaysinline`` helper such as ``gradc.exp.f32`` and calls it.  Before
optimization the kernel IR stays readable (one call per op); after O3 the
helper is inlined into the loop, vectorized and then deleted, so the finished
module calls nothing outside ``llvm.*``.

Accuracy, as swept by tests/test_mathlib.py over the whole input range:
float32 at most 0.93 ulp (exp, expm1, log, sigmoid) and 1.3 ulp (tanh) from
the float64 result; float64 at most 1.3 ulp from a long double reference.
pow (x**y, y a constant that is not an integer; tests/test_ops.py sweeps
it) is within an ulp for |y| <= 4 and 2.5 ulp at |y| = 25, in both.
NaN, infinities, signed zeros, overflow to inf and denormal results behave
like numpy.  Where a cheaper formula would spend the 2-ulp budget unevenly
(sigmoid's tail, expm1 near ln2/2) the code carries exact error terms
instead of rounding early; plain exp and the tanh tail use the cheap form.

No instruction here carries ``reassoc``/``fast`` flags: reassociation would
fold the Cody-Waite split ``x - n*ln2_hi - n*ln2_lo`` and the compensated
(error-free) sums back into plain, inaccurate arithmetic.  Contractions are
spelled out as ``llvm.fma`` so the result does not depend on the fusion mode
of the target.
"""

from __future__ import annotations

import math
import struct
from typing import Callable

from llvmlite import ir

__all__ = ["emit_exp", "emit_expm1", "emit_log", "emit_pow", "emit_sigmoid", "emit_tanh", "declare_intrinsic", "splat", "broadcast",
           "undefined", "type_suffix"]


def _f32(v: float) -> float:
    return struct.unpack("f", struct.pack("f", v))[0]


# Per-precision constants.  ln2 is split so that the high part times any
# reachable exponent n is exact inside an fma and the low part restores the
# bits lost; the float64 split is the exact binary expansion of ln 2
# (checked with 200-bit arithmetic).
_LN2_HI_64 = float.fromhex("0x1.62e42fefa39efp-1")
_LN2_LO_64 = float.fromhex("0x1.abc9e3b39803fp-56")
_LN2_HI_32 = _f32(_LN2_HI_64)
_LN2_LO_32 = _f32(_LN2_HI_64 - _LN2_HI_32 + _LN2_LO_64)

# Polynomial coefficients, lowest degree first.  They are Chebyshev fits
# (near-minimax; mpmath.chebyfit at 60 digits) rather than Taylor series:
# same accuracy with 2-4 fewer fmas.  The fit error is listed relative to
# the ulp of the final result; the test sweeps are what vouch for them.
#
# e^r = 1 + r + r^2 P(r) on |r| <= 1.01*ln2/2.  f32: fit error 1.5e-9
# (0.003 ulp after the r^2 factor); f64: 1.2e-16 (0.1 ulp).
_EXP_P32 = (0.5000000014286223, 0.16666666682534356, 0.04166645680967788,
            0.008333310024225292, 0.0013934541928270264, 0.0001989198131397769)
_EXP_P64 = (0.5000000000000001, 0.16666666666666669, 0.04166666666662064,
            0.008333333333329793, 0.0013888888918939168, 0.00019841269864380513,
            2.4801518641395993e-05, 2.75572664186123e-06, 2.7621338669142925e-07,
            2.510134692835034e-08)
# log((1+s)/(1-s)) = 2s + s^3 A(s^2) on |s| <= (sqrt2-1)/(sqrt2+1).  The
# Taylor series would be 2/3, 2/5, 2/7, ...
_LOG_A32 = (0.6666668509542907, 0.39988757716604845, 0.29580985929974424)
# tanh(a) = a + a^3 B(a^2) on |a| <= 0.625 (Taylor would converge slowly
# here: radius pi/2).
_TANH_B32 = (-0.333333331712397, 0.13333303420387607, -0.05395922726196833,
             0.021768655803763217, -0.008343085218832483, 0.002291770456256263)
_TANH_B64 = (-0.3333333333333333, 0.1333333333333304, -0.05396825396789371,
             0.02186948851886792, -0.008863235100174033, 0.0035921217122266407,
             -0.0014557751050964238, 0.0005896591083635056, -0.00023758563980884253,
             9.256112886604006e-05, -3.118977434431334e-05, 6.479652583909459e-06)
_LOG_A64 = (0.666666666666667, 0.3999999999989889, 0.28571428626253836,
            0.22222211089379496, 0.1818289243253687, 0.15331611722055008,
            0.14617807153417325)


def element_type(ty: ir.Type) -> ir.Type:
    """The type of one lane: `ty` itself unless it is a vector."""
    return ty.element if isinstance(ty, ir.VectorType) else ty


def like(ty: ir.Type, element: ir.Type) -> ir.Type:
    """`element`, or a vector of it with as many lanes as `ty` has."""
    return ir.VectorType(element, ty.count) if isinstance(ty, ir.VectorType) else element


class _Short(ir.Constant):
    """A vector constant with every lane the same, in LLVM's short form (`splat (float 1.0)`,
    `undef`) rather than llvmlite's lane by lane: a row epilogue has 64 lanes."""

    def __init__(self, ty: ir.VectorType, value: float | int | None, reference: str) -> None:
        super().__init__(ty, [value] * ty.count)
        self._reference = reference

    def get_reference(self) -> str:
        return self._reference


def splat(ty: ir.Type, value: float | int) -> ir.Constant:
    """The constant `value` in every lane of `ty`."""
    if isinstance(ty, ir.VectorType):
        return _Short(ty, value, f"splat ({ir.Constant(ty.element, value)})")
    return ir.Constant(ty, value)


def undefined(ty: ir.VectorType) -> ir.Constant:
    """A vector whose lanes are all undefined (the operand a shufflevector leaves unread)."""
    return _Short(ty, 0, "undef")


def broadcast(b: ir.IRBuilder, x: ir.Value, lanes: int) -> ir.Value:
    """The run-time scalar `x` in every lane of a vector of `lanes`."""
    vty = ir.VectorType(x.type, lanes)
    one = b.insert_element(undefined(vty), x, ir.Constant(ir.IntType(32), 0))
    return b.shuffle_vector(one, undefined(vty), splat(ir.VectorType(ir.IntType(32), lanes), 0))


def type_suffix(ty: ir.Type) -> str:
    """LLVM's overloaded-intrinsic suffix of a float, double or vector type: f32, v64f32, ..."""
    if isinstance(ty, ir.VectorType):
        return f"v{ty.count}{type_suffix(ty.element)}"
    return ty.intrinsic_name


def declare_intrinsic(module: ir.Module, name: str, ty: ir.Type, arity: int) -> ir.Function:
    """The intrinsic `name` overloaded on `ty` taking `arity` arguments of it. The signature is
    always given: llvmlite guesses multi-argument ones wrong, and cannot name vector overloads."""
    full = f"{name}.{type_suffix(ty)}"
    existing = module.globals.get(full)
    return existing if existing is not None else ir.Function(module, ir.FunctionType(ty, [ty] * arity), full)


class _Prec:
    """What differs between float32 and float64 code."""

    def __init__(self, f32: bool) -> None:
        self.name = "f32" if f32 else "f64"
        self.ity = ir.IntType(32 if f32 else 64)
        self.mant = 23 if f32 else 52  # explicit mantissa bits
        self.bias = 127 if f32 else 1023
        self.prec = self.mant + 1
        self.ln2_hi = _LN2_HI_32 if f32 else _LN2_HI_64
        self.ln2_lo = _LN2_LO_32 if f32 else _LN2_LO_64
        self.min_normal = 2.0 ** (1 - self.bias)
        # exp: beyond these the result is certainly inf / 0; the clamp keeps
        # n small enough that 2^(n>>1) and 2^(n-(n>>1)) are normal numbers.
        self.exp_hi = 100.0 if f32 else 720.0
        self.exp_lo = -110.0 if f32 else -760.0
        # expm1 / tanh: below this, exp(x) is under half an ulp of 1, so
        # expm1 == -1 exactly and 2^n stays a single normal number.
        self.expm1_lo = -25.0 if f32 else -50.0
        # expm1 scales by 2^(n-1) for large n, so n may reach bias + 1
        # (x*log2e <= 128.5 resp. 1024.5) and still overflow correctly.
        self.expm1_hi = 89.0 if f32 else 710.0
        self.exp_p = _EXP_P32 if f32 else _EXP_P64
        self.log_a = _LOG_A32 if f32 else _LOG_A64
        # Denormal inputs of log are scaled by 2^log_scale to become normal.
        self.log_scale = 25 if f32 else 54
        # Bit pattern of ~sqrt(1/2): subtracting it before extracting the
        # exponent puts the mantissa in [sqrt(1/2), sqrt(2)).
        self.log_off = 0x3F3504F3 if f32 else 0x3FE6A09E667F3BCD
        # tanh: polynomial below tanh_switch; above, 2|x| is clamped where
        # tanh has long rounded to 1 (|x| ~ 9 resp. 19), keeping 2^n normal.
        self.tanh_switch = 0.625
        self.tanh_clamp = 40.0 if f32 else 50.0
        self.tanh_b = _TANH_B32 if f32 else _TANH_B64


class _Emitter:
    """Small wrapper so the math below reads like formulas."""

    def __init__(self, builder: ir.IRBuilder, ty: ir.Type) -> None:
        self.b = builder
        self.t = ty
        self.p = _Prec(isinstance(element_type(ty), ir.FloatType))
        self.ity = like(ty, self.p.ity)  # the integers of the same width, as many lanes
        self.mod = builder.module

    # constants
    def c(self, v: float) -> ir.Constant:
        return splat(self.t, v)

    def ci(self, v: int) -> ir.Constant:
        return splat(self.ity, v)

    def _intr(self, name: str, args: list[ir.Value]) -> ir.Value:
        return self.b.call(declare_intrinsic(self.mod, name, self.t, len(args)), args)

    def fma(self, a: ir.Value, b: ir.Value, c: ir.Value) -> ir.Value:
        return self._intr("llvm.fma", [a, b, c])

    def rint(self, a: ir.Value) -> ir.Value:
        return self._intr("llvm.rint", [a])

    def fabs(self, a: ir.Value) -> ir.Value:
        return self._intr("llvm.fabs", [a])

    def copysign(self, mag: ir.Value, sign: ir.Value) -> ir.Value:
        return self._intr("llvm.copysign", [mag, sign])

    def add(self, a, b):
        return self.b.fadd(a, b)

    def sub(self, a, b):
        return self.b.fsub(a, b)

    def mul(self, a, b):
        return self.b.fmul(a, b)

    def div(self, a, b):
        return self.b.fdiv(a, b)

    def sel(self, cond, a, b):
        return self.b.select(cond, a, b)

    def lt(self, a, b):  # false for NaN
        return self.b.fcmp_ordered("<", a, b)

    def gt(self, a, b):  # false for NaN
        return self.b.fcmp_ordered(">", a, b)

    def isnan(self, a):
        return self.b.fcmp_unordered("uno", a, a)

    def clamp(self, x: ir.Value, lo: float, hi: float) -> ir.Value:
        # ordered compares map NaN to a bound, so nothing downstream (fptosi
        # in particular, which is poison for NaN) ever sees NaN; minnum/
        # maxnum would pass NaN through instead.
        x = self.sel(self.lt(x, self.c(hi)), x, self.c(hi))
        return self.sel(self.gt(x, self.c(lo)), x, self.c(lo))

    def pow2(self, n: ir.Value) -> ir.Value:
        """2^n for an integer n inside the normal exponent range."""
        bits = self.b.shl(self.b.add(n, self.ci(self.p.bias)), self.ci(self.p.mant))
        return self.b.bitcast(bits, self.t)

    def horner(self, x: ir.Value, coeffs: tuple[float, ...]) -> ir.Value:
        acc = self.c(coeffs[-1])
        for ck in reversed(coeffs[:-1]):
            acc = self.fma(acc, x, self.c(ck))
        return acc

    # shared exp pieces
    def fast2sum(self, a: ir.Value, b: ir.Value) -> tuple[ir.Value, ir.Value]:
        """(h, l) with h + l == a + b exactly; needs |a| >= |b| or a == 0."""
        h = self.add(a, b)
        return h, self.add(self.sub(a, h), b)

    def exp_core(self, x: ir.Value, precise: bool = True) -> tuple[ir.Value, ir.Value, ir.Value]:
        """Split x (finite, clamped) as x = n*ln2 + r with |r| <= ln2/2 and
        return (n, r, w) where e^(x - n*ln2) - 1 ~= r + w, |w| << |r|.

        Keeping r and the small tail w apart lets callers add r exactly
        (r times a power of two, plus 1 or 2^n - 1, via fast2sum) and round
        once at the end; rounding e^r - 1 first would cost up to an extra
        ulp wherever the final sum cancels (expm1 at n == 1, tanh near 0).
        """
        p = self.p
        n = self.rint(self.mul(x, self.c(1.0 / math.log(2.0))))
        nn = self.b.fneg(n)
        # With fma the first step is exact (r1 is a multiple of ulp(ln2_hi)
        # and below 1/2), so only the tiny ln2_lo product rounds; its
        # rounding error is recovered into r_lo.
        r1 = self.fma(nn, self.c(p.ln2_hi), x)
        r = self.fma(nn, self.c(p.ln2_lo), r1)
        if not precise:
            # callers that round 1 + r + w once anyway can skip the tail
            w = self.mul(self.mul(r, r), self.horner(r, p.exp_p))
            return self.b.fptosi(n, self.ity), r, w
        r_lo = self.fma(nn, self.c(p.ln2_lo), self.sub(r1, r))
        # e^(r + r_lo) - 1 ~= r + r^2 P(r) + r_lo (1 + r)
        w = self.fma(self.mul(r, r), self.horner(r, p.exp_p), self.fma(r_lo, r, r_lo))
        return self.b.fptosi(n, self.ity), r, w

    def div_comp(self, nh, nl, dh, dl) -> ir.Value:
        """(nh+nl)/(dh+dl) to about half an ulp, with one division."""
        rcp = self.div(self.c(1.0), dh)
        q = self.mul(nh, rcp)
        rem = self.fma(self.b.fneg(q), dh, nh)  # exact: nh - q*dh
        rem = self.fma(self.b.fneg(q), dl, self.add(rem, nl))
        return self.fma(rem, rcp, q)


# ---------------------------------------------------------------- bodies


def _body_exp(e: _Emitter, x: ir.Value) -> ir.Value:
    p = e.p
    n, r, w = e.exp_core(e.clamp(x, p.exp_lo, p.exp_hi), precise=False)
    # 1 + (r + w): two roundings, <= 1 ulp in all; the compensated form
    # used by sigmoid buys ~0.25 ulp for ~6 more instructions.
    m = e.add(e.add(r, w), e.c(1.0))
    # Two factors so that n up to ~2*bias neither overflows the exponent
    # field nor double-rounds: m*2^n1 is exact, the second product rounds
    # once, giving correct overflow to inf and correctly rounded denormals.
    n1 = e.b.ashr(n, e.ci(1))
    n2 = e.b.sub(n, n1)
    res = e.mul(e.mul(m, e.pow2(n1)), e.pow2(n2))
    return e.sel(e.isnan(x), x, res)


def _body_expm1(e: _Emitter, x: ir.Value) -> ir.Value:
    p = e.p
    n, r, w = e.exp_core(e.clamp(x, p.expm1_lo, p.expm1_hi))
    # expm1 = 2^n (1 + r + w) - 1 = (2^n - 1) + 2^n r + 2^n w.  While
    # n <= precision, 2^n - 1 and 2^n r are exact and fast2sum adds them
    # exactly, so only the final add rounds.  For larger n, 2^n - 1 is not
    # representable: compute 2 * (2^(n-1) (1 + r + w) - 1/2) instead, which
    # also keeps 2^(n-1) finite right up to the overflow threshold.
    big = e.b.icmp_signed(">", n, e.ci(p.prec))
    s = e.pow2(e.b.sub(n, e.b.zext(big, e.ity)))
    head = e.sel(big, s, e.sub(s, e.c(1.0)))
    h, l = e.fast2sum(head, e.mul(s, r))
    l = e.add(l, e.sel(big, e.c(-0.5), e.c(0.0)))
    res = e.add(h, e.fma(s, w, l))
    res = e.mul(res, e.sel(big, e.c(2.0), e.c(1.0)))
    # keeps expm1(-0) == -0 (the reduction turns -0 into +0)
    res = e.sel(e.b.fcmp_ordered("==", x, e.c(0.0)), x, res)
    return e.sel(e.isnan(x), x, res)


def _log_parts(e: _Emitter, x: ir.Value) -> tuple[ir.Value, ir.Value, ir.Value, ir.Value]:
    """(k, f, hfsq, lo) with log x = k*ln2_hi + f - hfsq + lo for a positive finite x: f is exact,
    hfsq = f*f/2 rounded once, lo (the small corrections, k*ln2_lo among them) rounded."""
    p = e.p
    # Denormals have no implicit leading bit; scaling them into the normal
    # range lets the same bit split work for every positive input.
    tiny = e.lt(x, e.c(p.min_normal))
    xs = e.sel(tiny, e.mul(x, e.c(2.0 ** p.log_scale)), x)
    kadj = e.sel(tiny, e.c(-float(p.log_scale)), e.c(0.0))
    ix = e.b.bitcast(xs, e.ity)
    tmp = e.b.sub(ix, e.ci(p.log_off))
    k = e.b.ashr(tmp, e.ci(p.mant))
    m = e.b.bitcast(e.b.sub(ix, e.b.shl(k, e.ci(p.mant))), e.t)  # [sqrt.5, sqrt2)
    kf = e.add(e.b.sitofp(k, e.t), kadj)

    # fdlibm scheme: f = m - 1 is exact; log(1+f) = f - hfsq + s*(hfsq + R)
    # with s = f/(2+f) keeps the big term f exact and only rounds the small
    # corrections, which beats evaluating 2*atanh(s) directly.
    f = e.sub(m, e.c(1.0))
    s = e.div(f, e.add(e.c(2.0), f))
    z = e.mul(s, s)
    R = e.mul(e.horner(z, p.log_a), z)
    hfsq = e.mul(e.mul(f, f), e.c(0.5))
    return kf, f, hfsq, e.fma(s, e.add(hfsq, R), e.mul(kf, e.c(p.ln2_lo)))


def _body_log(e: _Emitter, x: ir.Value) -> ir.Value:
    kf, f, hfsq, lo = _log_parts(e, x)
    res = e.fma(kf, e.c(e.p.ln2_hi), e.sub(f, e.sub(hfsq, lo)))

    inf = e.c(math.inf)
    res = e.sel(e.b.fcmp_ordered("==", x, inf), inf, res)
    res = e.sel(e.b.fcmp_ordered("==", x, e.c(0.0)), e.c(-math.inf), res)
    # ult: true for x < 0 and for NaN
    return e.sel(e.b.fcmp_unordered("<", x, e.c(0.0)), e.c(math.nan), res)


def _body_pow(e: _Emitter, x: ir.Value, y: ir.Value) -> ir.Value:
    """x**y for x >= 0 (NaN below), as e^(y log x) with y log x kept as an unrounded pair. log x
    rounded is up to half an ulp of |log x| (which reaches 745) off, and e^ turns that into
    |y log x| ulp of the result; as a pair, only log's small corrections (below 0.02) round."""
    p = e.p
    neg = e.b.fneg
    kf, f, hfsq, lo = _log_parts(e, x)
    # log x = head + head_err + (th + tl), every part but lo's rounding exact
    head = e.mul(kf, e.c(p.ln2_hi))
    head_err = e.fma(kf, e.c(p.ln2_hi), neg(head))
    hfsq_err = e.fma(f, e.mul(f, e.c(0.5)), neg(hfsq))
    th, tl = e.fast2sum(f, neg(hfsq))  # |f| > f*f/2
    tl = e.add(tl, e.add(e.sub(lo, hfsq_err), head_err))
    # y log x = zh + zl: the two big products with their exact rounding errors, plus y*tl
    big, small = e.mul(y, head), e.mul(y, th)
    zh, zl = e.fast2sum(big, small)  # |head| > |th| unless head == 0
    errors = e.add(e.fma(y, head, neg(big)), e.fma(y, th, neg(small)))
    zh, zl = e.fast2sum(zh, e.add(zl, e.fma(y, tl, errors)))
    clamped = e.clamp(zh, p.exp_lo, p.exp_hi)
    # past the clamp the result is 0 or inf whatever zl is (up to 2^970 there)
    zl = e.sel(e.b.fcmp_ordered("==", clamped, zh), zl, e.c(0.0))
    n, r, w = e.exp_core(clamped)
    # e^(zh + zl) = 2^n (1 + r + w)(1 + zl): zl (up to an ulp of zh, 2^-43 near overflow) joins
    # the small terms, times all of e^r: zl*(1 + r) alone is 2^-52 off at |r| = ln2/2
    w = e.add(w, e.fma(zl, e.add(r, w), zl))
    one = e.c(1.0)
    h, l = e.fast2sum(one, r)
    m = e.add(h, e.add(l, w))
    # as in exp: two exact power-of-two factors, so only a denormal result rounds again
    n1 = e.b.ashr(n, e.ci(1))
    res = e.mul(e.mul(m, e.pow2(n1)), e.pow2(e.b.sub(n, n1)))

    inf, zero = e.c(math.inf), e.c(0.0)
    positive = e.gt(y, zero)
    # y log x past the float range (inf, or NaN from inf - inf or inf * 0 in the pair's sums):
    # inf when x > 1 and y > 0 or both below, else 0; the NaN of x or y is chosen below
    unbounded = e.b.fcmp_unordered(">=", e.fabs(zh), inf)
    grows = e.b.icmp_unsigned("==", e.gt(x, one), positive)
    res = e.sel(unbounded, e.sel(grows, inf, zero), res)
    res = e.sel(e.b.fcmp_ordered("==", x, inf), e.sel(positive, inf, zero), res)
    res = e.sel(e.b.fcmp_ordered("==", x, zero), e.sel(positive, zero, inf), res)
    # ult: true for x < 0 and for NaN
    res = e.sel(e.b.fcmp_unordered("<", x, zero), e.c(math.nan), res)
    res = e.sel(e.isnan(y), y, res)
    # numpy: 1 ** y and x ** 0 are 1, NaN or not
    return e.sel(e.b.or_(e.b.fcmp_ordered("==", x, one), e.b.fcmp_ordered("==", y, zero)), one, res)


def _body_sigmoid(e: _Emitter, x: ir.Value) -> ir.Value:
    p = e.p
    # Only z = exp(-|x|) is formed, so nothing overflows, and for x < 0 the
    # answer z/(1+z) keeps full relative accuracy deep into the tail where
    # 1 - 1/(1+exp(-x)) would cancel to 0.  z is kept as an unrounded pair:
    # rounding it first costs up to 1.5 ulp when z/(1+z) drops below a
    # power of two that z is above.
    n, r, w = e.exp_core(e.clamp(e.b.fneg(e.fabs(x)), p.exp_lo, 0.0))
    one = e.c(1.0)
    h, l = e.fast2sum(one, r)
    mh, ml = e.fast2sum(h, e.add(l, w))
    # as in exp: two exact power-of-two factors; only denormal z rounds,
    # where an ulp is absolute and tiny anyway
    n1 = e.b.ashr(n, e.ci(1))
    s1, s2 = e.pow2(n1), e.pow2(e.b.sub(n, n1))
    zh = e.mul(e.mul(mh, s1), s2)
    zl = e.mul(e.mul(ml, s1), s2)
    pos = e.b.fcmp_unordered(">=", x, e.c(0.0))
    dh, dl = e.fast2sum(one, zh)
    res = e.div_comp(
        e.sel(pos, one, zh),
        e.sel(pos, e.c(0.0), zl),
        dh,
        e.add(dl, zl),
    )
    return e.sel(e.isnan(x), x, res)


def _body_tanh(e: _Emitter, x: ir.Value) -> ir.Value:
    p = e.p
    a = e.fabs(x)
    # |x| < 0.625: odd polynomial, relatively accurate down to denormals
    # (tanh = a + a^3 B(a^2) with a^3 B below 0.13 a, so its rounding
    # hardly matters).  The expm1 route would need compensated arithmetic
    # to survive the cancellation in -t/(2+t) and costs twice as much.
    y = e.mul(a, a)
    small = e.fma(e.mul(a, y), e.horner(y, p.tanh_b), a)
    # larger |x|: 1 - 2/(1 + e^2a); the result is >= 0.55, so the 2/(1+E)
    # term (<= 0.45) carries its ~2 ulp of rounding at half weight.  e^2a is
    # only needed up to where tanh rounds to 1, so 2^n is a single factor.
    n, r, w = e.exp_core(e.clamp(e.mul(a, e.c(2.0)), 0.0, p.tanh_clamp), precise=False)
    big_e = e.mul(e.add(e.add(r, w), e.c(1.0)), e.pow2(n))
    large = e.sub(e.c(1.0), e.div(e.c(2.0), e.add(big_e, e.c(1.0))))
    res = e.sel(e.lt(a, e.c(p.tanh_switch)), small, large)
    res = e.copysign(res, x)
    return e.sel(e.isnan(x), x, res)


# ---------------------------------------------------------------- plumbing


def _helper(module: ir.Module, op: str, ty: ir.Type, body: Callable[..., ir.Value], arity: int = 1) -> ir.Function:
    """The module's ``gradc.<op>.<type>`` function (f32, f64, v64f32, ...), built on first use."""
    name = f"gradc.{op}.{type_suffix(ty)}"
    existing = module.globals.get(name)
    if existing is not None:
        return existing
    fn = ir.Function(module, ir.FunctionType(ty, [ty] * arity), name=name)
    fn.linkage = "internal"
    fn.attributes.add("alwaysinline")
    fn.attributes.add("nounwind")
    b = ir.IRBuilder(fn.append_basic_block("entry"))
    b.ret(body(_Emitter(b, ty), *fn.args))
    return fn


def _emit(builder: ir.IRBuilder, op: str, body, *args: ir.Value) -> ir.Value:
    x = args[0]
    if not isinstance(element_type(x.type), (ir.FloatType, ir.DoubleType)):
        raise TypeError(f"gradc mathlib {op}: expected float or double (or vectors of them), got {x.type}")
    return builder.call(_helper(builder.module, op, x.type, body, len(args)), list(args))


def emit_exp(builder: ir.IRBuilder, x: ir.Value) -> ir.Value:
    """e**x."""
    return _emit(builder, "exp", _body_exp, x)


def emit_expm1(builder: ir.IRBuilder, x: ir.Value) -> ir.Value:
    """e**x - 1, accurate for small |x|."""
    return _emit(builder, "expm1", _body_expm1, x)


def emit_log(builder: ir.IRBuilder, x: ir.Value) -> ir.Value:
    """Natural logarithm (NaN for x < 0, -inf for x == 0)."""
    return _emit(builder, "log", _body_log, x)


def emit_pow(builder: ir.IRBuilder, x: ir.Value, y: ir.Value) -> ir.Value:
    """x**y for x >= 0 (NaN for x < 0), as numpy at 0, 1 and inf; within about 1 + |y|/4 ulp. For
    integer or half-integer y, repeated products (and sqrt) are exact in sign and more accurate."""
    return _emit(builder, "pow", _body_pow, x, y)


def emit_sigmoid(builder: ir.IRBuilder, x: ir.Value) -> ir.Value:
    """1 / (1 + e**-x), relatively accurate in both tails."""
    return _emit(builder, "sigmoid", _body_sigmoid, x)


def emit_tanh(builder: ir.IRBuilder, x: ir.Value) -> ir.Value:
    """Hyperbolic tangent, relatively accurate near 0."""
    return _emit(builder, "tanh", _body_tanh, x)
