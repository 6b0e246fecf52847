"""A 3-layer MLP with biases (ReLU, tanh) and a softmax cross-entropy loss over one-hot targets t.

    gradc explain examples/models/mlp3.py:loss
"""
import gradc as gc


def loss(W1: gc.f32[64, 784], b1: gc.f32[64], W2: gc.f32[32, 64], b2: gc.f32[32],
         W3: gc.f32[10, 32], b3: gc.f32[10], x: gc.f32["B", 784], t: gc.f32["B", 10]):
    a1 = x @ W1.T + b1
    h1 = gc.relu(a1)
    a2 = h1 @ W2.T + b2
    h2 = gc.tanh(a2)
    z = h2 @ W3.T + b3
    return gc.softmax_cross_entropy(z, t)
