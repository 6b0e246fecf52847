"""Numerical robustness of the compiled code.

* sigmoid, softmax, log_softmax, logsumexp and softmax_cross_entropy at inputs of ±1000 (and
  mixed rows like [-1000, 0, 1000]) give finite values and finite gradients in float32 and
  float64, matching stable numpy formulas written out here;
* NaN propagation and ±inf behaviour of exp, log, tanh, sigmoid, relu and maximum (and the
  reductions built on maximum and add) in compiled code match numpy.
"""
from __future__ import annotations

import math

import numpy as np
import pytest

import gradc as gc

DTYPES = [np.float32, np.float64]
TOL = {np.float32: dict(rtol=2e-6, atol=1e-6), np.float64: dict(rtol=1e-13, atol=1e-14)}

# rows far apart, mixed, tied at the top, and ordinary
EXTREME = np.array([
    [-1000.0, 0.0, 1000.0, 3.0],
    [1000.0, 1000.0, -1000.0, 999.0],
    [-1000.0, -1000.0, -1000.0, -1000.0],
    [1000.0, 999.0, 998.0, 1000.0],
    [-1000.0, -999.5, -1001.0, -1000.0],
    [0.5, -0.25, 2.0, -1.5],
])


# --- stable numpy references (computed in float64) ------------------------------------------------

def np_sigmoid(x):
    z = np.exp(-np.abs(x))
    return np.where(x >= 0, 1.0 / (1.0 + z), z / (1.0 + z))


def np_logsumexp(x, axis, keepdims=False):
    m = np.max(x, axis=axis, keepdims=True)
    out = m + np.log(np.sum(np.exp(x - m), axis=axis, keepdims=True))
    return out if keepdims else np.squeeze(out, axis=axis)


def np_softmax(x, axis):
    e = np.exp(x - np.max(x, axis=axis, keepdims=True))
    return e / np.sum(e, axis=axis, keepdims=True)


def np_log_softmax(x, axis):
    return x - np_logsumexp(x, axis, keepdims=True)


def check(actual, expected, dtype, what, scale=None):
    """Finite, and close to the float64 reference; `scale` (the sum of the magnitudes of the terms
    a reduced value adds up) widens atol for sums whose terms cancel."""
    actual = np.asarray(actual)
    assert actual.dtype == dtype, what
    assert np.all(np.isfinite(actual)), f"{what}: not finite: {actual}"
    tol = dict(TOL[dtype])
    if scale is not None:
        tol["atol"] = max(tol["atol"], tol["rtol"] * scale)
    np.testing.assert_allclose(actual, expected.astype(dtype), err_msg=what, **tol)


# --- compiled functions (gradc caches the native code per signature, so the tests share it) ----

def _sigmoid_loss(x, w):
    return gc.sum(w * gc.sigmoid(x))


def _softmax_loss(x, w):
    return gc.sum(w * gc.softmax(x, -1))


def _softmax0_loss(x, w):
    return gc.sum(w * gc.softmax(x, 0))


def _log_softmax_loss(x, w):
    return gc.sum(w * gc.log_softmax(x, -1))


def _logsumexp_loss(x, w):
    return gc.sum(w * gc.logsumexp(x, -1))


def _logsumexp_all_loss(x, w):
    return w * gc.logsumexp(x)


def _softplus_loss(x, w):
    return gc.sum(w * gc.softplus(x))


def _xent(logits, onehot):
    return gc.softmax_cross_entropy(logits, onehot)


VALUE_AND_GRAD = {name: gc.value_and_grad(fn, wrt=0) for name, fn in [
    ("sigmoid", _sigmoid_loss), ("softmax", _softmax_loss), ("softmax0", _softmax0_loss),
    ("log_softmax", _log_softmax_loss), ("logsumexp", _logsumexp_loss),
    ("logsumexp_all", _logsumexp_all_loss), ("softplus", _softplus_loss), ("xent", _xent)]}
JIT = {
    "sigmoid": gc.jit(lambda x: gc.sigmoid(x)),
    "softmax": gc.jit(lambda x: gc.softmax(x, -1)),
    "softmax0": gc.jit(lambda x: gc.softmax(x, 0)),
    "log_softmax": gc.jit(lambda x: gc.log_softmax(x, -1)),
    "logsumexp": gc.jit(lambda x: gc.logsumexp(x, -1)),
    "logsumexp_keep": gc.jit(lambda x: gc.logsumexp(x, -1, keepdims=True)),
    "logsumexp_all": gc.jit(lambda x: gc.logsumexp(x)),
    "softplus": gc.jit(lambda x: gc.softplus(x)),
}


