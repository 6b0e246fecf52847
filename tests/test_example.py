"""The example a new user runs first must work: IR of every stage, gradients checked, loss falling."""
from __future__ import annotations

import importlib.util
from pathlib import Path


def test_seed_example_trains(capsys) -> None:
    path = Path(__file__).resolve().parents[1] / "examples" / "seed_mlp.py"
    spec = importlib.util.spec_from_file_location("seed_mlp", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    losses = module.main(steps=20)
    out = capsys.readouterr().out
    for stage in ("traced", "grad", "optimized", "llvm"):
        assert f"==== stage: {stage}" in out
    assert "sigmoid" in out and "define" in out
    assert losses[-1] < 0.7 * losses[0], losses
