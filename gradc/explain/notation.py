"""One notation for the formulas, spelled in Unicode (`render_text`) or LaTeX (`render_latex`).

Vectors are columns, broadcasting stays implicit as numpy reads it, sums along one axis of a matrix
are products with a vector of ones (1ᵀ X), and constants print as fractions (1/12, 2/N).
"""
from __future__ import annotations

import re
from fractions import Fraction
from typing import TYPE_CHECKING

from ..ir.types import Shape
from .algebra import (Bcast, Expr, Fn, Leaf, MatMul, Num, Prod, Reduce, Reshape, Size, Sum, Transpose,
                      is_constant, mul, split_coefficient, walk)

if TYPE_CHECKING:  # reading renders through this module, so it can only be imported for the types
    from .reading import Equation, Explanation


_SUBSCRIPT = str.maketrans("0123456789", "₀₁₂₃₄₅₆₇₈₉")
_SUPERSCRIPT = str.maketrans("0123456789-.", "⁰¹²³⁴⁵⁶⁷⁸⁹⁻·")

# Unicode and LaTeX spellings of each elementwise function; {0}, {1} are the arguments
_FUNCTIONS = {
    "sigmoid": ("σ({0})", r"\sigma({0})"), "tanh": ("tanh({0})", r"\tanh({0})"),
    "exp": ("exp({0})", r"\exp({0})"), "log": ("log({0})", r"\log({0})"),
    "sqrt": ("√({0})", r"\sqrt{{{0}}}"), "relu": ("relu({0})", r"\operatorname{{relu}}({0})"),
    "maximum": ("max({0}, {1})", r"\max({0}, {1})"), "minimum": ("min({0}, {1})", r"\min({0}, {1})"),
    "gt": ("𝟙({0} > {1})", r"\mathbb{{1}}[{0} > {1}]"),
    "eq": ("𝟙({0} = {1})", r"\mathbb{{1}}[{0} = {1}]"),
    "abs": ("|{0}|", r"\lvert {0} \rvert"),
    "softmax": ("softmax({0})", r"\operatorname{{softmax}}({0})"),
    "log_softmax": ("log softmax({0})", r"\log\operatorname{{softmax}}({0})"),
}


def shape_text(shape: Shape, latex: bool = False) -> str:
    if not shape:
        return r"\mathbb{R}" if latex else "scalar"
    dims = (r" \times " if latex else "×").join(str(d) for d in shape)
    return rf"\mathbb{{R}}^{{{dims}}}" if latex else dims


def _number(v: float) -> str:
    return str(int(v)) if float(v).is_integer() and abs(v) < 1e15 else f"{v:.6g}"


def _fraction(v: float) -> tuple[int, int] | None:
    """p/q when v is a simple fraction up to float32 rounding (constant folding turns 1/12 into
    0.0833333358): the mean over 12 elements should read 1/12."""
    f = Fraction(v).limit_denominator(1000)
    if f.denominator > 1 and abs(f.numerator) < 1000 and abs(float(f) - v) <= 1e-7 * abs(v):
        return f.numerator, f.denominator
    return None


