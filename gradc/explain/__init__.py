"""The gradient as matrix calculus: the adjoint graph read back as the formulas a person would write.

`explain(lowered)` walks a compiled graph: every named forward value (`f = x Uᵀ`) and every
adjoint value that autodiff named after a forward value (`∂L/∂h`), plus each requested gradient,
becomes an equation; the ops between them are inlined into one expression tree (`Expr`), which
algebraic normalisation and a few recognisers (softmax, log-softmax, the softmax-cross-entropy
gradient) bring into textbook form. Nothing is written per network: the formulas are whatever the
graph computes. Because each tree also evaluates with numpy, `Explanation.verify` compares every
displayed line with the graph's own value, so the math on screen cannot drift from the code.

The work is split three ways: `algebra` (expression trees in one normal form, the recognisers,
numeric evaluation), `reading` (graph values into equations: `explain`, `Explanation`) and
`notation` (the Unicode and LaTeX rendering).
"""
from .algebra import evaluate
from .reading import Explanation, explain

__all__ = ["Explanation", "evaluate", "explain"]
