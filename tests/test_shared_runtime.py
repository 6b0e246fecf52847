"""The shared runtime (backends/runtime.py): a model's module only declares the GEMMs, which are
compiled once per process and found by MCJIT through llvm.add_symbol."""
from __future__ import annotations

import os
import re
import subprocess
import sys

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


FIRST_CALL = """
import numpy as np, gradc as gc
from gradc.backends import runtime
rng = np.random.default_rng(0)
W, x = rng.standard_normal((40, 30)), rng.standard_normal((20, 40))
out = gc.jit(lambda W, x: gc.sigmoid(x @ W))(W, x)
assert np.allclose(out, 1 / (1 + np.exp(-(x @ W))), rtol=1e-12)
print(runtime.cache_hits)
"""


def _first_call_in_new_process(cache: str, **env: str) -> int:
    done = subprocess.run([sys.executable, "-c", FIRST_CALL], capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, GRADC_CACHE_DIR=cache, **env))
    assert done.returncode == 0, done.stderr[-2000:]
    return int(done.stdout.split()[-1])


def test_a_new_process_loads_the_runtime_from_the_cache_and_ignores_a_damaged_entry(tmp_path):
    assert _first_call_in_new_process(str(tmp_path)) == 0
    stored = sorted(tmp_path.glob("*.o"))
    assert stored, "the compiled runtime was not stored"
    assert _first_call_in_new_process(str(tmp_path)) == len(stored)
    damaged = stored[0]
    data = damaged.read_bytes()
    damaged.write_bytes(data[:-1] + bytes([data[-1] ^ 0xFF]))  # its name no longer matches its digest
    assert _first_call_in_new_process(str(tmp_path)) == len(stored) - 1


def test_an_empty_cache_setting_turns_the_cache_off(tmp_path, monkeypatch):
    """Neither the working directory nor the default cache (~/.cache/gradc) gets a file."""
    monkeypatch.chdir(tmp_path)
    home = tmp_path / "home"
    assert _first_call_in_new_process("", HOME=str(home), XDG_CACHE_HOME=str(home / ".cache")) == 0
    assert not list(tmp_path.rglob("*.o"))


def test_the_cache_keeps_only_the_most_recently_used_entries(tmp_path):
    old = []
    for i in range(runtime.CACHE_ENTRIES + 5):  # as if left by earlier gradc versions
        path = tmp_path / f"{i:064x}.{i:064x}.o"
        path.write_bytes(b"old")
        os.utime(path, (1_000_000 + i, 1_000_000 + i))
        old.append(path)
    assert _first_call_in_new_process(str(tmp_path)) == 0
    kept = set(tmp_path.glob("*.o"))
    assert len(kept) == runtime.CACHE_ENTRIES
    new = kept - set(old)
    assert new, "the runtime just compiled was evicted"
    assert all(path in kept for path in old[len(old) - (runtime.CACHE_ENTRIES - len(new)):])  # the newest old ones
    assert _first_call_in_new_process(str(tmp_path)) == len(new)  # and it loads from there


def test_eviction_leaves_other_files_alone(tmp_path):
    for i in range(runtime.CACHE_ENTRIES + 5):
        (tmp_path / f"mylib_{i}.o").write_bytes(b"not gradc's")
    assert _first_call_in_new_process(str(tmp_path)) == 0
    assert len(list(tmp_path.glob("mylib_*.o"))) == runtime.CACHE_ENTRIES + 5
