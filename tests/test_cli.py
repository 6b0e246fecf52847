"""The `gradc` command, run as a user runs it: a subprocess per invocation, output and exit code."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np

import gradc as gc

ROOT = Path(__file__).resolve().parents[1]
SEED = str(ROOT / "examples" / "models" / "seed.py") + ":loss"
MLP = str(ROOT / "examples" / "models" / "mlp3.py") + ":loss"
HAS_GRAPHVIZ = shutil.which("dot") is not None


def gradc(*args: str, cwd: Path | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-m", "gradc.cli", *args], cwd=cwd, env=full_env,
                          capture_output=True, text=True, timeout=300)


def ok(*args: str, **kw) -> str:
    run = gradc(*args, **kw)
    assert run.returncode == 0, run.stderr
    assert "Traceback" not in run.stderr
    return run.stdout


def fails(*args: str, **kw) -> str:
    """A user error: exit 1 and a message on stderr, never a Python traceback."""
    run = gradc(*args, **kw)
    assert run.returncode == 1, (run.returncode, run.stdout, run.stderr)
    assert "Traceback" not in run.stderr and run.stdout == ""
    return run.stderr


def usage_error(*args: str, **kw) -> str:
    """A bad command-line value: exit 2, the usage and `gradc COMMAND: error: ...`, as argparse's own."""
    run = gradc(*args, **kw)
    assert run.returncode == 2, (run.returncode, run.stdout, run.stderr)
    assert "Traceback" not in run.stderr and run.stdout == "" and run.stderr.startswith("usage: gradc ")
    assert f"gradc {args[0]}: error: " in run.stderr
    return run.stderr


def write(directory: Path, name: str, text: str) -> Path:
    path = directory / name
    path.write_text(textwrap.dedent(text))
    return path


