"""Lowered.profile: each step of a compiled call timed inside native code."""
from __future__ import annotations

import numpy as np
import pytest

import gradc as gc
from tests import models


def test_every_kernel_is_a_step_and_the_steps_fit_in_the_call():
    args = models.seed_args(np.float32, batch=96)
    step = gc.value_and_grad(models.seed_loss, wrt=("U", "V"))
    lowered = step.lower(*args)
    result = lowered.profile(*args, calls=30)
    kernels = lowered.fusion.kernels
    names = [s.name for s in result.steps]
    assert [n for n in names if "." not in n] == [k.name for k in kernels]
    assert result.calls == 30 and all(s.seconds > 0 for s in result.steps)
    # the steps run inside the call: together never longer than it (clocks agree to a microsecond)
    assert sum(s.seconds for s in result.steps) <= result.wall + 1e-6
    text = str(result)
    assert all(name in text for name in names) and "boundary" in text


def test_gemm_steps_count_2mnk_operations():
    a, b = np.ones((40, 30)), np.ones((30, 20))
    result = gc.jit(lambda a, b: gc.tanh(a @ b)).lower(a, b).profile(a, b, calls=5)
    (only,) = result.steps
    assert only.kind == "matmul" and only.flops == 2 * 40 * 30 * 20 and only.ops == "matmul, tanh"


def test_the_profiled_compilation_computes_what_the_plain_one_does():
    args = models.mlp_args(np.float32, batch=17)
    step = gc.value_and_grad(models.mlp_xent, wrt=tuple(range(6)))
    lowered = step.lower(*args)
    plain = lowered.native(*args)
    lowered.profile(*args, calls=3)
    profiled = lowered._profiled(*args)
    assert all(p.tobytes() == q.tobytes() for p, q in zip(plain, profiled))


def test_symbolic_dims_and_the_plain_function_cannot_profile():
    @gc.jit
    def affine(W: gc.f64["M", "K"], x: gc.f64["B", "K"]):
        return x @ W.T
    W, x = np.ones((5, 3)), np.ones((7, 3))
    result = affine.lower().profile(W, x, calls=4)
    assert result.steps[0].flops == 2 * 7 * 5 * 3
    with pytest.raises(RuntimeError, match="profile=True"):
        affine.lower().native.step_times()


def test_an_annotated_function_profiles_on_random_arguments():
    """As `gradc profile` does: no arrays needed, symbolic dims from `dims`."""
    result = gc.value_and_grad(models.seed_annotated, wrt=("U", "V")).lower().profile(dims={"B": 33}, calls=3)
    k0 = next(s for s in result.steps if s.name == "k0")
    assert result.calls == 3 and k0.flops == 2 * 33 * 8 * 5  # x @ U.T: B x 5 times 5 x 8