class _Notation:
    """Renders trees; `kind` of a rendered piece decides where it needs parentheses."""

    def __init__(self, latex: bool, loss: str, sizes: dict[Size, str]) -> None:
        self.latex, self.loss, self.sizes = latex, loss, sizes
        self.minus = "-" if latex else "−"
        self.odot = r" \odot " if latex else " ⊙ "
        self.top = r"^{\top}" if latex else "ᵀ"
        self.one = r"\mathbf{1}" if latex else "1"

    def symbol(self, name: str) -> str:
        m = re.fullmatch(r"([^\W\d]\w*?)_?(\d+)", name)
        base, index = (m.group(1), m.group(2)) if m else (name, "")
        if self.latex:
            base = {"δ": r"\delta"}.get(base, base)
            base = base if len(base) == 1 or base.startswith("\\") else r"\mathrm{" + base.replace("_", r"\_") + "}"
            return base + (f"_{{{index}}}" if index else "")
        return base + index.translate(_SUBSCRIPT)

    def leaf(self, leaf: Leaf) -> str:
        if leaf.role != "adjoint":
            return self.symbol(leaf.name)
        wrt = self.symbol(leaf.name)
        return rf"\frac{{\partial {self.loss}}}{{\partial {wrt}}}" if self.latex else f"∂{self.loss}/∂{wrt}"

    def paren(self, text: str) -> str:
        return rf"\left({text}\right)" if self.latex else f"({text})"

    def wrap(self, e: Expr, allowed: tuple[str, ...]) -> str:
        text, kind = self.render(e)
        return text if kind in allowed else self.paren(text)

    def power(self, e: Expr, p: float) -> str:
        if abs(p) == 0.5:
            inner = self.render(e)[0]
            return rf"\sqrt{{{inner}}}" if self.latex else "√" + self.wrap(e, ("atom",))
        base = self.wrap(e, ("atom",))
        if p == 1:
            return base
        if self.latex:
            return f"{base}^{{{_number(p)}}}"
        return base + (_number(p).translate(_SUPERSCRIPT) if p == int(p) else f"^({_number(p)})")

    def render(self, e: Expr) -> tuple[str, str]:
        """(text, kind); kind is atom, adjoint, power, prod, signed, sum, matmul or reduce."""
        if isinstance(e, Leaf):
            return self.leaf(e), "adjoint" if e.role == "adjoint" else "atom"
        if isinstance(e, Num):
            if _fraction(abs(e.value)):
                return self.prod(Prod(e.value, ()))
            return (self.minus + _number(-e.value), "signed") if e.value < 0 else (_number(e.value), "atom")
        if isinstance(e, Size):
            return self.sizes[e], "atom"
        if isinstance(e, Sum):
            return self.sum(e), "sum"
        if isinstance(e, Prod):
            return self.prod(e)
        if isinstance(e, MatMul):
            return f"{self.operand(e.a)} {self.operand(e.b)}", "matmul"
        if isinstance(e, Transpose):
            if len(e.perm) == 2:
                return self.wrap(e.x, ("atom",)) + self.top, "atom"
            return f"transpose({self.render(e.x)[0]}, {list(e.perm)})", "atom"
        if isinstance(e, Fn):
            return self.function(e), "atom"
        if isinstance(e, Reduce):
            return self.reduction(e)
        if isinstance(e, Bcast):
            if len(e.x.shape) == 1 and len(e.shape) == 2 and e.dims == (0,):  # a column repeated: x 1ᵀ
                return f"{self.wrap(e.x, ('atom', 'matmul'))} {self.one}{self.top}", "matmul"
            return self.render(e.x)
        if isinstance(e, Reshape):
            if [d for d in e.shape if d != 1] == [d for d in e.x.shape if d != 1]:
                # vectors are columns: (n,) -> (n, 1) is x itself, (n,) -> (1, n) is xᵀ
                if len(e.x.shape) == 1 and e.shape == (1,) + e.x.shape:
                    return self.wrap(e.x, ("atom",)) + self.top, "atom"
                return self.render(e.x)
            return f"reshape({self.render(e.x)[0]}, {shape_text(e.shape)})", "atom"
        raise TypeError(type(e).__name__)

    def operand(self, e: Expr) -> str:
        """A matmul operand; a broadcast scalar c is c times the column 1 or the row 1ᵀ of ones."""
        if isinstance(e, Bcast) and e.x.shape == () and len(e.shape) == 2:
            ones = self.one + (self.top if e.shape[0] == 1 else "")
            c = self.wrap(e.x, ("atom",))
            return ones if c == "1" else f"{c} {ones}"
        return self.wrap(e, ("atom", "matmul"))

    def sum(self, e: Sum) -> str:
        out = ""
        for i, t in enumerate(e.terms):
            c, _ = split_coefficient(t)
            text = self.render(mul(t, coef=-1.0) if c < 0 else t)[0]
            out += (self.minus if c < 0 else "") + text if i == 0 else \
                (f" {self.minus} " if c < 0 else " + ") + text
        return out

    def coefficient(self, e: Prod) -> tuple[str, str]:
        """The constant part of a product as (numerator, denominator): 2/N is ("2", "N")."""
        fraction = _fraction(abs(e.coef))
        num = [] if abs(e.coef) == 1 else [str(fraction[0])] if fraction else [_number(abs(e.coef))]
        den = [str(fraction[1])] if fraction else []
        num = [n for n in num if n != "1"] + [self.power(f, p) for f, p in e.factors if is_constant(f) and p > 0]
        den += [self.power(f, -p) for f, p in e.factors if is_constant(f) and p < 0]
        if self.latex:
            return " ".join(num), " ".join(den)
        return "".join(num), "·".join(den) if len(den) < 2 else "(" + "·".join(den) + ")"

    def hadamard(self, factors: list[tuple[Expr, float]], allowed: tuple[str, ...]) -> str:
        return self.odot.join(self.power(f, p) if p != 1 else self.wrap(f, allowed) for f, p in factors)

    def fraction(self, top: str, bottom: str) -> str:
        return rf"\frac{{{top}}}{{{bottom}}}" if self.latex else f"{top}/{bottom}"

    def prod(self, e: Prod) -> tuple[str, str]:
        numerator, denominator = self.coefficient(e)
        top = [(f, p) for f, p in e.factors if not is_constant(f) and p > 0]
        bottom = [(f, -p) for f, p in e.factors if not is_constant(f) and p < 0]
        sign = self.minus if e.coef < 0 else ""
        if len(top) == 1 and top[0][1] == 1 and isinstance(top[0][0], Sum) and not bottom \
                and not numerator and denominator:  # (softmax(z) − t)/B
            inner = self.render(top[0][0])[0]
            return sign + (self.fraction(inner, denominator) if self.latex else f"({inner})/{denominator}"), \
                "signed" if sign else "prod"
        coefficient = self.fraction(numerator or "1", denominator) if denominator else numerator
        # a lone factor after a scalar needs no parentheses: 1/N Σ (h − y)², 2/N x W
        alone = ("atom", "adjoint", "power", "reduce", "matmul")
        body = self.hadamard(top, alone if len(top) == 1 else ("atom", "adjoint"))
        if bottom:
            under = self.hadamard(bottom, ("atom", "adjoint"))
            if self.latex:
                body = self.fraction(body or "1", under)
            else:
                body = f"{body or 1} / " + (self.paren(under) if len(bottom) > 1 else under)
        text = " ".join(t for t in (coefficient, body) if t) or "1"
        if sign:
            return sign + text, "signed"
        if len(top) == 1 and not coefficient and not bottom:
            return text, "power"
        return text, "atom" if not top and not bottom and not denominator else "prod"

    def function(self, e: Fn) -> str:
        args = [self.render(a)[0] for a in e.args]
        attrs = dict(e.attrs)
        if e.name == "rpow":  # c ** x: the constant base to the power of the tensor
            base = _number(attrs["base"])
            return f"{base}^{{{args[0]}}}" if self.latex else f"{base}^({args[0]})"
        if e.name in _FUNCTIONS and len(args) <= 2:
            text = _FUNCTIONS[e.name][self.latex].format(*args)
            axis = attrs.get("axis")
            if axis is not None and axis != len(e.args[0].shape) - 1:
                text = text[:-1] + f", axis={axis})"
            return text
        extra = [f"{k}={v}" for k, v in attrs.items()]
        name = rf"\operatorname{{{e.name}}}".replace("_", r"\_") if self.latex else e.name
        return f"{name}({', '.join(args + extra)})"

    def reduction(self, e: Reduce) -> tuple[str, str]:
        rank = len(e.x.shape)
        if e.op == "max":
            inner = self.render(e.x)[0]
            if len(e.axes) == rank:
                return (rf"\max({inner})" if self.latex else f"max({inner})"), "atom"
            axes = ",".join(map(str, e.axes))
            return (rf"\max_{{\text{{axis }}{axes}}}({inner})" if self.latex else
                    f"max({inner}, axis={axes})"), "atom"
        if rank == 2 and e.axes == (0,):  # column sums
            return f"{self.one}{self.top} {self.wrap(e.x, ('atom', 'matmul'))}", "matmul"
        if rank == 2 and e.axes == (1,):  # row sums
            return f"{self.wrap(e.x, ('atom', 'matmul'))} {self.one}", "matmul"
        inner = self.wrap(e.x, ("atom", "adjoint", "power"))
        sigma = r"\sum" if self.latex else "Σ"
        if len(e.axes) != rank:
            axes = ",".join(map(str, e.axes))
            sigma += rf"_{{\text{{axis }}{axes}}}" if self.latex else f"[axis {axes}]"
        return f"{sigma} {inner}", "reduce"


