"""The IR text form: print -> parse -> print round trips, parse errors, and golden FileCheck-style tests."""
from __future__ import annotations

import pathlib
import re

import numpy as np
import pytest

import gradc as gc
import models
from gradc.ir import Builder, Graph, ParseError, TensorType, interpret, parse
from gradc.ir.passes import PASSES, Autodiff, optimize, run_passes

GOLDEN = pathlib.Path(__file__).parent / "golden"
LOWERED = models.lowered_models()


# --- round trips ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("stage", ["traced", "grad", "optimized"])
@pytest.mark.parametrize("name, lowered", LOWERED, ids=[name for name, _ in LOWERED])
def test_print_parse_print_round_trip(name, lowered, stage):
    text = lowered.as_text(stage)
    graph = parse(text)
    assert str(graph) == text
    original = lowered.graphs[stage]
    assert [v.type for v in graph.inputs] == [v.type for v in original.inputs]
    assert [op.name for op in graph.ops] == [op.name for op in original.ops]
    assert [op.attrs for op in graph.ops] == [op.attrs for op in original.ops]
    assert [op.loc for op in graph.ops] == [op.loc for op in original.ops]
    args = models.example_inputs(name)
    for a, b in zip(interpret(graph, *args), interpret(original, *args)):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("name, lowered", LOWERED, ids=[name for name, _ in LOWERED])
def test_later_graph_stages_round_trip(name, lowered):
    """Any graph stage after "optimized" (e.g. one that groups ops into kernels) prints and parses too."""
    for stage in list(lowered.graphs)[3:]:
        text = lowered.as_text(stage)
        assert str(parse(text)) == text
        args = models.example_inputs(name)
        for a, b in zip(interpret(parse(text), *args), interpret(lowered.graphs["optimized"], *args)):
            np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("name, lowered", LOWERED, ids=[name for name, _ in LOWERED])
def test_printing_is_deterministic(name, lowered):
    again = dict(models.lowered_models())[name]
    for stage in lowered.graphs:
        assert again.as_text(stage) == lowered.as_text(stage)


def test_jit_graphs_round_trip():
    for fn, args in [(models.mlp_logits, models.mlp_args()[:-1]), (models.vectors, models.vectors_args())]:
        lowered = gc.jit(fn).lower(*args)
        for stage in lowered.graphs:
            assert str(parse(lowered.as_text(stage))) == lowered.as_text(stage)


def constant_graph(values, dtype="f64"):
    graph = Graph("consts")
    x = Builder(graph).wrap(graph.add_input("x", TensorType(dtype, (2,))))
    total = x
    for v in values:
        total = total + x.builder.const(v, dtype)
    graph.outputs = [total.value]
    return graph


@pytest.mark.parametrize("dtype", ["f32", "f64"])
def test_special_constants_round_trip(dtype):
    values = [0.1, -0.0, 1e-30, 1e30, 123456789.125, float("inf"), float("-inf"), float("nan"), 5e-324,
              np.float32(0.1).item(), 1.0, 2.5e-8]
    graph = constant_graph(values, dtype)
    text = str(graph)
    parsed = parse(text)
    assert str(parsed) == text
    consts = [op.attrs["value"] for op in parsed.ops if op.name == "const"]
    for got, want in zip(consts, values):
        assert (np.isnan(got) and np.isnan(want)) or (got == want and np.signbit(got) == np.signbit(want))


def test_names_that_need_suffixes_round_trip():
    def clash(t1, x):
        x = gc.tanh(x)  # a local shadowing a parameter
        t = x * t1
        t2 = t + gc.exp(t)  # unnamed values are t<k>; a user's t2 must not collide with them
        return gc.sum(t2 * t2) + gc.sum(x)

    text = str(gc.make_ir(clash)(np.ones(3), np.ones(3)))
    assert str(parse(text)) == text
    names = re.findall(r"^  %(\S+) = ", text, re.M)
    assert len(names) == len(set(names)) and "t1" not in names and "x" not in names
    assert "t2" in names and "x_1" in names


def test_symbolic_dims_round_trip():
    text = gc.value_and_grad(models.symbolic, wrt=(0, 1, 2)).lower().as_text("grad")
    assert "f64[B,H]" in text and "%x: f64[B,4]" in text
    assert str(parse(text)) == text


def test_empty_return_and_scalar_function_round_trip():
    text = "func @f(%x: f32[]) -> () {\n  return \n}\n"
    assert str(parse(text)) == text
    text = "func @g() -> (f64[]) {\n  %c = const() {dtype=f64, value=2.0} : f64[]\n  return %c, %c\n}\n"
    with pytest.raises(ParseError, match="line 3"):
        parse(text)  # two results returned, one declared
    text = text.replace("-> (f64[])", "-> (f64[], f64[])")
    assert str(parse(text)) == text


# --- parse errors ---------------------------------------------------------------------------------------

GOOD = """func @f(%x: f32[2,3], %y: f32[3]) -> (f32[2,3]) {
  %a = add(%x, %y) : f32[2,3]  # m.py:1
  %b = tanh(%a) : f32[2,3]
  return %b
}
"""