def _weights(shape, dtype, seed=0):
    return np.random.default_rng(seed).uniform(-1.0, 1.0, shape).astype(dtype)


# float64 references: (the value f(x), the gradient of loss(x, w) = sum(w * f(x)) with respect to x, the loss)
REFERENCES = {
    "sigmoid": (np_sigmoid,
                lambda x, w: w * np_sigmoid(x) * (1 - np_sigmoid(x)),
                lambda x, w: np.sum(w * np_sigmoid(x))),
    "softmax": (lambda x: np_softmax(x, -1),
                lambda x, w: np_softmax(x, -1) * (w - np.sum(w * np_softmax(x, -1), -1, keepdims=True)),
                lambda x, w: np.sum(w * np_softmax(x, -1))),
    "softmax0": (lambda x: np_softmax(x, 0),
                 lambda x, w: np_softmax(x, 0) * (w - np.sum(w * np_softmax(x, 0), 0, keepdims=True)),
                 lambda x, w: np.sum(w * np_softmax(x, 0))),
    "log_softmax": (lambda x: np_log_softmax(x, -1),
                    lambda x, w: w - np_softmax(x, -1) * np.sum(w, -1, keepdims=True),
                    lambda x, w: np.sum(w * np_log_softmax(x, -1))),
    "logsumexp": (lambda x: np_logsumexp(x, -1),
                  lambda x, w: w[..., None] * np_softmax(x, -1),
                  lambda x, w: np.sum(w * np_logsumexp(x, -1))),
    "logsumexp_all": (lambda x: np_logsumexp(x, None),
                      lambda x, w: w * np_softmax(x.ravel(), 0).reshape(x.shape),
                      lambda x, w: w * np_logsumexp(x, None)),
    "softplus": (lambda x: np.logaddexp(x, 0.0),
                 lambda x, w: w * np_sigmoid(x),
                 lambda x, w: np.sum(w * np.logaddexp(x, 0.0))),
}
W_SHAPE = {"logsumexp": lambda s: s[:-1], "logsumexp_all": lambda s: ()}

INPUTS = {
    "extreme-rows": EXTREME,
    "plus-minus-1000": np.array([[1000.0, -1000.0], [-1000.0, 1000.0], [1000.0, 1000.0], [-1000.0, -1000.0]]),
    "1d-mixed": np.array([-1000.0, 0.0, 1000.0]),
}


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("inputs", list(INPUTS), ids=list(INPUTS))
@pytest.mark.parametrize("name", list(REFERENCES))
def test_extreme_inputs_finite_values_and_gradients(name, inputs, dtype):
    x = INPUTS[inputs].astype(dtype)
    value_ref, grad_ref, loss_ref = REFERENCES[name]
    x64 = x.astype(np.float64)
    # forward, from gc.jit
    check(JIT[name](x), value_ref(x64), dtype, f"{name} value")
    # value and gradient of sum(w * f(x)), from gc.value_and_grad
    w = _weights(W_SHAPE.get(name, lambda s: s)(x.shape), dtype)
    loss, dx = VALUE_AND_GRAD[name](x, w)
    w64 = w.astype(np.float64)
    terms = np.abs(w64) * np.abs(value_ref(x64)) if name != "logsumexp_all" else None
    check(loss, np.asarray(loss_ref(x64, w64)), dtype, f"{name} loss",
          scale=None if terms is None else float(np.sum(terms)))
    check(dx, grad_ref(x64, w64), dtype, f"{name} gradient")


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
def test_logsumexp_keepdims_extreme(dtype):
    x = EXTREME.astype(dtype)
    check(JIT["logsumexp_keep"](x), np_logsumexp(EXTREME, -1, keepdims=True), dtype, "logsumexp keepdims")


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("scale", [1.0, 1000.0], ids=["moderate", "pm1000"])
def test_softmax_cross_entropy_extreme(dtype, scale):
    rng = np.random.default_rng(4)
    logits64 = np.round(rng.uniform(-1.0, 1.0, (5, 4))) * scale  # entries in {-scale, 0, scale}
    logits64[0] = [-1000.0, 0.0, 1000.0, 1000.0]
    logits = logits64.astype(dtype)
    labels = np.array([0, 2, 1, 3, 0])  # row 0's label sits at -1000 below the max: loss 2000
    onehot = np.eye(4, dtype=dtype)[labels]
    loss, dlogits = VALUE_AND_GRAD["xent"](logits, onehot)
    lsm = np_log_softmax(logits64, -1)
    expected_loss = -np.mean(np.sum(onehot * lsm, -1))
    expected_grad = (np_softmax(logits64, -1) - onehot) / logits.shape[0]
    check(loss, np.asarray(expected_loss), dtype, "xent loss", scale=float(np.mean(np.abs(onehot * lsm).sum(-1))))
    check(dlogits, expected_grad, dtype, "xent gradient")
    if scale == 1000.0:
        assert float(loss) > 300.0  # the -1000 logit's label: a huge but finite loss


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
def test_sigmoid_saturates_without_overflow(dtype):
    x = np.array([-1000.0, -100.0, -40.0, -20.0, 0.0, 20.0, 40.0, 100.0, 1000.0], dtype)
    s = JIT["sigmoid"](x)
    assert np.all(np.isfinite(s))
    assert s[0] == 0.0 and s[-1] == 1.0 and s[4] == 0.5
    # the lower tail keeps relative accuracy (1 - 1/(1+e^x) would cancel to 0)
    np.testing.assert_allclose(s[1:4], np_sigmoid(x[1:4].astype(np.float64)).astype(dtype),
                               rtol=4 * np.finfo(dtype).eps, atol=2 * np.finfo(dtype).smallest_subnormal)
    assert np.all(np.diff(s) >= 0)


