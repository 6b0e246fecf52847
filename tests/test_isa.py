"""GRADC_MAX_ISA: an AVX-512 machine builds, and tests, the code an AVX2-only machine runs."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import gradc.backends.jit as jit

TESTS = Path(__file__).parent

SEED_STEP = """
import re, numpy as np, gradc as gc
from gradc.backends.gemm import host_vector_bytes
from gradc.ir import interpret
from models import seed_loss
rng = np.random.default_rng(0)
args = [rng.standard_normal(s).astype(np.float32) for s in [(300, 200), (10, 300), (70, 200), (70, 10)]]
step = gc.value_and_grad(seed_loss, wrt=("U", "V"))
got = step(*args)
want = interpret(step.lower(*args).graphs["optimized"], *args)
for g, w in zip([got[0], *got[1]], want):
    np.testing.assert_allclose(g, w, rtol=2e-5, atol=1e-6)
asm = step.lower(*args).as_text("asm")
print(host_vector_bytes(), len(re.findall(r"%zmm", asm)), len(re.findall(r"%ymm", asm)))
"""


def _run(code_or_args: list[str], isa: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *code_or_args], capture_output=True, text=True, timeout=600,
                          cwd=TESTS, env=dict(os.environ, GRADC_MAX_ISA=isa,
                                              PYTHONPATH=os.pathsep.join(filter(None, [str(TESTS),
                                                                                       os.environ.get("PYTHONPATH")]))))


def test_avx2_code_has_no_512_bit_registers_and_the_interpreters_results():
    done = _run(["-c", SEED_STEP], "avx2")
    assert done.returncode == 0, done.stderr[-3000:]
    vector_bytes, zmm, ymm = map(int, done.stdout.split())
    assert (vector_bytes, zmm) == (32, 0) and ymm > 0


def test_the_kernel_suites_pass_when_built_for_avx2():
    """GEMM tiles, row epilogues, thread splits and vector math at AVX2's widths (NR = 16 float32
    columns, 8 float64) run by the same tests as the host's own. The CI host has AVX-512, so without
    this nothing would run them."""
    suites = ["test_gemm.py", "test_fusion.py", "test_threads.py", "test_mathlib.py"]
    done = _run(["-m", "pytest", "-q", "-p", "no:cacheprovider", *suites], "avx2")
    assert done.returncode == 0, done.stdout[-5000:]
    assert " passed" in done.stdout.splitlines()[-1] and "failed" not in done.stdout.splitlines()[-1]


def test_an_unknown_max_isa_is_reported_and_ignored(monkeypatch):
    monkeypatch.setenv("GRADC_MAX_ISA", "avx9")
    with pytest.warns(RuntimeWarning, match=r"GRADC_MAX_ISA='avx9': expected one of avx512, avx2; using the host's"):
        features = jit.host_feature_map.__wrapped__()
    assert dict(features) == dict(jit.llvm.get_host_cpu_features())