def test_good_text_parses():
    graph = parse(GOOD)
    assert str(graph) == GOOD and graph.name == "f" and len(graph.ops) == 2


@pytest.mark.parametrize("text, line, message", [
    (GOOD.replace("tanh(%a)", "tanh(%zz)"), 3, r"undefined value %zz"),
    (GOOD.replace("tanh", "tanhh"), 3, r"unknown op 'tanhh'"),
    (GOOD.replace("%b = tanh(%a) : f32[2,3]", "%b = tanh(%a) : f33[2,3]"), 3, r"bad type"),
    (GOOD.replace("%b = tanh(%a) : f32[2,3]", "%b = tanh(%a) : f32[3,2]"), 3,
     r"declared type f32\[3,2\] but the shape rule gives f32\[2,3\]"),
    (GOOD.replace("%y: f32[3]", "%y: f32[4]"), 2, r"add: shapes \(2, 3\), \(4,\) do not broadcast"),
    (GOOD.replace("  %b =", "  hello\n  %b ="), 3, r"expected '%name = op"),
    (GOOD.replace("func @f", "fun @f"), 1, r"expected 'func @name"),
    (GOOD.replace("%y: f32[3]", "%y: f99[3]"), 1, r"bad type"),
    (GOOD.replace("%y: f32[3]", "%x: f32[3]"), 1, r"%x is defined twice"),
    (GOOD.replace("f32[2,3], %y", "f32[2,-3], %y"), 1, r"bad dim '-3'"),
    (GOOD.replace("%b = tanh(%a)", "%a = tanh(%a)").replace("return %b", "return %a"), 3,
     r"%a is defined twice"),
    (GOOD.replace("%b = tanh(%a) : f32[2,3]", "%b = pow(%a) : f32[2,3]"), 3, r"pow takes attributes"),
    (GOOD.replace("%b = tanh(%a) : f32[2,3]", "%b = pow(%a) {exponent=2.0 3} : f32[2,3]"), 3,
     r"trailing text in attribute"),
    (GOOD.replace("%b = tanh(%a) : f32[2,3]", "%b = transpose(%a) {perm=[0,0]} : f32[2,3]"), 3,
     r"not a permutation"),
    (GOOD.replace("%b = tanh(%a) : f32[2,3]", "%b = pow(%a) {exponent=2.0, junk} : f32[2,3]"), 3,
     r"expected 'name=value'"),
    (GOOD.replace("%b = tanh(%a) : f32[2,3]", "%b = pow(%a) {exponent=2.0, exponent=3.0} : f32[2,3]"), 3,
     r"attribute exponent is given twice"),
    (GOOD.replace("%b = tanh(%a) : f32[2,3]", "%b = reduce_sum(%a) {axes=[0 1], keepdims=false} : f32[]"), 3,
     r"expected ',' or '\]' in a list attribute"),
    (GOOD.replace("%b = tanh(%a) : f32[2,3]", "%b = reduce_sum(%a) {axes=[0;1], keepdims=false} : f32[]"), 3,
     r"unexpected ';1\]' in attribute"),
    (GOOD.replace("return %b", "return %c"), 4, r"undefined value %c"),
    (GOOD.replace("-> (f32[2,3])", "-> (f32[3,3])"), 4, r"header declares"),
    (GOOD.replace("-> (f32[2,3])", "-> (f32[2,3], f32[])"), 4, r"header declares"),
    (GOOD.replace("  return %b\n", ""), 4, r"no 'return'"),
    (GOOD.replace("}\n", ""), 4, r"missing the closing '}'"),
    (GOOD + "garbage\n", 6, r"text after the closing"),
    (GOOD.replace("  return %b\n", "  return %b\n  %c = exp(%b) : f32[2,3]\n"), 5, r"expected '}'"),
    # blank lines count: the error is on line 7 of the text as written
    ("\n\n" + GOOD.replace("  %b =", "\n\n  %b =").replace("tanh(%a)", "tanh(%q)"), 7, r"undefined value %q"),
])
def test_parse_errors_name_the_line(text, line, message):
    with pytest.raises(ParseError, match=rf"^line {line}: .*{message}") as info:
        parse(text)
    assert isinstance(info.value, ValueError)
    if line > 1:
        assert text.splitlines()[line - 1].strip() in str(info.value)  # and quote it


def test_parse_error_on_empty_text():
    with pytest.raises(ParseError, match="empty"):
        parse("  \n\n")


def test_parse_rejects_ops_verify_would_reject():
    with pytest.raises(ParseError, match=r"line 2: .*matmul: inner dimensions differ"):
        parse("func @f(%a: f32[2,3], %b: f32[2,3]) -> (f32[2,3]) {\n"
              "  %c = matmul(%a, %b) {transpose_a=false, transpose_b=false} : f32[2,3]\n  return %c\n}\n")


# --- golden FileCheck-style tests -----------------------------------------------------------------------