def _size_names(ex: Explanation) -> tuple[dict[Size, str], list[tuple[str, Size]]]:
    """A letter for each element count: the dim itself (B) or N, M, ... defined in a note."""
    taken = {leaf.name for leaf in ex.inputs} | {e.lhs.name for e in ex.equations}
    taken |= {d for leaf in ex.inputs for d in leaf.shape if isinstance(d, str)}
    names, defined, letters = {}, [], iter(c for c in "NMKPQRS" if c not in taken)
    for eq in ex.equations:
        for e in (eq.expr,) + ((eq.general,) if eq.general is not None else ()):
            for s in walk(e):
                if isinstance(s, Size) and s not in names:
                    if len(s.dims) == 1:
                        names[s] = str(s.dims[0])
                    else:
                        names[s] = next(letters)
                        defined.append((names[s], s))
    return names, defined


def _shape_note(e: Expr, latex: bool) -> str:
    """For a matrix product, the shapes of its factors as written: (B×10)ᵀ(B×32)."""
    if not isinstance(e, MatMul) or latex:
        return ""
    def one(x: Expr) -> str:
        return f"({shape_text(x.x.shape)})ᵀ" if isinstance(x, Transpose) else f"({shape_text(x.shape)})"
    return f" = {one(e.a)}{one(e.b)}"


