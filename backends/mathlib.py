"""Vectorizable transcendental functions emitted as LLVM IR.

LLVM turns ``llvm.exp``/``llvm.log`` (and calls to libm) inside a vectorized
loop into one scalar libm call per lane, which is several times slower than
numpy.  The functions here instead emit the math as plain IR: FP arithmetic,
integer bit manipulation and a few intrinsics (``llvm.fma``, ``llvm.rint``,
``llvm.fabs``, ``llvm.copysign``) that every x86 vector ISA implements
natively, so the loop vectorizer widens them like any other arithmetic.

Each ``emit_*`` call gets (or creates once per module) an ``internal
alwaysinline`` helper such as ``gradc.exp.f32`` and calls it.  Before
optimization the kernel IR stays readable (one call per op); after O3 the
helper is inlined into the loop, vectorized and then deleted, so the finished
module calls nothing outside ``llvm.*``.

Accuracy (measured by tests/test_mathlib.py against float64/long double
references over the whole input range): float32 results within 2 ULP,
float64 results within 4 ULP of numpy; NaN, infinities, signed zeros,
overflow and denormal results behave like numpy.

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

__all__ = ["emit_exp", "emit_expm1", "emit_log", "emit_sigmoid", "emit_tanh"]


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
        # Taylor degree of e^r - 1 on |r| <= ln2/2 (truncation < 0.15 ulp).
        self.exp_deg = 7 if f32 else 13
        # Terms of log(1+f) = 2s + s*R(s^2), R = sum 2 z^k / (2k+1) for
        # |s| <= 0.1716 (truncation < 0.05 ulp).
        self.log_terms = 4 if f32 else 10
        # Denormal inputs of log are scaled by 2^log_scale to become normal.
        self.log_scale = 25 if f32 else 54
        # Bit pattern of ~sqrt(1/2): subtracting it before extracting the
        # exponent puts the mantissa in [sqrt(1/2), sqrt(2)).
        self.log_off = 0x3F3504F3 if f32 else 0x3FE6A09E667F3BCD
        # tanh: below this |x| the expm1 form -t/(2+t) is used, above it
        # (1-e)/(1+e) with e = exp(-2|x|); here n is in {0,-1,-2}.
        self.tanh_switch = 0.625


class _Emitter:
    """Small wrapper so the math below reads like formulas."""

    def __init__(self, builder: ir.IRBuilder, ty: ir.Type) -> None:
        self.b = builder
        self.t = ty
        self.p = _Prec(isinstance(ty, ir.FloatType))
        self.mod = builder.module

    # constants
    def c(self, v: float) -> ir.Constant:
        return ir.Constant(self.t, v)

    def ci(self, v: int) -> ir.Constant:
        return ir.Constant(self.p.ity, v)

    # intrinsics; fnty is always passed because declare_intrinsic guesses
    # wrong signatures for multi-argument intrinsics
    def _intr(self, name: str, args: list[ir.Value]) -> ir.Value:
        fnty = ir.FunctionType(self.t, [self.t] * len(args))
        fn = self.mod.declare_intrinsic(name, [self.t], fnty=fnty)
        return self.b.call(fn, args)

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

    # shared exp pieces
    def fast2sum(self, a: ir.Value, b: ir.Value) -> tuple[ir.Value, ir.Value]:
        """(h, l) with h + l == a + b exactly; needs |a| >= |b| or a == 0."""
        h = self.add(a, b)
        return h, self.add(self.sub(a, h), b)

    def exp_core(self, x: ir.Value) -> tuple[ir.Value, ir.Value, ir.Value]:
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
        r_lo = self.fma(nn, self.c(p.ln2_lo), self.sub(r1, r))
        # e^r - 1 = r + r^2 * P(r), Taylor coefficients 1/k!
        coeffs = [1.0 / math.factorial(k) for k in range(2, p.exp_deg + 1)]
        acc = self.c(coeffs[-1])
        for ck in reversed(coeffs[:-1]):
            acc = self.fma(acc, r, self.c(ck))
        # e^(r + r_lo) - 1 ~= r + r^2 P(r) + r_lo (1 + r)
        w = self.fma(self.mul(r, r), acc, self.fma(r_lo, r, r_lo))
        return self.b.fptosi(n, p.ity), r, w

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
    n, r, w = e.exp_core(e.clamp(x, p.exp_lo, p.exp_hi))
    h, l = e.fast2sum(e.c(1.0), r)
    m = e.add(h, e.add(l, w))  # 1 + r + w, rounded once
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
    s = e.pow2(e.b.sub(n, e.b.zext(big, p.ity)))
    head = e.sel(big, s, e.sub(s, e.c(1.0)))
    h, l = e.fast2sum(head, e.mul(s, r))
    l = e.add(l, e.sel(big, e.c(-0.5), e.c(0.0)))
    res = e.add(h, e.fma(s, w, l))
    res = e.mul(res, e.sel(big, e.c(2.0), e.c(1.0)))
    # keeps expm1(-0) == -0 (the reduction turns -0 into +0)
    res = e.sel(e.b.fcmp_ordered("==", x, e.c(0.0)), x, res)
    return e.sel(e.isnan(x), x, res)


def _body_log(e: _Emitter, x: ir.Value) -> ir.Value:
    p = e.p
    # Denormals have no implicit leading bit; scaling them into the normal
    # range lets the same bit split work for every positive input.
    tiny = e.lt(x, e.c(p.min_normal))
    xs = e.sel(tiny, e.mul(x, e.c(2.0 ** p.log_scale)), x)
    kadj = e.sel(tiny, e.c(-float(p.log_scale)), e.c(0.0))
    ix = e.b.bitcast(xs, p.ity)
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
    coeffs = [2.0 / (2 * j + 1) for j in range(1, p.log_terms + 1)]
    acc = e.c(coeffs[-1])
    for ck in reversed(coeffs[:-1]):
        acc = e.fma(acc, z, e.c(ck))
    R = e.mul(acc, z)
    hfsq = e.mul(e.mul(f, f), e.c(0.5))
    lo = e.fma(s, e.add(hfsq, R), e.mul(kf, e.c(p.ln2_lo)))
    res = e.fma(kf, e.c(p.ln2_hi), e.sub(f, e.sub(hfsq, lo)))

    inf = e.c(math.inf)
    res = e.sel(e.b.fcmp_ordered("==", x, inf), inf, res)
    res = e.sel(e.b.fcmp_ordered("==", x, e.c(0.0)), e.c(-math.inf), res)
    # ult: true for x < 0 and for NaN
    return e.sel(e.b.fcmp_unordered("<", x, e.c(0.0)), e.c(math.nan), res)


def _body_sigmoid(e: _Emitter, x: ir.Value) -> ir.Value:
    # Only exp(-|x|) is ever formed, so nothing overflows, and for x < 0 the
    # answer z/(1+z) keeps full relative accuracy deep into the tail where
    # 1 - 1/(1+exp(-x)) would cancel to 0.
    z = e.b.call(_helper(e.b.module, "exp", e.t, _body_exp), [e.b.fneg(e.fabs(x))])
    one = e.c(1.0)
    num = e.sel(e.b.fcmp_unordered(">=", x, e.c(0.0)), one, z)
    den = e.add(one, z)
    den_lo = e.add(e.sub(one, den), z)  # Fast2Sum: 1 >= z, exact error
    return e.div_comp(num, e.c(0.0), den, den_lo)


def _body_tanh(e: _Emitter, x: ir.Value) -> ir.Value:
    p = e.p
    a = e.fabs(x)
    n, r, w = e.exp_core(e.clamp(e.mul(a, e.c(-2.0)), p.expm1_lo, 0.0))
    s = e.pow2(n)  # exp(-2a) = s (1 + r + w), n in [expm1_lo/ln2, 0]
    one, two = e.c(1.0), e.c(2.0)

    # small |x|: tanh = -t/(2+t) with t = expm1(-2a) = (s-1) + s r + s w
    # carried as an exact hi+lo pair (n is 0, -1 or -2 here, so s-1 and s r
    # are exact), so the cancellation near 0 costs nothing.
    th, tl = e.fast2sum(e.sub(s, one), e.mul(s, r))
    tl = e.fma(s, w, tl)
    dh1, dl1 = e.fast2sum(two, th)
    dl1 = e.add(dl1, tl)

    # large |x|: tanh = (1-E)/(1+E), E = exp(-2a) = eh + el <= 0.29, again
    # with every rounding error carried along.
    h, l = e.fast2sum(one, r)
    eh = e.mul(s, h)
    el = e.mul(s, e.add(l, w))
    nh2, nl2 = e.fast2sum(one, e.b.fneg(eh))
    nl2 = e.sub(nl2, el)
    dh2, dl2 = e.fast2sum(one, eh)
    dl2 = e.add(dl2, el)

    small = e.lt(a, e.c(p.tanh_switch))
    res = e.div_comp(
        e.sel(small, e.b.fneg(th), nh2),
        e.sel(small, e.b.fneg(tl), nl2),
        e.sel(small, dh1, dh2),
        e.sel(small, dl1, dl2),
    )
    res = e.copysign(res, x)
    return e.sel(e.isnan(x), x, res)


# ---------------------------------------------------------------- plumbing


def _helper(
    module: ir.Module, op: str, ty: ir.Type, body: Callable[[_Emitter, ir.Value], ir.Value]
) -> ir.Function:
    """The module's ``gradc.<op>.<f32|f64>`` function, built on first use."""
    name = f"gradc.{op}.{_Prec(isinstance(ty, ir.FloatType)).name}"
    existing = module.globals.get(name)
    if existing is not None:
        return existing
    fn = ir.Function(module, ir.FunctionType(ty, [ty]), name=name)
    fn.linkage = "internal"
    fn.attributes.add("alwaysinline")
    fn.attributes.add("nounwind")
    b = ir.IRBuilder(fn.append_basic_block("entry"))
    b.ret(body(_Emitter(b, ty), fn.args[0]))
    return fn