# --- special values: NaN and ±inf, compiled vs numpy ----------------------------------------------

def special_values(dtype):
    info = np.finfo(dtype)
    # exp overflows to inf / underflows to 0 / is just above the normal range / is subnormal
    overflow, zero, normal, subnormal = (89.0, -110.0, -87.0, -100.0) if dtype == np.float32 else \
        (710.0, -760.0, -708.0, -740.0)
    return np.array([np.nan, -np.nan, np.inf, -np.inf, 0.0, -0.0, 1.0, -1.0, 0.5, -2.5,
                     info.tiny, info.tiny / 4, -info.tiny, info.max, -info.max,
                     overflow, -overflow, zero, normal, subnormal, 20.0, -20.0, 1e-8, -1e-8], dtype)


def assert_same_special(actual, expected, dtype, what):
    """Same NaN positions, same infinities, same signs of zero; finite values within a few ULP."""
    expected = expected.astype(dtype)
    assert actual.dtype == expected.dtype and actual.shape == expected.shape, what
    np.testing.assert_array_equal(np.isnan(actual), np.isnan(expected), err_msg=f"{what}: NaN positions")
    np.testing.assert_array_equal(np.isposinf(actual), np.isposinf(expected), err_msg=f"{what}: +inf")
    np.testing.assert_array_equal(np.isneginf(actual), np.isneginf(expected), err_msg=f"{what}: -inf")
    finite = np.isfinite(expected)
    # a few ULP, and 2 units in the last place of a subnormal result
    np.testing.assert_allclose(actual[finite], expected[finite], rtol=4 * np.finfo(dtype).eps,
                               atol=2 * np.finfo(dtype).smallest_subnormal, err_msg=what)
    zero = finite & (expected == 0)
    np.testing.assert_array_equal(np.signbit(actual[zero]), np.signbit(expected[zero]),
                                  err_msg=f"{what}: sign of zero")


UNARY_SPECIAL = {
    "exp": (gc.jit(lambda x: gc.exp(x)), np.exp),
    "log": (gc.jit(lambda x: gc.log(x)), np.log),
    "tanh": (gc.jit(lambda x: gc.tanh(x)), np.tanh),
    "sigmoid": (gc.jit(lambda x: gc.sigmoid(x)), None),
    "relu": (gc.jit(lambda x: gc.relu(x)), lambda x: np.maximum(x, 0)),
    "sqrt": (gc.jit(lambda x: gc.sqrt(x)), np.sqrt),
    "abs": (gc.jit(lambda x: gc.abs(x)), np.abs),
    "log1p": (gc.jit(lambda x: gc.log1p(x)), np.log1p),
}


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("name", list(UNARY_SPECIAL))
def test_unary_special_values_match_numpy(name, dtype):
    compiled, reference = UNARY_SPECIAL[name]
    x = special_values(dtype)
    with np.errstate(all="ignore"):
        if reference is None:  # sigmoid: the stable formula in float64
            expected = np_sigmoid(x.astype(np.float64)).astype(dtype)
        else:
            expected = reference(x)
    actual = compiled(x)
    if name == "relu":  # max(-0, 0): numpy keeps either zero depending on its code path
        zero = x == 0
        assert np.all(actual[zero] == 0)
        actual, expected, x = actual[~zero], expected[~zero], x[~zero]
    assert_same_special(actual, expected, dtype, name)


