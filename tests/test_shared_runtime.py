"""The shared runtime (backends/runtime.py): a model's module only declares the GEMMs, which are
compiled once per process and found by MCJIT through llvm.add_symbol."""
from __future__ import annotations

import re

import numpy as np
import pytest
from llvmlite import ir

import gradc as gc
from gradc.backends import runtime


def mlp(W, x):
    return gc.sigmoid(x @ W)


def test_models_declare_the_gemm_and_the_process_compiles_it_once():
    rng = np.random.default_rng(0)
    W, x = rng.standard_normal((7, 5)), rng.standard_normal((3, 7))
    first = gc.jit(mlp)
    np.testing.assert_allclose(first(W, x), 1 / (1 + np.exp(-(x @ W))), rtol=1e-12)
    text = first.lower(W, x).as_text("llvm-unoptimized")
    (name,) = re.findall(r'^declare .*@"(gradc\.rt\.gemm[^"]*)"', text, re.M)
    assert not re.search(r"^define .*gradc\.gemm\.kernel", text, re.M), "micro-kernels belong to the runtime"
    compiled = runtime.compiled_names()
    assert name in compiled

    second = gc.jit(lambda W, x: gc.tanh(x @ W))  # another model, the same GEMM: nothing new
    np.testing.assert_allclose(second(W, x), np.tanh(x @ W), rtol=1e-12)
    assert runtime.compiled_names() == compiled


def test_an_unknown_runtime_declaration_is_refused_before_it_could_crash():
    module = ir.Module()
    ir.Function(module, ir.FunctionType(ir.VoidType(), []), runtime.PREFIX + "no.such.function")
    with pytest.raises(RuntimeError, match="no.such.function"):
        runtime.link(module)