# --- whole explanations: rows of left side, right side and shape -------------------------------------

def _lines(ex: Explanation, latex: bool) -> tuple[list[tuple[str, str, str, Equation]], list[str], list[str]]:
    sizes, defined = _size_names(ex)
    n = _Notation(latex, "L", sizes)
    rows = []
    for eq in ex.equations:
        rows.append((n.leaf(eq.lhs), n.render(eq.expr)[0],
                     shape_text(eq.lhs.shape, latex) + _shape_note(eq.expr, latex), eq))
    dot = r" \cdot " if latex else "·"
    notes = [f"{name} = {dot.join(str(d) for d in s.dims)}" for name, s in defined]
    caveats = []
    for a in ex.assumptions:
        caveats.append(f"assuming {a.text}")
        for eq in ex.backward:
            if eq.general is not None:
                caveats.append(f"in general {n.leaf(eq.lhs)} = {n.render(eq.general)[0]}")
    return rows, notes, caveats


def formulas(ex: Explanation, latex: bool) -> dict[str, str]:
    return {lhs: rhs for lhs, rhs, _, _ in _lines(ex, latex)[0]}


def _signature(ex: Explanation) -> str:
    return f"{ex.function}(" + ", ".join(f"{leaf.name}: {shape_text(leaf.shape)}" for leaf in ex.inputs) + ")"


def render_text(ex: Explanation, verbose: bool) -> str:
    rows, notes, caveats = _lines(ex, latex=False)
    out = [f"{_signature(ex)}, read back from the {ex.stage} graph"]
    width_lhs = max((len(r[0]) for r in rows), default=0)
    width_rhs = min(max((len(r[1]) for r in rows), default=0), 48)  # one long formula pads no others
    width_shape = max((len(r[2]) for r in rows), default=0)
    for title, eqs in (("forward", ex.forward), ("gradients", ex.backward)):
        out += ["", title]
        if not eqs:
            out.append(f"  (none: the {ex.stage} graph has no gradient outputs)")
        for lhs, rhs, shape, eq in (r for r in rows if any(r[3] is e for e in eqs)):
            line = f"  {lhs.ljust(width_lhs)} = {rhs.ljust(width_rhs)}   {shape}"
            if verbose:
                line = line.ljust(width_lhs + width_rhs + width_shape + 8) + f"   %{eq.key}  {eq.loc}"
            out.append(line.rstrip())
        if title == "forward" and notes:
            out.append("  where " + ", ".join(notes))
    out += [f"  {c}" for c in caveats]
    return "\n".join(out) + "\n"


def latex_block(ex: Explanation) -> str:
    rows, notes, caveats = _lines(ex, latex=True)
    body = []
    for i, (lhs, rhs, shape, eq) in enumerate(rows):
        gap = r" \\[6pt]" if ex.forward and eq is ex.forward[-1] else r" \\"
        body.append(f"  {lhs} &= {rhs} && \\in {shape}" + (gap if i < len(rows) - 1 or notes else ""))
    if notes:
        body.append(r"  & \text{where } " + ", ".join(notes))
    return "\\begin{aligned}\n" + "\n".join(body) + "\n\\end{aligned}"


def render_latex(ex: Explanation) -> str:
    _, _, caveats = _lines(ex, latex=True)
    header = [f"% {_signature(ex)}: gradients read back from the {ex.stage} graph by gradc"]
    return "\n".join(header + [f"% {c}" for c in caveats] + [latex_block(ex)]) + "\n"