def run_command(path: pathlib.Path, text: str) -> str:
    """Run the `# RUN:` command of a .gir file on its Python model (`#| ` lines) or IR body."""
    lines = text.splitlines()
    command = next(ln[len("# RUN:"):].split() for ln in lines if ln.startswith("# RUN:"))
    options = dict(word.split("=", 1) for word in command if "=" in word)
    words = [w for w in command if "=" not in w]
    if words[0] in ("jit", "grad", "value_and_grad"):  # model source, kept on its own line numbers
        source = "\n".join(ln[3:] if ln.startswith("#| ") else "" for ln in lines)
        namespace = {"gc": gc}
        exec(compile(source, path.name, "exec"), namespace)
        fn = namespace[words[1]]
        wrt = tuple(options["wrt"].split(",")) if "wrt" in options else 0
        compiled = gc.jit(fn) if words[0] == "jit" else getattr(gc, words[0])(fn, wrt=wrt)
        return compiled.lower().as_text(options["stage"])
    graph = parse("\n".join(ln for ln in lines if not ln.startswith("#")))
    if words[0] == "parse":
        return str(graph)
    if words[0] == "optimize":
        return str(optimize(graph))
    if words[0] == "pass":
        p = Autodiff([int(i) for i in options["wrt"].split(",")]) if words[1] == "autodiff" else PASSES[words[1]]()
        return str(run_passes(graph, [p]))
    raise ValueError(f"{path.name}: unknown RUN command {command}")


def filecheck(checks: list[tuple[str, str]], output: str) -> None:
    """CHECK: in order; CHECK-SAME: later on the line of the previous match; CHECK-NOT: not between the
    previous match and the next CHECK (or the end); IMPLICIT-CHECK-NOT: nowhere in the output."""
    pos, line_end, forbidden = 0, 0, []
    for kind, pattern in checks + [("END", "")]:
        if kind == "IMPLICIT-CHECK-NOT":
            assert pattern not in output, f"IMPLICIT-CHECK-NOT: {pattern!r} found in:\n{output}"
            continue
        if kind == "CHECK-NOT":
            forbidden.append(pattern)
            continue
        if kind == "CHECK-SAME":
            found = output.find(pattern, pos, line_end)
            line = output[output.rfind("\n", 0, pos) + 1:line_end]
            assert found >= 0, f"CHECK-SAME: {pattern!r} not on the line {line!r}"
        else:
            found = len(output) if kind == "END" else output.find(pattern, pos)
            assert found >= 0, f"CHECK: {pattern!r} not found after offset {pos} in:\n{output}"
        for bad in forbidden:
            assert bad not in output[pos:found], f"CHECK-NOT: {bad!r} found before {pattern!r} in:\n{output}"
        forbidden = []
        pos = found + len(pattern)
        line_end = output.find("\n", pos) if "\n" in output[pos:] else len(output)


def read_checks(text: str) -> list[tuple[str, str]]:
    directive = r"^# ((?:IMPLICIT-)?CHECK(?:-NOT|-SAME)?): (.*)$"
    return [(m.group(1), m.group(2)) for m in re.finditer(directive, text, re.M)]


@pytest.mark.parametrize("path", sorted(GOLDEN.glob("*.gir")), ids=lambda p: p.stem)
def test_golden(path):
    text = path.read_text()
    checks = read_checks(text)
    assert checks, f"{path.name} has no CHECK lines"
    filecheck(checks, run_command(path, text))


def test_there_are_golden_files():
    assert len(list(GOLDEN.glob("*.gir"))) >= 4


@pytest.mark.parametrize("checks, output", [
    ([("CHECK", "b"), ("CHECK", "a")], "a\nb\n"),  # out of order
    ([("CHECK", "a"), ("CHECK-NOT", "x"), ("CHECK", "b")], "a x b"),
    ([("CHECK", "a"), ("CHECK-NOT", "x")], "a b x"),
    ([("CHECK", "a"), ("CHECK-SAME", "b")], "a\nb"),
    ([("CHECK", "zzz")], "a b"),
    ([("CHECK", "b"), ("IMPLICIT-CHECK-NOT", "a")], "a b"),
])
def test_filecheck_itself_fails_when_it_should(checks, output):
    with pytest.raises(AssertionError):
        filecheck(checks, output)


def test_filecheck_passes_when_it_should():
    filecheck([("CHECK-NOT", "q"), ("CHECK", "a"), ("CHECK-SAME", "c"), ("CHECK-NOT", "x"), ("CHECK", "b")],
              "a c\nb x")


def test_unicode_names_round_trip():
    def unicode_model(x: gc.f64["β", 3], w: gc.f64[3]):
        α = gc.tanh(x @ w)
        return gc.sum(α * α)

    lowered = gc.value_and_grad(unicode_model, wrt=(0, 1)).lower()
    for stage in lowered.graphs:
        text = lowered.as_text(stage)
        assert str(parse(text)) == text
    assert "%α = tanh(" in lowered.as_text("traced") and "f64[β,3]" in lowered.as_text("traced")
