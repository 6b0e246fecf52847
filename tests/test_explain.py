"""The gradient as matrix calculus: textbook formulas for the seed network and a 3-layer MLP, each
one checked numerically (formula evaluated with numpy vs the compiled gradient and the graph)."""
from __future__ import annotations


import numpy as np
import pytest

import gradc as gc
from gradc.checking import random_arguments, with_dtype
from gradc.explain import Explanation, explain
from gradc.tracing import annotated_types

from models import load_example as load


def explained(fn, wrt, stage=None, dtype="f64") -> tuple[Explanation, gc.Lowered]:
    lowered = gc.value_and_grad(with_dtype(fn, dtype), wrt=tuple(wrt)).lower()
    return explain(lowered, wrt, stage), lowered


def onehot_inputs(fn, dims=None, seed=0):
    """Random arguments with a one-hot last argument (the targets t)."""
    arrays = random_arguments(annotated_types(with_dtype(fn, "f64")), dims, seed)
    t = arrays[-1]
    arrays[-1] = np.eye(t.shape[1])[np.random.default_rng(seed).integers(0, t.shape[1], t.shape[0])]
    return arrays


SEED_FORMULAS = {
    "∂L/∂h": "2/N (h − y)",
    "∂L/∂V": "(∂L/∂h)ᵀ g",
    "∂L/∂g": "(∂L/∂h) V",
    "∂L/∂f": "∂L/∂g ⊙ g ⊙ (1 − g)",
    "∂L/∂U": "(∂L/∂f)ᵀ x",
}


@pytest.mark.parametrize("stage", ["optimized", "grad"])
def test_seed_network_reads_like_the_textbook(stage):
    ex, _ = explained(load("seed"), ["U", "V"], stage, dtype="f32")
    formulas = ex.formulas()
    for lhs, rhs in SEED_FORMULAS.items():
        assert formulas[lhs] == rhs, (lhs, formulas[lhs])
    assert formulas["f"] == "x Uᵀ" and formulas["g"] == "σ(f)" and formulas["h"] == "g Vᵀ"
    assert formulas["L"] == "1/N Σ (h − y)²"
    text = str(ex)
    assert "where N = B·10" in text
    # the shape of each term: the result, and the factors of a product as written
    assert "10×32 = (B×10)ᵀ(B×32)" in text and "32×64 = (B×32)ᵀ(B×64)" in text


