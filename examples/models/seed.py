"""The seed network: x -> f = U x -> g = sigmoid(f) -> h = V g -> L = mean((h - y)^2), batched.

    gradc explain examples/models/seed.py:loss --wrt U,V
"""
import gradc as gc


def loss(U: gc.f32[32, 64], V: gc.f32[10, 32], x: gc.f32["B", 64], y: gc.f32["B", 10]):
    f = x @ U.T  # a batch of row vectors: f = (U xᵀ)ᵀ
    g = gc.sigmoid(f)
    h = g @ V.T
    return gc.mean((h - y) ** 2)