def _emit(builder: ir.IRBuilder, x: ir.Value, op: str, body) -> ir.Value:
    if not isinstance(x.type, (ir.FloatType, ir.DoubleType)):
        raise TypeError(f"gradc mathlib {op}: expected float or double, got {x.type}")
    return builder.call(_helper(builder.module, op, x.type, body), [x])


def emit_exp(builder: ir.IRBuilder, x: ir.Value) -> ir.Value:
    """e**x."""
    return _emit(builder, x, "exp", _body_exp)


def emit_expm1(builder: ir.IRBuilder, x: ir.Value) -> ir.Value:
    """e**x - 1, accurate for small |x|."""
    return _emit(builder, x, "expm1", _body_expm1)


def emit_log(builder: ir.IRBuilder, x: ir.Value) -> ir.Value:
    """Natural logarithm (NaN for x < 0, -inf for x == 0)."""
    return _emit(builder, x, "log", _body_log)


def emit_sigmoid(builder: ir.IRBuilder, x: ir.Value) -> ir.Value:
    """1 / (1 + e**-x), relatively accurate in both tails."""
    return _emit(builder, x, "sigmoid", _body_sigmoid)


def emit_tanh(builder: ir.IRBuilder, x: ir.Value) -> ir.Value:
    """Hyperbolic tangent, relatively accurate near 0."""
    return _emit(builder, x, "tanh", _body_tanh)
