"""The wheel carries every module of gradc, gradc.ir and gradc.backends (they live in separate folders)."""
from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {"gradc": "gradc", "ir": "gradc/ir", "backends": "gradc/backends"}


def test_wheel_contains_every_module(tmp_path: Path) -> None:
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(tmp_path), str(ROOT)],
                   check=True, capture_output=True, timeout=300)
    (wheel,) = tmp_path.glob("gradc-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = {f"{target}/{path.relative_to(ROOT / folder).as_posix()}"
                for folder, target in PACKAGES.items() for path in (ROOT / folder).rglob("*.py")}
    assert expected, "found no sources to look for"
    assert expected <= names, f"missing from the wheel: {sorted(expected - names)}"
    assert not any(n.startswith(("ir/", "backends/")) for n in names), "ir/backends leaked as top-level packages"


def test_import_names() -> None:
    code = ("import gradc, gradc.ir, gradc.backends.llvm, gradc.backends.jit, gradc.backends.mathlib\n"
            "import importlib.util\n"
            "assert importlib.util.find_spec('ir') is None and importlib.util.find_spec('backends') is None\n")
    subprocess.run([sys.executable, "-c", code], check=True, cwd="/", timeout=120)
