"""check_grad: compiled gradients against float64 central differences, and its clear failures."""
from __future__ import annotations


import numpy as np
import pytest

import gradc as gc
from gradc.checking import GradientCheckError, check_grad, random_arguments, with_dtype
from gradc.tracing import annotated_types

from models import load_example as load


@pytest.mark.parametrize("name, tensors", [("seed", 4), ("mlp3", 8), ("logistic", 5)])
def test_example_models_pass(name, tensors):
    fn = load(name)
    result = check_grad(fn, *random_arguments(annotated_types(fn), {"B": 5}, seed=1))
    assert result.ok and list(result.errors) == gc.tracing.parameter_names(fn)[:tensors]
    assert max(result.errors.values()) < 1e-5  # central differences in float64 resolve about 1e-6
    assert f"all {tensors} gradients agree" in str(result)


def test_float32_model_is_checked_in_float64():
    fn = load("seed")
    arrays = random_arguments(annotated_types(fn), {"B": 3})
    assert arrays[0].dtype == np.float32
    result = check_grad(fn, *arrays, wrt=["U"])
    assert list(result.errors) == ["U"] and result.errors["U"] < 1e-6  # f32 would give ~1e-3


def test_annotations_alone_are_enough():
    result = check_grad(load("seed"), wrt=("V",))
    assert result.ok


def test_mismatch_raises_with_a_clear_message():
    def wrong(x: gc.f64[3, 4]):
        # stop_gradient hides half of the derivative: gradc says x, the differences say 2x
        return gc.sum(x * gc.stop_gradient(x))

    with pytest.raises(GradientCheckError) as info:
        check_grad(wrong)
    message = str(info.value)
    assert "wrong" in message and "∂L/∂x" in message and "relative error" in message
    assert "gradc" in message and "differences" in message
    result = check_grad(wrong, raise_on_mismatch=False)
    assert not result.ok and result.errors["x"] == pytest.approx(0.5, rel=1e-3)
    assert "MISMATCH" in str(result)


def test_compiled_function_keeps_its_wrt():
    step = gc.grad(load("seed"), wrt=("V",))
    assert list(check_grad(step).errors) == ["V"]


def test_unannotated_function_with_arrays():
    def loss(W, x):
        return gc.mean(gc.tanh(x @ W) ** 2)

    rng = np.random.default_rng(0)
    W, x = rng.standard_normal((4, 3)) * 0.5, rng.standard_normal((5, 4))
    assert check_grad(loss, W, x, wrt="W").ok
    with pytest.raises(TypeError, match="needs example arrays"):
        check_grad(loss)


def test_with_dtype_keeps_names_and_source_lines():
    fn = load("seed")
    text = str(gc.make_ir(with_dtype(fn, "f64"))())
    assert "%U: f64[32,64]" in text and "%g = sigmoid(%f) : f64[B,32]" in text and "# seed.py:" in text
    assert annotated_types(fn)[0].dtype == "f32"  # the original is untouched


def test_random_arguments_bind_symbols_and_scale_matrices():
    types = annotated_types(load("mlp3"))
    arrays = random_arguments(types, {"B": 9}, seed=0)
    assert arrays[-2].shape == (9, 784) and arrays[1].shape == (64,)
    assert 0.02 < arrays[0].std() < 0.05  # 1/√784: a 784-wide layer does not saturate
    assert random_arguments(types, seed=0)[-1].shape[0] == 4  # symbols default to 4


def test_exported_from_the_package():
    assert gc.check_grad is check_grad


def test_parameters_left_out_are_constants_not_gradients():
    """By default every argument given is checked; a trailing default stays a Python constant."""
    def summed(x: gc.f32[3, 2], axis=0):
        return gc.sum(gc.sum(x * x, axis=axis) ** 2)
    assert list(check_grad(summed).errors) == ["x"]

    def scaled(x, W, scale=2.0):
        return gc.sum(x @ W) * scale
    assert list(check_grad(scaled, np.ones((2, 3)), np.ones((3, 4))).errors) == ["x", "W"]