def _power(exponent):
    return gc.jit(lambda x: x ** exponent)


POW = {e: _power(e) for e in (2.0, 3.0, -1.0, -2.0, 0.5, -0.5, 1.5, -2.5, 1 / 3, -0.7, 0.0,
                              65.0, -65.0, 100.0, 1e30, 1e300, math.nan, math.inf, -math.inf)}


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("exponent", list(POW), ids=[f"{e:.3g}" for e in POW])
def test_pow_special_values_match_numpy(exponent, dtype):
    """NaN, ±0 (the sign of an odd power, +0 / +inf otherwise), ±inf and negative bases; integer
    exponents past square-and-multiply's 64 (odd and even), 1e300 (inf in float32), NaN and ±inf."""
    x = np.array([np.nan, np.inf, -np.inf, 0.0, -0.0, 1.0, -1.0, 4.0, -2.0, 0.5, -0.5, 1.5], dtype)
    with np.errstate(all="ignore"):
        expected = np.power(x, dtype(exponent))
    assert_same_special(POW[exponent](x), expected, dtype, f"x ** {exponent}")


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
def test_maximum_special_values_match_numpy(dtype):
    values = np.array([np.nan, np.inf, -np.inf, 0.0, 1.0, -1.0], dtype)
    a, b = np.meshgrid(values, values, indexing="ij")
    a, b = np.ascontiguousarray(a), np.ascontiguousarray(b)
    actual = gc.jit(lambda a, b: gc.maximum(a, b))(a, b)
    expected = np.maximum(a, b)
    np.testing.assert_array_equal(actual, expected)  # NaN in either operand gives NaN
    # the comparisons the gradients of maximum and relu are built from: NaN compares false
    gt = gc.jit(lambda a, b: a.builder.op("gt", a, b))(a, b)
    eq = gc.jit(lambda a, b: a.builder.op("eq", a, b))(a, b)
    np.testing.assert_array_equal(gt, (a > b).astype(dtype))
    np.testing.assert_array_equal(eq, (a == b).astype(dtype))
    # broadcasting a NaN scalar against a row, and a Python-number operand
    row = values.copy()
    nan = np.array(np.nan, dtype)
    np.testing.assert_array_equal(gc.jit(lambda r, s: gc.maximum(r, s))(row, nan), np.full(6, np.nan, dtype))
    np.testing.assert_array_equal(gc.jit(lambda r: gc.maximum(r, 0.0))(row), np.maximum(row, dtype(0)))


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
def test_minimum_where_and_comparisons_match_numpy(dtype):
    """NaN, ±inf and ±0 on either side: minimum propagates NaN, comparisons of NaN are false, and
    where(c, a, b) takes a wherever c is nonzero, NaN included."""
    values = np.array([np.nan, np.inf, -np.inf, 0.0, -0.0, 1.0, -1.0], dtype)
    a, b = (np.ascontiguousarray(v) for v in np.meshgrid(values, values, indexing="ij"))
    masks = gc.jit(lambda a, b: (a > b, a < b, a >= b, a <= b))(a, b)
    for got, want in zip(masks, (a > b, a < b, a >= b, a <= b)):
        np.testing.assert_array_equal(got, want.astype(dtype))
    np.testing.assert_array_equal(gc.jit(lambda a, b: gc.minimum(a, b))(a, b), np.minimum(a, b))
    # signed zeros as IEEE 754-2019 (and JAX): max(-0, +0) is +0 and min is -0, in either order
    z, w = np.array([0.0, -0.0, 0.0, -0.0], dtype), np.array([-0.0, 0.0, 0.0, -0.0], dtype)
    np.testing.assert_array_equal(np.signbit(gc.jit(lambda a, b: gc.maximum(a, b))(z, w)), [0, 0, 0, 1])
    np.testing.assert_array_equal(np.signbit(gc.jit(lambda a, b: gc.minimum(a, b))(z, w)), [1, 1, 0, 1])
    chosen = gc.jit(lambda c, a, b: gc.where(c, a, b))(a, a * 2, b)
    np.testing.assert_array_equal(chosen, np.where(a != 0, a * 2, b))
    np.testing.assert_array_equal(gc.jit(lambda a: gc.where(a > 0, a, 0.5))(values),
                                  np.where(values > 0, values, dtype(0.5)))


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
def test_logsumexp_of_infinite_rows_is_infinite_as_in_jax(dtype):
    """A row of -inf (fully masked) gives -inf, a row holding +inf gives +inf, NaN stays NaN; the
    max subtracted for stability would make them inf - inf = NaN."""
    x = np.array([[np.inf, 0.0, 1.0], [-np.inf, -np.inf, -np.inf], [-np.inf, 0.0, 0.0],
                  [np.nan, 1.0, 2.0], [1000.0, -1000.0, 3.0]], dtype)
    got = gc.jit(lambda x: gc.logsumexp(x, axis=1))(x)
    want = np.array([np.inf, -np.inf, np.log(2.0), np.nan, 1000.0], dtype)
    assert_same_special(got, want, dtype, "logsumexp")


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
def test_reductions_propagate_nan_and_inf(dtype):
    x = np.array([[1.0, np.nan, 3.0], [np.inf, -np.inf, 0.0], [-np.inf, -np.inf, -np.inf],
                  [np.inf, 1.0, 2.0], [-1.0, -2.0, -3.0]], dtype)
    f = gc.jit(lambda x: (gc.max(x, 1), gc.sum(x, 1), gc.max(x, 0)))
    mx, sm, mx0 = f(x)
    with np.errstate(invalid="ignore"):
        np.testing.assert_array_equal(mx, np.max(x, 1))
        np.testing.assert_array_equal(sm, np.sum(x, 1))
        np.testing.assert_array_equal(mx0, np.max(x, 0))


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
def test_nan_propagates_through_softmax_and_gradients(dtype):
    x = np.array([[0.0, np.nan, 1.0], [0.0, 1.0, 2.0]], dtype)
    w = _weights(x.shape, dtype)
    s = JIT["softmax"](x)
    assert np.all(np.isnan(s[0])) and np.all(np.isfinite(s[1]))
    np.testing.assert_allclose(s[1], np_softmax(x[1].astype(np.float64), -1).astype(dtype), **TOL[dtype])
    loss, dx = VALUE_AND_GRAD["softmax"](x, w)
    assert np.isnan(loss)
    assert np.all(np.isnan(dx[0])) and np.all(np.isfinite(dx[1]))


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
def test_relu_and_maximum_gradients_at_infinity(dtype):
    x = np.array([np.inf, -np.inf, 2.0, -2.0], dtype)
    dx = gc.grad(lambda x: gc.sum(gc.relu(x)))(x)
    np.testing.assert_array_equal(dx, np.array([1.0, 0.0, 1.0, 0.0], dtype))
    y = np.array([1.0, 1.0, 3.0, -3.0], dtype)
    da, db = gc.grad(lambda a, b: gc.sum(gc.maximum(a, b)), wrt=(0, 1))(x, y)
    np.testing.assert_array_equal(da, np.array([1.0, 0.0, 0.0, 1.0], dtype))
    np.testing.assert_array_equal(db, np.array([0.0, 1.0, 1.0, 0.0], dtype))
    # a NaN on either side chooses neither (as in JAX)
    da, db = gc.grad(lambda a, b: gc.sum(gc.maximum(a, b)), wrt=(0, 1))(np.array([-np.inf, 1.0], dtype),
                                                                         np.array([np.nan, np.nan], dtype))
    np.testing.assert_array_equal(np.concatenate([da, db]), np.zeros(4, dtype))
    # abs and minimum: sign(x), 0 at the kink; a tie of minimum splits as maximum's does
    dx = gc.grad(lambda x: gc.sum(abs(x)))(np.array([np.inf, -np.inf, 0.0, -2.0], dtype))
    np.testing.assert_array_equal(dx, np.array([1.0, -1.0, 0.0, -1.0], dtype))
    da, db = gc.grad(lambda a, b: gc.sum(gc.minimum(a, b)), wrt=(0, 1))(y, np.array([1.0, 2.0, 3.0, 0.0], dtype))
    np.testing.assert_array_equal(da, np.array([0.5, 1.0, 0.5, 1.0], dtype))
    np.testing.assert_array_equal(db, np.array([0.5, 0.0, 0.5, 0.0], dtype))
