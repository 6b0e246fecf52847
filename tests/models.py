"""Model definitions shared by the front-end, text, pass and runtime tests, with numpy references."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

import gradc as gc

EXAMPLE_MODELS = Path(__file__).resolve().parents[1] / "examples" / "models"


def load_example(name: str):
    """The `loss` function of examples/models/<name>.py, as the gradc command line loads it."""
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLE_MODELS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.loss


# --- the seed network ---------------------------------------------------------------------------

def seed_loss(U, V, x, y):
    f = x @ U.T
    g = gc.sigmoid(f)
    h = g @ V.T
    return gc.mean((h - y) ** 2)


def seed_annotated(U: gc.f32[8, 5], V: gc.f32[3, 8], x: gc.f32["B", 5], y: gc.f32["B", 3]):
    f = x @ U.T
    g = gc.sigmoid(f)
    h = g @ V.T
    return gc.mean((h - y) ** 2)


def seed_single(U, V, x, y):
    """One sample: x is 1-D, so U @ x and V @ g are matrix-vector products."""
    g = gc.sigmoid(U @ x)
    h = V @ g
    return gc.mean((h - y) ** 2)


def sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


def seed_reference(U, V, x, y):
    """The seed loss and its gradients (dU, dV) derived by hand, in numpy."""
    f = x @ U.T
    g = sigmoid(f)
    h = g @ V.T
    dh = 2.0 * (h - y) / h.size
    dV = dh.T @ g
    dU = ((dh @ V) * g * (1.0 - g)).T @ x
    return np.mean((h - y) ** 2), dU, dV


def seed_args(dtype=np.float64, batch=4, seed=0):
    r = np.random.default_rng(seed)
    return tuple(r.standard_normal(s).astype(dtype) for s in ((8, 5), (3, 8), (batch, 5), (batch, 3)))


# --- a 3-layer MLP with biases ----------------------------------------------------------------------

def mlp_logits(W1, b1, W2, b2, W3, b3, x):
    h1 = gc.tanh(x @ W1 + b1)
    h2 = gc.sigmoid(h1 @ W2 + b2)
    return h2 @ W3 + b3


def mlp_xent(W1, b1, W2, b2, W3, b3, x, t):
    logits = mlp_logits(W1, b1, W2, b2, W3, b3, x)
    return gc.softmax_cross_entropy(logits, t)


def mlp_mse(W1, b1, W2, b2, W3, b3, x, t):
    out = mlp_logits(W1, b1, W2, b2, W3, b3, x)
    return gc.mse(out, t)


def np_mlp_logits(W1, b1, W2, b2, W3, b3, x):
    h1 = np.tanh(x @ W1 + b1)
    h2 = sigmoid(h1 @ W2 + b2)
    return h2 @ W3 + b3


def np_mlp_xent(W1, b1, W2, b2, W3, b3, x, t):
    z = np_mlp_logits(W1, b1, W2, b2, W3, b3, x)
    z = z - z.max(-1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
    return -(t * logp).sum(-1).mean()


def np_mlp_mse(W1, b1, W2, b2, W3, b3, x, t):
    return np.mean((np_mlp_logits(W1, b1, W2, b2, W3, b3, x) - t) ** 2)


def mlp_args(dtype=np.float64, batch=7, seed=1):
    r = np.random.default_rng(seed)
    shapes = [(5, 16), (16,), (16, 8), (8,), (8, 3), (3,), (batch, 5)]
    params = [(r.standard_normal(s) * 0.5).astype(dtype) for s in shapes]
    onehot = np.eye(3, dtype=dtype)[r.integers(0, 3, batch)]
    return tuple(params) + (onehot,)


# --- an elementwise mix, symbolic dims, 1-D matmuls ---------------------------------------------------

def mix(a, b):
    u = gc.tanh(a) + gc.relu(b)
    v = gc.exp(u * 0.5) + gc.log(gc.sqrt(a * a + 1.0))
    w = gc.maximum(u, v) ** 3 + gc.maximum(a, 0.5) ** 0.5 - u ** 2 / (b * b + 2.0)
    return gc.sum(w * 0.25, axis=1).mean() + gc.logsumexp(v) + gc.max(w, axis=0).sum()


def np_mix(a, b):
    u = np.tanh(a) + np.maximum(b, 0)
    v = np.exp(u * 0.5) + np.log(np.sqrt(a * a + 1.0))
    w = np.maximum(u, v) ** 3 + np.maximum(a, 0.5) ** 0.5 - u ** 2 / (b * b + 2.0)
    m = v.max()
    return (w * 0.25).sum(axis=1).mean() + m + np.log(np.exp(v - m).sum()) + w.max(axis=0).sum()


def mix_args(dtype=np.float64, seed=2):
    r = np.random.default_rng(seed)
    return r.standard_normal((3, 4)).astype(dtype), r.standard_normal((3, 4)).astype(dtype)


def symbolic(x: gc.f64["B", 4], W: gc.f64[4, "H"], v: gc.f64["H"]):
    hidden = gc.sigmoid(x @ W)
    return gc.mean(hidden @ v) + gc.sum(gc.softmax(hidden, axis=0) * v)


def vectors(M, v):
    s = gc.sigmoid(M @ v)
    return gc.sum(s @ M) + v @ v


def np_vectors(M, v):
    return np.sum(sigmoid(M @ v) @ M) + v @ v


def vectors_args(dtype=np.float64, seed=3):
    r = np.random.default_rng(seed)
    return r.standard_normal((3, 3)).astype(dtype), r.standard_normal(3).astype(dtype)


def symbolic_args(batch=5, hidden=6, seed=4):
    r = np.random.default_rng(seed)
    return r.standard_normal((batch, 4)), r.standard_normal((4, hidden)), r.standard_normal(hidden)


def lowered_models():
    """(name, Lowered) for every model above, differentiated with respect to all its float inputs."""
    return [
        ("seed", gc.value_and_grad(seed_loss, wrt=("U", "V")).lower(*seed_args())),
        ("seed_symbolic", gc.value_and_grad(seed_annotated, wrt=("U", "V")).lower()),
        ("seed_single", gc.value_and_grad(seed_single, wrt=(0, 1)).lower(*single_args())),
        ("mlp_xent", gc.value_and_grad(mlp_xent, wrt=tuple(range(7))).lower(*mlp_args())),
        ("mlp_mse", gc.value_and_grad(mlp_mse, wrt=tuple(range(6))).lower(*mlp_args())),
        ("mix", gc.value_and_grad(mix, wrt=(0, 1)).lower(*mix_args())),
        ("symbolic", gc.value_and_grad(symbolic, wrt=(0, 1, 2)).lower()),
        ("vectors", gc.value_and_grad(vectors, wrt=(0, 1)).lower(*vectors_args())),
    ]


def single_args(dtype=np.float64, seed=5):
    r = np.random.default_rng(seed)
    return tuple(r.standard_normal(s).astype(dtype) for s in ((8, 5), (3, 8), (5,), (3,)))


def example_inputs(name):
    """Concrete arrays for the inputs of lowered_models()[name]."""
    return {"seed": seed_args, "seed_symbolic": lambda: seed_args(np.float32, batch=6),
            "seed_single": single_args, "mlp_xent": mlp_args, "mlp_mse": mlp_args, "mix": mix_args,
            "symbolic": symbolic_args, "vectors": vectors_args}[name]()


def finite_difference(f, args, index, eps=1e-6):
    """Central differences of the scalar numpy function f with respect to args[index] (float64)."""
    args = [np.array(a, dtype=np.float64) for a in args]
    grad = np.zeros_like(args[index])
    for i in np.ndindex(grad.shape):
        plus, minus = [a.copy() for a in args], [a.copy() for a in args]
        plus[index][i] += eps
        minus[index][i] -= eps
        grad[i] = (f(*plus) - f(*minus)) / (2 * eps)
    return grad


# --- random graphs for property tests ---------------------------------------------------------------

def random_graphs(smooth: bool = False, dtypes=("f32", "f64"), max_ops: int = 12, symbolic: bool = True):
    """A hypothesis strategy of random valid graphs: DAGs of elementwise, matmul, transpose, reduce,
    reshape and broadcast ops over 1-3 inputs with small (partly size-1, partly symbolic "B") dims.
    Values stay bounded:
    exp, log, sqrt, pow and div read squashed operands. `smooth` leaves out the ops whose derivative
    jumps (relu, maximum, max, comparisons) and stop_gradient, for finite-difference checks."""
    from hypothesis import strategies as st

    from gradc.ir import Builder, Graph, TensorType
    from gradc.ir.types import ShapeError, broadcast_shapes

    kinds = ["unary", "unary", "binary", "binary", "const_binary", "matmul", "matmul", "transpose",
             "reduce", "reshape", "broadcast", "const"]
    unary = ["neg", "tanh", "sigmoid", "exp", "log", "sqrt", "pow"] + \
        ([] if smooth else ["relu", "stop_gradient"])
    binary = ["add", "sub", "mul", "div"] + ([] if smooth else ["maximum", "gt", "eq"])

    @st.composite
    def build(draw):
        dtype = draw(st.sampled_from(dtypes))
        dim = st.sampled_from([1, 2, 3, 4] + (["B"] if symbolic else []))
        graph = Graph("random")
        b = Builder(graph)
        pool = []
        for i in range(draw(st.integers(1, 3))):
            shape = tuple(draw(st.lists(dim, min_size=draw(st.sampled_from([0, 1, 2, 2])), max_size=2)))
            pool.append(b.wrap(graph.add_input(f"in{i}", TensorType(dtype, shape))))
        for _ in range(draw(st.integers(min(4, max_ops), max_ops))):
            x = draw(st.sampled_from(pool))
            kind = draw(st.sampled_from(kinds))
            y = None
            if kind == "const":
                y = b.const(draw(st.sampled_from([0.0, 1.0, 2.0, -0.5])), dtype)
            elif kind == "unary":
                name = draw(st.sampled_from(unary))
                if name == "exp":
                    y = b.op("exp", b.op("tanh", x))
                elif name in ("log", "sqrt"):
                    y = b.op(name, b.op("sigmoid", x))
                elif name == "pow":
                    y = b.op("tanh", x) ** draw(st.sampled_from([1.0, 2.0, 3.0, 0.0]))
                else:
                    y = b.op(name, x)
            elif kind in ("binary", "const_binary"):
                name = draw(st.sampled_from(binary))
                if kind == "const_binary":
                    other = b.const(draw(st.sampled_from([0.0, 1.0, 2.0, -0.5])), dtype)
                else:
                    ok = [p for p in pool if _broadcasts(broadcast_shapes, ShapeError, x.shape, p.shape)]
                    other = draw(st.sampled_from(ok))
                if name == "div":  # a squashed denominator, never the other way round (1 / 0.0)
                    other = b.op("exp", b.op("tanh", other))
                y = b.op(name, x, other) if draw(st.booleans()) or kind == "const_binary" or name == "div" \
                    else b.op(name, other, x)
            elif kind == "matmul" and x.ndim == 2:
                # x @ p, x @ p.T, x.T @ p: whichever contractions the pool allows
                options = [(p, ta, tb) for p in pool if p.ndim == 2 for ta in (False, True)
                           for tb in (False, True) if x.shape[0 if ta else 1] == p.shape[1 if tb else 0]]
                if options:
                    p, ta, tb = draw(st.sampled_from(options))
                    y = (x.T if ta else x) @ (p.T if tb else p)
            elif kind == "transpose" and x.ndim == 2:
                y = x.T
            elif kind == "reduce" and x.ndim >= 1:
                axes = tuple(draw(st.lists(st.sampled_from(range(x.ndim)), min_size=1, unique=True)))
                keepdims = draw(st.booleans())
                method = draw(st.sampled_from(["sum", "mean"] if smooth else ["sum", "mean", "max"]))
                y = getattr(x, method)(axes, keepdims)
            elif kind == "reshape" and all(isinstance(d, int) for d in x.shape):
                size = int(np.prod(x.shape))
                y = x.reshape(draw(st.sampled_from([(size,), (1, size), (size, 1)])))
            elif kind == "broadcast" and x.ndim <= 1:
                y = x.broadcast_to((draw(st.sampled_from([1, 2, 3])),) + tuple(x.shape))
            if y is not None:
                pool.append(y)
        outputs = [pool[-1]] + draw(st.lists(st.sampled_from(pool), max_size=2))
        graph.outputs = [o.value for o in outputs]
        return graph

    return build()


def _broadcasts(broadcast_shapes, error, a, b):
    try:
        broadcast_shapes(a, b)
        return True
    except error:
        return False


def random_inputs(graph, seed=0, B=3):
    """Normal random arrays for the graph's inputs, with the symbolic dim B bound to `B`."""
    r = np.random.default_rng(seed)
    return [r.standard_normal(tuple(B if d == "B" else d for d in v.type.shape)).astype(v.type.np_dtype)
            for v in graph.inputs]


def with_scalar_loss(graph):
    """A copy of the graph whose first output is the sum of its first output (a scalar loss)."""
    from gradc.ir import Builder

    graph = graph.clone()
    loss = Builder(graph).wrap(graph.outputs[0]).sum()
    graph.outputs = [loss.value] + graph.outputs
    return graph