def load_module(path: Path):
    import importlib.util
    spec = importlib.util.spec_from_file_location(path.stem + "_model", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def seed_lowered():
    return gc.value_and_grad(load_module(ROOT / "examples" / "models" / "seed.py").loss, wrt=("U", "V")).lower()


FORWARD_ONLY = """\
    import gradc as gc

    def jitonly(x: gc.f32["B", 3]): return x * 2.0
    def aux(x: gc.f32["B", 3]): return gc.sum(x), x
    """


# --- help and installation ---------------------------------------------------------------------------

def test_help_for_every_command():
    assert "dump" in ok("--help") and "explain" in ok("--help")
    for command in ("dump", "dot", "explain", "check", "profile"):
        text = ok(command, "--help")
        assert f"usage: gradc {command}" in text and "TARGET" in text and "--wrt" in text
        assert "example: gradc " + command in text


def test_console_script_is_installed():
    script = shutil.which("gradc")
    assert script is not None, "gradc is not installed as a console script (pip install -e .)"
    run = subprocess.run([script, "--version"], capture_output=True, text=True)
    assert run.returncode == 0 and run.stdout.startswith("gradc ")


def test_no_command_is_a_usage_error():
    run = gradc()
    assert run.returncode == 2 and "usage: gradc" in run.stderr


# --- dump ----------------------------------------------------------------------------------------------

def test_dump_all_stages_in_order_with_timings():
    out = ok("dump", SEED, "--wrt", "U,V", "--stage", "all")
    headers = re.findall(r"^==== (\S+)", out, re.M)
    stages = seed_lowered().stages
    expected = [s for s in stages if s != "llvm"] if "llvm-unoptimized" in stages else \
        [x for s in stages for x in (["llvm-unoptimized", "llvm"] if s == "llvm" else [s])]
    assert headers == expected
    assert re.search(r"^==== traced\s+[\d.]+ ms \(trace\) ====$", out, re.M)
    assert re.search(r"^==== optimized\s+[\d.]+ ms \(simplify [\d.]+ ms, .*\) ====$", out, re.M)
    assert re.search(r"^==== llvm\s+[\d.]+ ms", out, re.M)
    assert "define void @gradc_entry" in out  # LLVM IR, before and after optimisation
    if "fused" in seed_lowered().graphs:  # unoptimised kernels are labelled with their ops' lines
        assert re.search(r"^; %g = sigmoid  # seed\.py:\d+\ndefine", out, re.M) or \
            re.search(r"^; %g = sigmoid  # seed\.py:\d+$", out, re.M)


def test_dump_one_stage_prints_just_its_ir_with_source_locations():
    out = ok("dump", SEED, "--wrt", "U,V", "--stage", "traced")
    lines = out.splitlines()
    assert lines[0].startswith("func @loss(%U: f32[32,64]") and lines[-1] == "}"
    ops = [ln for ln in lines if re.match(r"\s+%\w+ = ", ln)]
    assert ops and all(re.search(r"# seed\.py:\d+$", ln) for ln in ops)
    assert "%g = sigmoid(%f) : f32[B,32]" in out


def test_dump_grad_and_optimized_ops_carry_locations():
    for stage in ("grad", "optimized"):
        out = ok("dump", SEED, "--wrt", "U,V", "--stage", stage)
        ops = [ln for ln in out.splitlines() if re.match(r"\s+%\w+ = ", ln)]
        missing = [ln for ln in ops if "  # " not in ln]
        # autodiff's seed constant ∂L/∂L = 1 is the only op without a source line (see report)
        assert all("const()" in ln and "value=1.0" in ln for ln in missing), missing
        assert sum("vjp(" in ln for ln in ops) >= 5


def test_dump_asm_and_dtype_override():
    assert re.search(r"^gradc_entry:", ok("dump", SEED, "--stage", "asm"), re.M)
    assert "%U: f64[32,64]" in ok("dump", SEED, "--stage", "traced", "--dtype", "f64")


def test_dump_unknown_stage():
    err = usage_error("dump", SEED, "--stage", "bogus")
    assert "--stage bogus: stages are traced, grad, optimized" in err and "or all" in err


# --- dot -----------------------------------------------------------------------------------------------

def test_dot_text_to_stdout_and_file(tmp_path):
    out = ok("dot", SEED, "--wrt", "U,V", "--stage", "grad")
    assert out.startswith('digraph "loss"') and "loss: grad stage" in out
    assert '"#dbe9f6"' in out and '"#fde2c8"' in out  # forward and adjoint colours
    ok("dot", SEED, "--stage", "grad", "-o", str(tmp_path / "g.dot"))
    assert (tmp_path / "g.dot").read_text().startswith("digraph")


def test_dot_svg_and_png(tmp_path):
    if not HAS_GRAPHVIZ:  # .ci/run installs Graphviz; on a bare machine the command must explain itself
        assert "apt-get install graphviz" in fails("dot", SEED, "-o", str(tmp_path / "seed.svg"))
        return
    ok("dot", SEED, "--wrt", "U,V", "--stage", "grad", "-o", str(tmp_path / "seed.svg"))
    svg = (tmp_path / "seed.svg").read_text()
    assert "<svg" in svg and "%dV = transpose" in svg and "%g = sigmoid" in svg
    ok("dot", SEED, "--stage", "optimized", "-o", str(tmp_path / "seed.png"))
    assert (tmp_path / "seed.png").read_bytes()[:4] == b"\x89PNG"


def test_dot_without_graphviz_says_how_to_install_it(tmp_path):
    # an empty PATH hides the `dot` program; the interpreter is started by its full path
    err = fails("dot", SEED, "-o", str(tmp_path / "seed.svg"), env={"PATH": str(tmp_path)})
    assert "apt-get install graphviz" in err and "-o graph.dot" in err
    assert not (tmp_path / "seed.svg").exists()
    ok("dot", SEED, "-o", str(tmp_path / "seed.dot"), env={"PATH": str(tmp_path)})  # DOT always works


def test_dot_fused_kernels_are_clusters():
    out = ok("dot", SEED, "--wrt", "U,V", "--stage", "fused")
    assert out.count("subgraph \"cluster_") >= 2


def test_dot_needs_a_graph_stage_and_a_known_format(tmp_path):
    assert "graph stages are traced, grad" in usage_error("dot", SEED, "--stage", "llvm")
    assert ".svg, .png, .pdf, .dot, .gv" in usage_error("dot", SEED, "-o", str(tmp_path / "x.jpg"))
    assert not (tmp_path / "x.jpg").exists()


# --- explain -------------------------------------------------------------------------------------------

def test_explain_seed():
    out = ok("explain", SEED, "--wrt", "U,V")
    for formula in ("∂L/∂h = 2/N (h − y)", "∂L/∂V = (∂L/∂h)ᵀ g", "∂L/∂g = (∂L/∂h) V",
                    "∂L/∂f = ∂L/∂g ⊙ g ⊙ (1 − g)", "∂L/∂U = (∂L/∂f)ᵀ x", "where N = B·10"):
        assert formula in re.sub(r" {2,}= ", " = ", out), formula
    assert "∂L/∂x" not in out  # only the gradients asked for


def test_explain_mlp_latex_verbose_and_verify():
    out = re.sub(r" {2,}= ", " = ", ok("explain", MLP))
    assert "∂L/∂z = (softmax(z) − t)/B" in out and "∂L/∂b₃ = 1ᵀ (∂L/∂z)" in out
    assert "∂L/∂x" in out  # default: every float argument
    latex = ok("explain", MLP, "--latex", "--wrt", "W3,b3")
    assert r"\frac{\operatorname{softmax}(z) - t}{B}" in latex and r"\begin{aligned}" in latex
    assert "%dW3" in ok("explain", MLP, "-v", "--wrt", "W3")
    verified = ok("explain", SEED, "--wrt", "U,V", "--verify", "--dim", "B=3")
    assert "verified: each formula" in verified


# --- check ---------------------------------------------------------------------------------------------

def test_check_passes_on_the_examples():
    out = ok("check", SEED)
    assert "float64, B=4, seed 0" in out and "all 4 gradients agree" in out
    out = ok("check", MLP, "--wrt", "W1,b3", "--dim", "B=6")
    assert re.search(r"∂L/∂W1\s+worst relative error\s+\S+\s+ok", out) and "B=6" in out


def test_profile_lists_every_kernel_of_the_step():
    out = ok("profile", SEED, "--dim", "B=64", "--calls", "20", "--threads", "1")
    assert "with B=64" in out and "mean of 20), 1 thread(s)" in out
    for step in ("k0", "k1", "k1.combine", "k2", "k3", "k4", "steps", "boundary"):
        assert re.search(rf"^{re.escape(step)}\s", out, re.M), step
    assert re.search(r"^k0\s+matmul\s+[\d.]+ µs\s+[\d.]+%\s+[\d.]+\s+matmul, sigmoid$", out, re.M)
    assert "--threads" in usage_error("profile", SEED, "--threads", "0")
    too_many = usage_error("profile", SEED, "--threads", "100000")
    assert "--threads 100000: expected an int from 1 to" in too_many


def test_check_reports_a_mismatch(tmp_path):
    model = write(tmp_path, "wrong.py", """
        import gradc as gc

        def loss(x: gc.f32["B", 3]):
            return gc.sum(x * gc.stop_gradient(x))  # the gradient is x, the derivative 2x
        """)
    run = gradc("check", f"{model}:loss")
    assert run.returncode == 1 and "MISMATCH" in run.stdout and "does NOT agree" in run.stdout


def test_check_reports_functions_without_a_gradient_as_user_errors(tmp_path):
    # check ran the gradient check outside the error reporting of the other commands: exit 70
    model = write(tmp_path, "m.py", FORWARD_ONLY)
    for func, returns in (("jitonly", "f32[B,3]"), ("aux", "a tuple (f32[], f32[B,3])")):
        err = fails("check", f"{model}:{func}", cwd=tmp_path)
        assert err.startswith(f"m.py:{3 if func == 'jitonly' else 4}: error: {func} has no scalar output "
                              f"(it returns {returns}), so there is no gradient to check"), err
        assert "internal error" not in err
        explained = fails("explain", f"{model}:{func}", cwd=tmp_path)  # as the other commands say it
        assert explained == err.replace("to check", "to explain")


def test_random_inputs_are_arrays_even_when_0_d(monkeypatch):
    from gradc.checking import random_arguments
    from gradc.ir import TensorType
    scalar, matrix = random_arguments([TensorType("f32", ()), TensorType("f64", ("B", 3))], {"B": 2})
    assert type(scalar) is np.ndarray and scalar.shape == () and scalar.dtype == np.float32
    assert type(matrix) is np.ndarray and matrix.shape == (2, 3) and matrix.dtype == np.float64
    # check_grad's finite differences call the forward function on arrays too, 0-d ones included
    seen = []
    real_jit = gc.api.jit

    def recording_jit(fn, **kw):
        compiled = real_jit(fn, **kw)
        return lambda *args: seen.append([type(a) for a in args]) or compiled(*args)
    monkeypatch.setattr(gc.api, "jit", recording_jit)

    def loss(s: gc.f32[()], x: gc.f32["B", 3]):
        return gc.sum(x * s * s)
    assert gc.check_grad(loss, samples=2).ok
    assert seen and all(t is np.ndarray for types in seen for t in types), seen


def test_bad_option_values_are_usage_errors(tmp_path):
    for args, message in (
            (("dump", SEED, "--stage", "bogus"), "--stage bogus: stages are traced, grad, optimized"),
            (("explain", SEED, "--stage", "llvm"), "--stage llvm: explain reads a graph stage: traced, grad"),
            (("check", SEED, "--dim", "B=x"), "argument --dim: expected NAME=SIZE"),
            (("profile", SEED, "--dim", "B=0"), "argument --dim: expected NAME=SIZE"),
            (("dot", SEED, "-o", str(tmp_path / "g.jpg")), "argument -o/--output: "),
            (("check", SEED, "--samples", "-1"), "argument --samples: expected an integer >= 0, got '-1'"),
            (("check", SEED, "--seed", "-1"), "argument --seed: expected an integer >= 0, got '-1'"),
            (("check", SEED, "--tolerance", "-1"), "argument --tolerance: expected a number >= 0"),
            (("profile", SEED, "--calls", "-5"), "argument --calls: expected an integer >= 0"),
            (("check", SEED, "--wrt", "U,q"), "--wrt q: loss has parameters U, V, x, y")):
        assert message in usage_error(*args), args
    # values that need no model are checked before it is loaded, so they are reported first
    broken = write(tmp_path, "broken.py", "import gradc as gc\ndef loss(x: gc.f32[3]) return x\n")
    assert "argument --dim" in usage_error("check", f"{broken}:loss", "--dim", "B=x")


def test_unknown_dim_names_the_models_dims(tmp_path):
    for command in ("check", "profile", "explain"):
        err = usage_error(command, SEED, "--dim", "C=3")
        assert "--dim C=3: loss has no dim C; its symbolic dims are B" in err, err
    fixed = write(tmp_path, "fixed.py", "import gradc as gc\ndef loss(x: gc.f32[3]): return gc.sum(x)\n")
    err = usage_error("check", f"{fixed}:loss", "--dim", "B=2")
    assert "--dim B=2: loss has no dim B; it has no symbolic dims" in err
    assert "B=5" in ok("check", SEED, "--dim", "B=5", "--wrt", "U")


def test_wrt_takes_indices_as_the_python_api_does():
    by_name = ok("check", SEED, "--wrt", "U,y")
    assert ok("check", SEED, "--wrt", "0,-1") == by_name and ok("check", SEED, "--wrt", "U,3") == by_name
    second = ok("explain", SEED, "--wrt", "1")
    assert "∂L/∂V" in second and "∂L/∂U" not in second
    assert "--wrt 4: loss has parameters U, V, x, y (indices 0 to 3, or -4 to -1)" in \
        usage_error("check", SEED, "--wrt", "4")
    assert "--wrt -5" in usage_error("check", SEED, "--wrt=-5")


def test_functions_without_a_scalar_output_show_their_forward_stages(tmp_path):
    model = write(tmp_path, "m.py", FORWARD_ONLY)
    traced = ok("dump", f"{model}:jitonly", "--stage", "traced", cwd=tmp_path)
    assert traced.startswith("func @jitonly(%x: f32[B,3]) -> (f32[B,3])") and "mul(" in traced
    assert "func @aux(%x: f32[B,3]) -> (f32[], f32[B,3])" in ok("dump", f"{model}:aux", "--stage", "traced")
    everything = ok("dump", f"{model}:jitonly", "--stage", "all", cwd=tmp_path)
    headers = re.findall(r"^==== (\S+)", everything, re.M)
    assert "grad" not in headers and headers[0] == "traced" and headers[-1] == "asm"
    assert "vjp" not in everything and "define void @gradc_entry" in everything
    assert re.search(r"^gradc_entry:", ok("dump", f"{model}:jitonly", "--stage", "asm"), re.M)
    assert ok("dot", f"{model}:jitonly", "--stage", "optimized").startswith('digraph "jitonly"')
    assert "jitonly: optimized stage" in ok("dot", f"{model}:jitonly")  # dot's default without a gradient
    assert "forward call with B=4" in ok("profile", f"{model}:jitonly", "--calls", "5")
    # the same forward stages as gc.jit(f).lower() in Python
    assert traced == str(gc.jit(load_module(model).jitonly).lower().graphs["traced"])
    # stages that need a gradient say why there is none
    for args in (("dump", "--stage", "grad"), ("dot", "--stage", "grad")):
        err = fails(args[0], f"{model}:jitonly", *args[1:], cwd=tmp_path)
        assert err.startswith("m.py:3: error: jitonly has no scalar output (it returns f32[B,3]), so there "
                              "is no gradient and no grad stage; its stages are traced, optimized"), err
    # a dump of its traced stage is IR text the command reads back
    gir = write(tmp_path, "jitonly.gir", traced)
    assert ok("dump", str(gir), "--stage", "traced") == traced
    assert "no gradient to check" in fails("check", str(gir))


# --- IR text as input ----------------------------------------------------------------------------------

def test_ir_file_round_trips_and_compiles(tmp_path):
    gir = tmp_path / "seed.gir"
    gir.write_text(ok("dump", SEED, "--stage", "traced"))
    assert ok("dump", str(gir), "--stage", "traced") == gir.read_text()
    python = ok("explain", SEED, "--wrt", "U,V").splitlines()[1:]
    assert ok("explain", str(gir), "--wrt", "U,V").splitlines()[1:] == python
    assert "all 2 gradients agree" in ok("check", str(gir), "--wrt", "U,V")


def test_edited_ir_file_compiles_the_edit(tmp_path):
    text = ok("dump", SEED, "--stage", "traced").replace("sigmoid(%f)", "tanh(%f)")
    gir = write(tmp_path, "edited.gir", text)
    out = re.sub(r" {2,}= ", " = ", ok("explain", str(gir), "--wrt", "U"))
    assert "g = tanh(f)" in out and "∂L/∂f = ∂L/∂g ⊙ (1 − g²)" in out


def test_broken_ir_file_points_at_its_line(tmp_path):
    gir = write(tmp_path, "bad.gir", """\
        func @f(%x: f32[3]) -> (f32[]) {
          %y = exp(%x) : f32[3]
          %z = reduce_sum(%q) {axes=[0], keepdims=false} : f32[]
          return %z
        }
        """)
    err = fails("explain", str(gir))
    assert re.search(r"bad\.gir:3: error: undefined value %q", err) and "3 |   %z = reduce_sum" in err


# --- errors in the user's file -------------------------------------------------------------------------

def test_syntax_error_shows_the_users_line(tmp_path):
    model = write(tmp_path, "syntax.py", """\
        import gradc as gc

        def loss(x: gc.f32["B", 4]):
            y = x * 2 +
            return gc.sum(y)
        """)
    err = fails("explain", f"{model}:loss", cwd=tmp_path)
    assert err.startswith("syntax.py:4: error: SyntaxError") and "4 |     y = x * 2 +" in err
    assert "^" in err


def test_shape_mismatch_shows_the_users_line(tmp_path):
    model = write(tmp_path, "shapes.py", """\
        import gradc as gc

        def loss(U: gc.f32[32, 64], x: gc.f32["B", 63]):
            f = x @ U.T
            return gc.mean(f)
        """)
    for command in ("dump", "dot", "explain", "check", "profile"):
        err = fails(command, f"{model}:loss", cwd=tmp_path)
        assert err.startswith("shapes.py:4: error: matmul: inner dimensions differ"), err
        assert "4 |     f = x @ U.T" in err


def test_error_in_a_helper_module_names_both_lines(tmp_path):
    write(tmp_path, "layers.py", """\
        import gradc as gc
        def layer(x, W):
            return gc.tanh(x @ W)
        """)
    model = write(tmp_path, "net.py", """\
        import gradc as gc
        from layers import layer

        def loss(x: gc.f32["B", 4], W: gc.f32[5, 3]):
            return gc.sum(layer(x, W))
        """)
    err = fails("explain", f"{model}:loss", cwd=tmp_path)
    assert err.startswith("layers.py:3: error: matmul") and "called from net.py:5, in loss" in err


def test_exception_at_import_time(tmp_path):
    model = write(tmp_path, "broken.py", """\
        import gradc as gc
        scale = undefined_name * 2
        """)
    assert fails("dump", f"{model}:loss", cwd=tmp_path).startswith(
        "broken.py:2: error: NameError: name 'undefined_name' is not defined")


def test_error_inside_a_compiled_library_points_at_the_users_line(tmp_path):
    # numpy's Cython frames name .pyx files that do not exist: they are not the user's code
    model = write(tmp_path, "seeded.py", """\
        import numpy as np
        import gradc as gc
        rng = np.random.default_rng(-1)
        """)
    err = fails("dump", f"{model}:loss", cwd=tmp_path)
    assert err.startswith("seeded.py:3: error: ValueError: ") and ".pyx" not in err, err


def test_function_lookup_errors(tmp_path):
    model = write(tmp_path, "many.py", """\
        import gradc as gc
        def unannotated(x, W):
            return gc.sum(x @ W)
        def a(x: gc.f32[3]):
            return gc.sum(x)
        def b(x: gc.f32[3]):
            return gc.sum(x * x)
        def vector(x: gc.f32[3]):
            return x * 2
        """)
    assert "annotated functions: a, b" in fails("explain", f"{model}:nope")
    assert "name the function as" in fails("explain", str(model))
    assert "needs shape annotations" in fails("explain", f"{model}:unannotated")
    assert "vector has no scalar output (it returns f32[3]), so there is no gradient to explain" in \
        fails("explain", f"{model}:vector")
    assert "--wrt q: b has parameters x" in usage_error("explain", f"{model}:b", "--wrt", "q")
    assert "no such file" in fails("explain", str(tmp_path / "missing.py") + ":loss")
    single = write(tmp_path, "single.py", "import gradc as gc\ndef only(x: gc.f32[3]):\n    return gc.sum(x)\n")
    assert "∂L/∂x = 1" in ok("explain", str(single))  # FUNC may be left out when there is one


def test_traceback_flag_shows_the_python_traceback(tmp_path):
    model = write(tmp_path, "shapes.py", """\
        import gradc as gc
        def loss(U: gc.f32[3, 4], x: gc.f32[2, 5]):
            return gc.sum(x @ U)
        """)
    run = gradc("explain", f"{model}:loss", "--traceback")
    assert run.returncode == 1 and "Traceback" in run.stderr


# --- GRADC_DUMP ----------------------------------------------------------------------------------------

def test_dump_to_directory(tmp_path):
    from gradc.dumping import dump_to_directory
    folder = dump_to_directory(seed_lowered(), tmp_path)
    files = sorted(p.name for p in folder.iterdir())
    stages = [re.sub(r"^\d\d-|\.txt$", "", f) for f in files if re.match(r"\d\d-", f)]
    assert folder == tmp_path / "loss" and "timings.txt" in files
    assert stages[:3] == ["traced", "grad", "optimized"] and stages[-3:] == ["llvm-unoptimized", "llvm", "asm"]
    traced = (folder / "00-traced.txt").read_text()
    assert all("# seed.py:" in ln for ln in traced.splitlines() if " = " in ln)
    assert gc.ir.parse(traced).name == "loss"  # a dump is valid IR text: it can be edited and compiled
    assert "define void @gradc_entry" in (folder / f"{files[[f.endswith('-llvm.txt') for f in files].index(True)]}").read_text()
    assert dump_to_directory(seed_lowered(), tmp_path) == tmp_path / "loss-2"  # a second compilation


def test_gradc_dump_environment_variable(tmp_path):
    script = write(tmp_path, "train.py", """\
        import numpy as np
        import gradc as gc

        def loss(W: gc.f32[4, 3], x: gc.f32["B", 4]):
            h = gc.tanh(x @ W)
            return gc.mean(h * h)

        step = gc.value_and_grad(loss, wrt="W")
        W, x = np.ones((4, 3), np.float32), np.ones((2, 4), np.float32)
        for _ in range(3):
            L, dW = step(W, x)
        """)
    run = subprocess.run([sys.executable, str(script)], env={**os.environ, "GRADC_DUMP": str(tmp_path / "d")},
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    names = sorted(p.name for p in (tmp_path / "d" / "loss").iterdir())
    assert "00-traced.txt" in names and any(n.endswith("-llvm-unoptimized.txt") for n in names)
    assert not (tmp_path / "d" / "loss-2").exists()  # compiled once, dumped once


DEFAULTS_AND_DICTS = """\
    import gradc as gc

    def scaled(x: gc.f32[3], W: gc.f32[3], scale=2.0):
        return gc.sum(x * W) * scale

    def named(x: gc.f32[3]):
        return {"double": x * 2.0, "total": gc.sum(x)}

    def power(x: gc.f32[3]):
        return gc.sum(2.0 ** x)
"""


def test_defaults_dicts_and_constant_powers_on_the_command_line(tmp_path):
    """An unannotated default is a constant (not a gradient, whatever index names it, as in
    gc.grad); a dict result has forward stages only; explain writes c ** x as a power."""
    model = write(tmp_path, "m.py", DEFAULTS_AND_DICTS)
    checked = ok("check", f"{model}:scaled")
    assert "∂L/∂x" in checked and "∂L/∂W" in checked and "∂L/∂scale" not in checked
    assert "--wrt scale: a parameter with a default and no annotation is a Python constant" in \
        usage_error("check", f"{model}:scaled", "--wrt=-1")
    assert "W" in ok("check", f"{model}:scaled", "--wrt=-2") and "∂L/∂x" not in ok("check", f"{model}:scaled", "--wrt=1")
    assert "func @named(%x: f32[3]) -> (f32[3], f32[])" in ok("dump", f"{model}:named", "--stage", "traced")
    assert "named has no scalar output (it returns a dict (f32[3], f32[]))" in fails("check", f"{model}:named")
    assert "L     = Σ 2^(x)" in ok("explain", f"{model}:power")
