"""gradc: compile Python neural-network definitions into native forward and backward code.

    step = gc.value_and_grad(loss, wrt=("U", "V"))
    L, (dU, dV) = step(U, V, x, y)
    print(step.lower(U, V, x, y).as_text("grad"))
"""
from . import ir
from .backends.threads import get_num_threads, set_num_threads
from .api import Compiled, Lowered, grad, jit, make_ir, value_and_grad
from .checking import GradientCheckError, check_grad
from .functions import (abs, exp, log, log1p, log_softmax, logsumexp, matmul, max, maximum, mean, min, minimum, mse,
                        relu, sigmoid, softmax, softmax_cross_entropy, softplus, sqrt, stop_gradient, sum, tanh,
                        transpose, where)
from .ir.autodiff import GradError
from .ir.types import ShapeError
from .tracing import TracingError, f32, f64

__all__ = ["ir", "check_grad", "GradientCheckError", "Compiled", "Lowered", "grad", "jit", "make_ir", "value_and_grad",
           "get_num_threads", "set_num_threads", "abs", "exp", "log", "log1p", "min", "minimum", "softplus", "where",
           "log_softmax", "logsumexp", "matmul", "max", "maximum", "mean", "mse", "relu", "sigmoid",
           "softmax", "softmax_cross_entropy", "sqrt", "stop_gradient", "sum", "tanh", "transpose",
           "GradError", "ShapeError", "TracingError", "f32", "f64"]
