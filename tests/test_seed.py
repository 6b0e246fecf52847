"""The seed network, its gradients against the hand-derived formulas, and the loss-function variants."""
from __future__ import annotations

import numpy as np
import pytest

import gradc as gc
import models
from models import finite_difference, seed_args, seed_reference

TOL = {np.float32: dict(rtol=2e-4, atol=2e-6), np.float64: dict(rtol=1e-10, atol=1e-12)}


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_seed_gradients_match_hand_derived_formulas(dtype):
    U, V, x, y = seed_args(dtype)
    step = gc.value_and_grad(models.seed_loss, wrt=("U", "V"))
    L, (dU, dV) = step(U, V, x, y)
    L_ref, dU_ref, dV_ref = seed_reference(*(a.astype(np.float64) for a in (U, V, x, y)))
    assert L.dtype == dU.dtype == dV.dtype == dtype
    assert L.shape == () and dU.shape == U.shape and dV.shape == V.shape
    np.testing.assert_allclose(L, L_ref, **TOL[dtype])
    np.testing.assert_allclose(dU, dU_ref, **TOL[dtype])
    np.testing.assert_allclose(dV, dV_ref, **TOL[dtype])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_seed_gradient_formulas_in_the_same_precision(dtype):
    """The formulas evaluated in `dtype` itself, as the issue states them (dh = 2(h-y)/N)."""
    U, V, x, y = seed_args(dtype, batch=16, seed=7)
    f = x @ U.T
    g = (1 / (1 + np.exp(-f))).astype(dtype)
    h = g @ V.T
    dh = 2 * (h - y) / h.size
    dV, dU = dh.T @ g, ((dh @ V) * g * (1 - g)).T @ x
    _, (gU, gV) = gc.value_and_grad(models.seed_loss, wrt=("U", "V"))(U, V, x, y)
    assert gU.dtype == gV.dtype == dV.dtype == dtype
    tol = TOL[np.float32] if dtype == np.float32 else dict(rtol=1e-9, atol=1e-15)
    np.testing.assert_allclose(gU, dU, **tol)
    np.testing.assert_allclose(gV, dV, **tol)


def test_seed_annotated_symbolic_batch_compiles_once():
    step = gc.value_and_grad(models.seed_annotated, wrt=("U", "V"))
    for batch in (4, 11, 4):
        args = seed_args(np.float32, batch=batch, seed=batch)
        L, (dU, dV) = step(*args)
        L_ref, dU_ref, dV_ref = seed_reference(*(a.astype(np.float64) for a in args))
        np.testing.assert_allclose(L, L_ref, **TOL[np.float32])
        np.testing.assert_allclose(dU, dU_ref, **TOL[np.float32])
        np.testing.assert_allclose(dV, dV_ref, **TOL[np.float32])
    assert len(step._cache) == 1
    (lowered, _), = step._cache.values()
    assert "f32[B,5]" in lowered.as_text("traced")


def test_seed_annotated_rejects_a_second_dtype():
    step = gc.value_and_grad(models.seed_annotated, wrt=("U", "V"))
    with pytest.raises(TypeError, match=r"argument 'U'.*float32.*float64"):
        step(*seed_args(np.float64))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_single_sample_form_with_1d_x(dtype):
    r = np.random.default_rng(3)
    U, V = r.standard_normal((8, 5)).astype(dtype), r.standard_normal((3, 8)).astype(dtype)
    x, y = r.standard_normal(5).astype(dtype), r.standard_normal(3).astype(dtype)

    @gc.jit
    def forward(U, V, x):
        return V @ gc.sigmoid(U @ x)

    g = 1 / (1 + np.exp(-(U.astype(np.float64) @ x)))
    h = V.astype(np.float64) @ g
    out = forward(U, V, x)
    assert out.shape == (3,) and out.dtype == dtype
    np.testing.assert_allclose(out, h, **TOL[dtype])

    L, (dU, dV) = gc.value_and_grad(models.seed_single, wrt=("U", "V"))(U, V, x, y)
    dh = 2 * (h - y) / h.size
    np.testing.assert_allclose(L, np.mean((h - y) ** 2), **TOL[dtype])
    np.testing.assert_allclose(dV, np.outer(dh, g), **TOL[dtype])
    np.testing.assert_allclose(dU, np.outer((V.T @ dh) * g * (1 - g), x), **TOL[dtype])


def test_single_sample_annotated():
    @gc.jit
    def single(U: gc.f32[8, 5], V: gc.f32[3, 8], x: gc.f32[5]):
        return V @ gc.sigmoid(U @ x)

    U, V, x, _ = seed_args(np.float32)
    np.testing.assert_allclose(single(U, V, x[0]), V @ models.sigmoid(U @ x[0]), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("loss, np_loss", [(models.mlp_xent, models.np_mlp_xent),
                                           (models.mlp_mse, models.np_mlp_mse)],
                         ids=["softmax_cross_entropy", "mse"])
def test_mlp_with_biases_against_finite_differences(loss, np_loss):
    args = models.mlp_args(np.float64)
    if loss is models.mlp_mse:
        args = args[:-1] + (np.random.default_rng(9).standard_normal(args[-1].shape),)
    wrt = tuple(range(7))  # every weight and bias, and the input x
    L, grads = gc.value_and_grad(loss, wrt=wrt)(*args)
    np.testing.assert_allclose(L, np_loss(*args), rtol=1e-12)
    assert len(grads) == len(wrt)
    for i, g in zip(wrt, grads):
        assert g.shape == args[i].shape
        np.testing.assert_allclose(g, finite_difference(np_loss, args, i), rtol=1e-5, atol=1e-8,
                                   err_msg=f"gradient {i}")


def test_mlp_float32_matches_float64():
    args64 = models.mlp_args(np.float64)
    args32 = tuple(a.astype(np.float32) for a in args64)
    step = gc.value_and_grad(models.mlp_xent, wrt=(0, 1, 2, 3, 4, 5))
    L32, g32 = step(*args32)
    L64, g64 = step(*args64)
    assert L32.dtype == np.float32 and all(g.dtype == np.float32 for g in g32)
    np.testing.assert_allclose(L32, L64, rtol=1e-5)
    for a, b in zip(g32, g64):
        np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-6)


def test_softmax_cross_entropy_is_stable_for_large_logits():
    @gc.value_and_grad
    def loss(z, t):
        return gc.softmax_cross_entropy(z, t)

    z = np.array([[1000.0, 0.0, -1000.0], [5.0, 5.0, 5.0]])
    t = np.eye(3)[[0, 1]]
    L, dz = loss(z, t)
    assert np.isfinite(L) and np.all(np.isfinite(dz))
    np.testing.assert_allclose(L, (0.0 + np.log(3.0)) / 2, rtol=1e-12)
    softmax = np.array([[1.0, 0.0, 0.0], [1 / 3, 1 / 3, 1 / 3]])
    np.testing.assert_allclose(dz, (softmax - t) / 2, atol=1e-12)
