"""The seed network x -> f = U x -> g = sigmoid(f) -> h = V g -> L = mean((h - y)^2), end to end.

Prints the IR of the traced, grad, optimized and llvm stages, checks the compiled gradients against the hand-derived matrix
calculus once, then trains a few steps of SGD on synthetic data with the compiled gradients.
"""
from __future__ import annotations

import numpy as np

import gradc as gc


def loss(U: gc.f32[32, 64], V: gc.f32[10, 32], x: gc.f32["B", 64], y: gc.f32["B", 10]):
    f = x @ U.T  # a batch of row vectors: f = (U xᵀ)ᵀ
    g = gc.sigmoid(f)
    h = g @ V.T
    return gc.mean((h - y) ** 2)


def numpy_gradients(U, V, x, y):
    """The by-hand answer: dV = dhᵀ g, dU = (dh V ⊙ g ⊙ (1 − g))ᵀ x, with dh = 2 (h − y) / N."""
    g = 1 / (1 + np.exp(-(x @ U.T)))
    h = g @ V.T
    dh = 2 * (h - y) / h.size
    return np.mean((h - y) ** 2), (dh @ V * g * (1 - g)).T @ x, dh.T @ g


def main(steps: int = 30, show_stages: tuple[str, ...] = ("traced", "grad", "optimized", "llvm")) -> list[float]:
    rng = np.random.default_rng(0)
    U = (rng.standard_normal((32, 64)) * 0.3).astype(np.float32)
    V = (rng.standard_normal((10, 32)) * 0.3).astype(np.float32)
    teacher = rng.standard_normal((10, 64)).astype(np.float32) * 0.2
    x = rng.standard_normal((256, 64)).astype(np.float32)
    y = np.tanh(x @ teacher.T).astype(np.float32)

    step = gc.value_and_grad(loss, wrt=("U", "V"))
    lowered = step.lower()  # compiled from the annotations: one artifact for every batch size B
    for stage in show_stages:
        text = lowered.as_text(stage)
        lines = text.splitlines()
        print(f"==== stage: {stage} ({len(lines)} lines) ====")
        print("\n".join(lines[:60]) + ("\n  ..." if len(lines) > 60 else ""))

    L, (dU, dV) = step(U, V, x, y)
    L_ref, dU_ref, dV_ref = numpy_gradients(U.astype(np.float64), V.astype(np.float64), x.astype(np.float64), y)
    err = max(np.abs(dU - dU_ref).max() / np.abs(dU_ref).max(), np.abs(dV - dV_ref).max() / np.abs(dV_ref).max())
    print(f"\ngradients vs the hand-derived numpy formulas: max relative error {err:.2e}")
    assert err < 1e-4, "compiled gradients disagree with the hand-derived formulas"

    losses = []
    for i in range(steps):
        batch = slice((i * 64) % 256, (i * 64) % 256 + 64)
        L, (dU, dV) = step(U, V, x[batch], y[batch])
        U -= 0.5 * dU
        V -= 0.5 * dV
        losses.append(float(L))
        if i % 5 == 0 or i == steps - 1:
            print(f"step {i:3d}  loss {L:.5f}")
    print(f"loss fell from {losses[0]:.5f} to {losses[-1]:.5f}")
    return losses


if __name__ == "__main__":
    main()
