"""A binary classifier: a hidden layer with a leaky ReLU written with gc.where, and the binary
cross-entropy of the logits z, softplus(z) - y z, finite at any z (log(sigmoid(z)) is not).
`slope` has a default and no annotation: a Python constant while tracing.

    gradc check examples/models/logistic.py:loss --dim B=16
"""
import gradc as gc


def loss(W1: gc.f32[32, 20], b1: gc.f32[32], w2: gc.f32[32], x: gc.f32["B", 20], y: gc.f32["B"],
         slope=0.01):
    a = x @ W1.T + b1
    h = gc.where(a > 0, a, slope * a)
    z = h @ w2
    return gc.mean(gc.softplus(z) - y * z)