def test_seed_formulas_evaluate_to_the_compiled_gradient():
    fn = load("seed")
    ex, _ = explained(fn, ["U", "V"])
    arrays = random_arguments(annotated_types(with_dtype(fn, "f64")), {"B": 7}, seed=3)
    values = ex.evaluate(*arrays)
    _, (dU, dV) = gc.value_and_grad(with_dtype(fn, "f64"), wrt=("U", "V"))(*arrays)
    np.testing.assert_allclose(values[ex.gradients["U"]], dU, rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(values[ex.gradients["V"]], dV, rtol=1e-10, atol=1e-14)
    # and the intermediate ∂L/∂h is the hand-derived 2(h − y)/N
    U, V, x, y = arrays
    h = (1 / (1 + np.exp(-x @ U.T))) @ V.T
    np.testing.assert_allclose(values["dh"], 2 * (h - y) / h.size, rtol=1e-12)


MLP_FORMULAS = {
    "a₁": "x W₁ᵀ + b₁",
    "h₁": "relu(a₁)",
    "L": "−1/B Σ (t ⊙ log softmax(z))",
    "∂L/∂z": "(softmax(z) − t)/B",
    "∂L/∂b₃": "1ᵀ (∂L/∂z)",
    "∂L/∂W₃": "(∂L/∂z)ᵀ h₂",
    "∂L/∂h₂": "(∂L/∂z) W₃",
    "∂L/∂a₂": "∂L/∂h₂ ⊙ (1 − h₂²)",
    "∂L/∂b₂": "1ᵀ (∂L/∂a₂)",
    "∂L/∂a₁": ("∂L/∂h₁ ⊙ 𝟙(a₁ > 0)", "∂L/∂h₁ ⊙ 𝟙(h₁ > 0)"),  # relu's VJP may test input or output
    "∂L/∂b₁": "1ᵀ (∂L/∂a₁)",
    "∂L/∂W₁": "(∂L/∂a₁)ᵀ x",
}
MLP_PARAMS = ["W1", "b1", "W2", "b2", "W3", "b3"]


@pytest.mark.parametrize("stage", ["optimized", "grad"])
def test_mlp_softmax_cross_entropy_and_bias_column_sums(stage):
    ex, _ = explained(load("mlp3"), MLP_PARAMS, stage, dtype="f32")
    formulas = ex.formulas()
    for lhs, rhs in MLP_FORMULAS.items():
        assert formulas[lhs] in ((rhs,) if isinstance(rhs, str) else rhs), (lhs, formulas[lhs])
    text = str(ex)
    assert "assuming each row of t sums to 1" in text
    assert "in general ∂L/∂z = (softmax(z) ⊙ (t 1) − t)/B" in text


def test_mlp_formulas_evaluate_to_the_compiled_gradient():
    fn = load("mlp3")
    ex, _ = explained(fn, MLP_PARAMS)
    arrays = onehot_inputs(fn, {"B": 6}, seed=1)
    values = ex.evaluate(*arrays)
    _, grads = gc.value_and_grad(with_dtype(fn, "f64"), wrt=tuple(MLP_PARAMS))(*arrays)
    for name, grad in zip(MLP_PARAMS, grads):
        np.testing.assert_allclose(values[ex.gradients[name]], grad, rtol=1e-9, atol=1e-13, err_msg=name)
    # bias gradients are the column sums of the layer's ∂L/∂(pre-activation)
    np.testing.assert_allclose(values[ex.gradients["b3"]], values["dz"].sum(axis=0), rtol=1e-12)


def test_the_cross_entropy_assumption_is_real_and_its_general_form_is_exact():
    """With targets whose rows do not sum to 1, the textbook form is wrong and the general one right."""
    fn = load("mlp3")
    ex, _ = explained(fn, MLP_PARAMS)
    arrays = random_arguments(annotated_types(with_dtype(fn, "f64")), {"B": 5}, seed=2)
    arrays[-1] = np.abs(arrays[-1]) * 3  # rows sum to anything but 1
    dz = next(e for e in ex.backward if e.key == "dz")
    from gradc.explain import evaluate
    graph_dz = ex.verify(*arrays)["dz"]
    assert graph_dz > 1e-3, "the textbook form should not hold without the assumption"
    env_values = ex.evaluate(*arrays)
    env = {e.lhs: env_values[e.key] for e in ex.equations}
    env.update({leaf: a for leaf, a in zip(ex.inputs, arrays)})
    dims = {"B": 5}
    general = evaluate(dz.general, env, dims)
    reference = gc.ir.interpret(gc.ir.Graph("probe", ex.graph.inputs, ex.graph.ops, [dz.value]), *arrays)[0]
    np.testing.assert_allclose(general, reference, rtol=1e-12)
    # and example_inputs() makes inputs that satisfy it
    assert max(ex.verify(*ex.example_inputs({"B": 5})).values()) < 1e-12


@pytest.mark.parametrize("name", ["seed", "mlp3"])
@pytest.mark.parametrize("stage", ["optimized", "grad"])
def test_every_displayed_formula_matches_the_graph(name, stage):
    fn = load(name)
    wrt = ["U", "V", "x", "y"] if name == "seed" else MLP_PARAMS + ["x"]
    ex, _ = explained(fn, wrt, stage)
    errors = ex.verify(*ex.example_inputs({"B": 3}, seed=5))
    assert len(errors) == len({e.key for e in ex.equations if e.value is not None})
    assert max(errors.values()) < 1e-12, errors


def models_lowered():
    import models  # tests/models.py: the shared zoo of test models
    return [(name, lowered, models.example_inputs(name)) for name, lowered in models.lowered_models()]


@pytest.mark.parametrize("stage", ["optimized", "grad"])
def test_any_model_explains_correctly(stage):
    """No per-network code: every test model, named or not, vectors and symbolic dims included."""
    for name, lowered, arrays in models_lowered():
        ex = explain(lowered, stage=stage)
        errors = ex.verify(*arrays)
        tolerance = 1e-5 if lowered.graphs["traced"].inputs[0].type.dtype == "f32" else 1e-12
        assert max(errors.values()) < tolerance, (name, errors)
        assert str(ex) and ex.latex()


def test_unnamed_layers_get_textbook_deltas():
    import models
    lowered = gc.value_and_grad(models.mlp_xent, wrt=tuple(range(6))).lower(*models.mlp_args())
    formulas = explain(lowered).formulas()
    assert formulas["u₁"] == "tanh(x W₁ + b₁)" and formulas["u₂"] == "σ(u₁ W₂ + b₂)"
    assert formulas["δ₁"] == "((∂L/∂logits) W₃ᵀ) ⊙ u₂ ⊙ (1 − u₂)"
    assert formulas["∂L/∂W₂"] == "u₁ᵀ δ₁" and formulas["∂L/∂b₂"] == "1ᵀ δ₁"
    # static sizes print as fractions, not as 0.142857
    assert formulas["∂L/∂logits"] == "(softmax(logits) − t)/7"


def test_vectors_are_columns():
    import models
    lowered = gc.value_and_grad(models.seed_single, wrt=(0, 1)).lower(*models.single_args())
    formulas = explain(lowered).formulas()
    assert formulas["g"] == "σ(U x)" and formulas["∂L/∂V"] == "(∂L/∂h) gᵀ"
    assert formulas["∂L/∂U"] == "(∂L/∂g ⊙ g ⊙ (1 − g)) xᵀ"


def test_latex():
    ex, _ = explained(load("seed"), ["U", "V"], dtype="f32")
    latex = ex.latex()
    assert r"\begin{aligned}" in latex and r"\end{aligned}" in latex
    assert r"\frac{\partial L}{\partial V} &= \left(\frac{\partial L}{\partial h}\right)^{\top} g" in latex
    assert r"\frac{\partial L}{\partial h} &= \frac{2}{N} \left(h - y\right)" in latex
    assert r"\sigma(f)" in latex and r"\odot" in latex and r"\in \mathbb{R}^{B \times 32}" in latex
    assert ex._repr_latex_().startswith("$$\\begin{aligned}")
    mlp, _ = explained(load("mlp3"), MLP_PARAMS, dtype="f32")
    assert mlp.formulas(latex=True)[r"\frac{\partial L}{\partial z}"] == \
        r"\frac{\operatorname{softmax}(z) - t}{B}"


def test_verbose_links_each_formula_to_its_ir_value_and_source_line():
    ex, lowered = explained(load("seed"), ["U", "V"], dtype="f32")
    text = ex.text(verbose=True)
    line = next(ln for ln in text.splitlines() if ln.strip().startswith("∂L/∂V"))
    assert "%dV" in line and "seed.py:" in line
    assert "%dV = matmul" in lowered.as_text("optimized")


def test_forward_only_stage():
    ex, _ = explained(load("seed"), ["U"], "traced", dtype="f32")
    assert not ex.backward and "(none: the traced graph has no gradient outputs)" in str(ex)


def test_lowered_explain_method():
    lowered = gc.value_and_grad(load("seed"), wrt=("U", "V")).lower()
    assert lowered.explain().formulas()["∂L/∂U"] == "(∂L/∂f)ᵀ x"


def test_a_loop_does_not_blow_up_the_formulas():
    """x = tanh(x W) ⊙ x reads each step twice: inlined, the formula would double at every turn."""
    def loss(x: gc.f64["B", 4], W: gc.f64[4, 4]):
        for _ in range(20):
            x = gc.tanh(x @ W) * x
        return gc.mean(x)

    ex = explain(gc.value_and_grad(loss, wrt="W").lower(), ["W"])
    assert max(len(rhs) for rhs in ex.formulas().values()) < 2000
    assert max(ex.verify(*ex.example_inputs({"B": 3})).values()) < 1e-12
