"""The `gradc` command: dump, draw, explain, check and profile the compilation of a model definition.

    gradc dump    examples/models/seed.py:loss --stage all
    gradc dot     examples/models/seed.py:loss --stage grad -o seed.svg
    gradc explain examples/models/seed.py:loss --wrt U,V
    gradc check   examples/models/mlp3.py:loss
    gradc profile examples/models/seed.py:loss --dim B=4096

A target is FILE.py:FUNC, a function whose parameters carry gc.f32[...] annotations, or an IR
text file (.gir) as `gradc dump --stage traced` prints it. Mistakes in the user's file are
reported at the user's file and line, never as a gradc traceback (--traceback shows one).
A function without a scalar output compiles as gc.jit compiles it: its forward stages can be
dumped, drawn and profiled; the commands that need a gradient say that it has none.
"""
from __future__ import annotations

import argparse
import contextlib
import functools
import importlib.util
import inspect
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from . import dumping
from .api import Compiled, Lowered, jit, value_and_grad
from .checking import bind_symbols, check_grad, random_arguments, with_dtype
from .ir import Graph, ParseError, TensorType, parse
from .tracing import Annotation, annotated_types, parameter_names, trace

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_INTERNAL = 0, 1, 2, 70  # 70: EX_SOFTWARE of sysexits.h
GRAPHVIZ_FORMATS = ("svg", "png", "pdf")
DOT_FORMATS = ("dot", "gv")
GRADIENT_STAGES = ("grad",)  # what a compilation without a gradient (gc.jit's) lacks
# gradc's errors that are about the user's function as a whole (its output, its annotations)
USER_ERROR_TYPES = ("GradError", "ShapeError", "TracingError", "ParseError")
INSTALL_GRAPHVIZ = ("Graphviz's `dot` program is not installed. Install it with\n"
                    "    apt-get install graphviz      (Debian, Ubuntu)\n"
                    "    brew install graphviz         (macOS)\n"
                    "    conda install graphviz        (conda)\n"
                    "or write DOT text, which needs nothing: -o graph.dot")


class UserError(Exception):
    """A mistake in the command line or the user's file: printed as `file:line: error: message`."""

    def __init__(self, message: str, where: str = "", source: str = "") -> None:
        super().__init__(message)
        self.where, self.source = where, source

    def __str__(self) -> str:
        text = f"{self.where}: error: {self.args[0]}" if self.where else f"error: {self.args[0]}"
        return text + (f"\n{self.source}" if self.source else "")


class UsageError(UserError):
    """A command-line value that does not fit the model (a --stage, --wrt or --dim it has not):
    exit status 2 and the usage, as argparse reports the values it can check itself."""


# --- where an exception happened in the user's code -------------------------------------------------

_GRADC_DIRS = tuple(str(Path(str(m)).resolve().parent) + os.sep for m in
                    (__file__, sys.modules["gradc.ir"].__file__, sys.modules["gradc.backends"].__file__))
_LIBRARY_DIRS = tuple(str(Path(p).resolve()) + os.sep for p in
                      {sysconfig.get_paths()[k] for k in ("stdlib", "platstdlib", "purelib", "platlib")})


def _is_user_file(filename: str) -> bool:
    if filename.startswith("<") or not Path(filename).is_file():  # Cython frames name a .pyx not there
        return False
    path = str(Path(filename).resolve())
    return not path.startswith(_GRADC_DIRS) and not path.startswith(_LIBRARY_DIRS)


def _source_line(filename: str, lineno: int) -> str:
    try:
        line = Path(filename).read_text(encoding="utf-8").splitlines()[lineno - 1]
    except (OSError, IndexError, UnicodeDecodeError):
        return ""
    return f"  {lineno:4d} | {line.rstrip()}"


def _display(filename: str) -> str:
    try:
        return os.path.relpath(filename)
    except ValueError:
        return filename


def user_error(e: BaseException) -> UserError | None:
    """The exception as a UserError at the innermost user frame, or None when no user code ran."""
    if isinstance(e, SyntaxError) and e.filename and _is_user_file(e.filename):
        source = _source_line(e.filename, e.lineno or 0)
        if source and e.offset:
            source += "\n       | " + " " * (e.offset - 1) + "^"
        return UserError(f"{type(e).__name__}: {e.msg}", f"{_display(e.filename)}:{e.lineno}", source)
    frames = [f for f in traceback.extract_tb(e.__traceback__) if _is_user_file(f.filename)]
    if not frames:
        return None
    last = frames[-1]
    message = str(e) if str(e) else type(e).__name__
    # tracing already prefixes gradc's own errors with `file.py:line: `; the location is shown here
    message = re.sub(rf"^{re.escape(os.path.basename(last.filename))}:\d+: ", "", message)
    if type(e).__module__ == "builtins":  # gradc's own errors (ShapeError, ...) speak for themselves
        message = f"{type(e).__name__}: {message}"
    source = _source_line(last.filename, last.lineno or 0)
    for outer in reversed(frames[:-1]):
        source += f"\n       (called from {_display(outer.filename)}:{outer.lineno}, in {outer.name})"
    return UserError(message, f"{_display(last.filename)}:{last.lineno}", source)


# --- loading a target -------------------------------------------------------------------------------

@dataclass
class Target:
    fn: Callable
    path: Path
    name: str

    @functools.cached_property
    def non_scalar_output(self) -> str | None:
        """What the function returns when it is not one scalar, so that it has no gradient (only
        gc.jit's forward stages); None for a loss. Traces the function: read it inside
        `reported_as_user_errors`."""
        graph, structure = trace(self.fn, annotated_types(self.fn) or [])
        if structure is None and graph.outputs[0].type.shape == ():
            return None
        types = ", ".join(str(v.type) for v in graph.outputs)
        return types if structure is None else f"a {structure[0].__name__} ({types})"

    def no_gradient(self, purpose: str) -> UserError:
        """The error of a command that needs the gradient of a function without one."""
        hint = ("the command line differentiates a function that returns its loss alone (has_aux, for "
                "a loss with more values, is the Python API's)" if self.non_scalar_output.startswith("a ")
                else "a loss is one scalar, e.g. gc.sum or gc.mean of it")
        return UserError(f"{self.name} has no scalar output (it returns {self.non_scalar_output}), so "
                         f"there is no gradient {purpose}; {hint}", _where(self.fn))


def _split_target(spec: str) -> tuple[Path, str | None]:
    path, sep, func = spec.rpartition(":")
    if not sep or not path or os.sep in func or func.endswith((".py", ".gir", ".txt")):
        return Path(spec), None
    return Path(path), func


def _import_file(path: Path) -> Any:
    name = "gradc_model_" + re.sub(r"\W", "_", str(path.resolve()))
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise UserError(f"cannot import {path} as Python")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    sys.path.insert(0, str(path.resolve().parent))  # the model may import its neighbours
    try:
        spec.loader.exec_module(module)
    except Exception as e:
        raise user_error(e) or UserError(f"importing {path}: {type(e).__name__}: {e}") from e
    return module


def _annotated_functions(module: Any) -> list[str]:
    found = []
    for name, obj in vars(module).items():
        fn = obj.fn if isinstance(obj, Compiled) else obj
        if inspect.isfunction(fn) and fn.__module__ == module.__name__:
            try:
                if annotated_types(fn) is not None:
                    found.append(name)
            except TypeError:
                continue
    return found


def load_python(path: Path, func: str | None, dtype: str | None) -> Target:
    module = _import_file(path)
    candidates = _annotated_functions(module)
    if func is None:
        if len(candidates) != 1:
            listing = ", ".join(candidates) or "none"
            raise UserError(f"name the function as {path}:FUNC (annotated functions in the file: {listing})")
        func = candidates[0]
    obj: Any = module
    for part in func.split("."):
        if not hasattr(obj, part):
            raise UserError(f"{path} has no function {func!r}; annotated functions: "
                            f"{', '.join(candidates) or 'none'}")
        obj = getattr(obj, part)
    fn = obj.fn if isinstance(obj, Compiled) else obj
    if not callable(fn):
        raise UserError(f"{path}:{func} is a {type(fn).__name__}, not a function")
    try:
        types = annotated_types(fn)
    except TypeError as e:
        raise UserError(str(e), _where(fn)) from None
    if types is None:
        raise UserError(f"{func} needs shape annotations on its parameters to be compiled without "
                        f"example arrays, e.g. def {func}(W: gc.f32[128, 784], x: gc.f32[\"B\", 784])",
                        _where(fn))
    return Target(with_dtype(fn, dtype) if dtype else fn, path, func)


def _where(fn: Callable) -> str:
    code = getattr(fn, "__code__", None)
    return f"{_display(code.co_filename)}:{code.co_firstlineno}" if code else ""


def ir_function(graph: Graph, path: Path, text: str, dtype: str | None = None) -> Callable:
    """A Python function that replays `graph` op by op, so an edited dump compiles through the
    same public pipeline (autodiff, every pass) as a Python model. Ops keep their recorded
    source locations; ops without one point at their line in the IR file."""
    line_of = {m.group(1): n for n, line in enumerate(text.splitlines(), 1)
               if (m := re.match(r"\s*%([\w.]+) =", line))}
    printed_name = {op.result: op.result.name for op in graph.ops}

    def replay(*args: Any) -> Any:
        # no tensor may sit in a local variable here: tracing names values after the locals
        env = dict(zip(graph.inputs, args))
        for op in graph.ops:
            attrs = dict(op.attrs)
            if dtype and "dtype" in attrs:
                attrs["dtype"] = dtype
            env[op.result] = args[0].builder.op(op.name, *(env[v] for v in op.operands), **attrs)
            name = printed_name[op.result]
            env[op.result].value.producer.loc = op.loc or f"{path.name}:{line_of.get(name, 0)}"
            if not re.fullmatch(r"t\d+", name):  # t1, t2, ... are the printer's, not the user's
                env[op.result].value.name = name
        if len(graph.outputs) == 1:
            return env[graph.outputs[0]]
        return tuple(env[v] for v in graph.outputs)

    bad = [v.name for v in graph.inputs if not v.name.isidentifier()]
    if bad:
        raise UserError(f"input names must be identifiers to compile IR text: {', '.join(bad)}", str(path))
    replay.__name__ = replay.__qualname__ = graph.name
    replay.__dict__["__gradc_retype__"] = lambda new: ir_function(graph, path, text, new)
    replay.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
        [inspect.Parameter(v.name, inspect.Parameter.POSITIONAL_OR_KEYWORD) for v in graph.inputs])
    replay.__annotations__ = {v.name: Annotation(TensorType(dtype or v.type.dtype, v.type.shape))
                              for v in graph.inputs}
    return replay


def load_ir(path: Path, dtype: str | None) -> Target:
    text = path.read_text(encoding="utf-8")
    try:
        graph = parse(text)
    except ParseError as e:
        m = re.match(r"line (\d+): (.*)", str(e), re.S)
        if m:
            raise UserError(m.group(2), f"{_display(str(path))}:{m.group(1)}",
                            _source_line(str(path), int(m.group(1)))) from None
        raise UserError(str(e), _display(str(path))) from None
    if not graph.inputs:
        raise UserError("the IR function has no inputs to compile", str(path))
    return Target(ir_function(graph, path, text, dtype), path, graph.name)


def load_target(spec: str, dtype: str | None = None) -> Target:
    path, func = _split_target(spec)
    if not path.exists():
        raise UserError(f"no such file: {path}")
    if path.suffix == ".py":
        return load_python(path, func, dtype)
    if func is not None:
        raise UserError(f"{path} is IR text: it holds one function, so drop ':{func}'")
    return load_ir(path, dtype)


def _wrt(target: Target, wrt: str | None) -> list[str]:
    """The parameter names --wrt picks: names or indices (negative from the end), as gc.grad's wrt."""
    names = parameter_names(target.fn)
    tensors = names[:len(annotated_types(target.fn) or ())]  # the rest: unannotated defaults, constants
    if not wrt:
        return tensors  # gradc computes in f32/f64 only, so every argument is a float argument
    chosen = [w.strip() for w in wrt.split(",") if w.strip()]
    indices = {w: int(w) for w in chosen if re.fullmatch(r"-?\d+", w, re.ASCII)}
    in_range = {w for w, i in indices.items() if -len(names) <= i < len(names)}
    unknown = [w for w in chosen if w not in names and w not in in_range]
    if unknown or not chosen:
        raise UsageError(f"--wrt {','.join(unknown) or wrt}: {target.name} has parameters "
                         f"{', '.join(names)} (indices 0 to {len(names) - 1}, or {-len(names)} to -1)")
    picked = [names[indices[w]] if w in indices else w for w in chosen]
    constants = [w for w in picked if w not in tensors]
    if constants:
        raise UsageError(f"--wrt {','.join(constants)}: a parameter with a default and no annotation is a "
                         f"Python constant, with no gradient; {target.name}'s tensors are {', '.join(tensors)}")
    return picked


@contextlib.contextmanager
def reported_as_user_errors(target: Target) -> Iterator[None]:
    """Errors while compiling or running `target` as UserErrors when they are the user's: at the
    innermost line of the user's code that ran, else (a GradError, ShapeError, ... raised after the
    user's code returned) at the function as a whole. Anything else stays an internal error."""
    try:
        yield
    except UserError:
        raise
    except Exception as e:
        error = user_error(e)
        if error is not None:
            raise error from e
        if type(e).__name__ in USER_ERROR_TYPES:
            raise UserError(str(e), _where(target.fn)) from e
        raise


def lower(target: Target, wrt: list[str]) -> Lowered:
    """The value-and-gradient compilation of a loss; gc.jit's of a function without a scalar
    output, whose forward stages can be inspected all the same."""
    with reported_as_user_errors(target):
        compiled = jit(target.fn) if target.non_scalar_output else value_and_grad(target.fn, wrt=tuple(wrt))
        return compiled.lower()


def require_gradient(target: Target, purpose: str) -> None:
    """Refuse, as the user's error, a function without a gradient for a command that needs one."""
    with reported_as_user_errors(target):
        if target.non_scalar_output:
            raise target.no_gradient(purpose)


def _stage(target: Target, stage: str, available: Sequence[str], listing: str) -> None:
    """Refuse a --stage not in `available`: the gradient's stages of a function without one as the
    user's error, any other as a bad command-line value (`listing` says it, {} the stages)."""
    if stage in available:
        return
    if stage in GRADIENT_STAGES and target.non_scalar_output:
        raise target.no_gradient(f"and no {stage} stage; its stages are {', '.join(available)}")
    raise UsageError(f"--stage {stage}: " + listing.format(", ".join(available)))


# --- commands ---------------------------------------------------------------------------------------

def cmd_dump(args: argparse.Namespace, target: Target, out: Any) -> int:
    lowered = lower(target, _wrt(target, args.wrt))
    available = dumping.stage_order(lowered)
    if args.stage != "all":
        _stage(target, args.stage, available, "stages are {} or all")
    stages = available if args.stage == "all" else [args.stage]
    for stage in stages:
        text = dumping.stage_text(lowered, stage)  # first: the header reports the time it took
        if len(stages) > 1 or args.timings:
            out.write(dumping.header(lowered, stage) + "\n")
        out.write(text)
        if len(stages) > 1:
            out.write("\n")
    rest = dumping.unaccounted_timings(lowered, stages) if len(stages) > 1 else []
    if rest:
        out.write("==== other timings ====\n" + "".join(f"{k:20s} {v * 1e3:8.2f} ms\n" for k, v in rest))
    return 0


def _kernel_clusters(dot: str, graph: Graph) -> str:
    """Draw each fused kernel as a cluster around its ops (unless the DOT already does)."""
    kernels = getattr(graph, "kernels", None)
    if not kernels or "subgraph cluster" in dot:
        return dot
    from .ir.text import value_names
    names = value_names(graph)
    quote = lambda text: '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
    clusters = []
    for k in kernels:
        label = f"{getattr(k, 'name', '')} {getattr(k, 'label', '')}".strip()
        members = " ".join(quote(names[op.result]) + ";" for op in k.ops)
        clusters.append(f"  subgraph {quote('cluster_' + label)} {{ label={quote(label)}; style=dashed; "
                        f"color=\"#888888\"; fontsize=10; {members} }}\n")
    end = dot.rstrip().rindex("}")
    return dot[:end] + "".join(clusters) + dot[end:]


def _with_legend(dot: str, title: str) -> str:
    """A title and colour legend under the graph's first line, so a saved picture explains itself."""
    legend = "blue: forward ops · orange: adjoint (vjp) ops · green: inputs"
    if "subgraph" in dot:
        legend += " · dashed boxes: fused kernels"
    title = title.replace("&", "&amp;").replace("<", "&lt;")
    first_line_end = dot.index("\n") + 1
    return (dot[:first_line_end] + '  labelloc=t; fontname="Helvetica"; fontsize=14;\n'
            f'  label=<{title}<br/><font point-size="11">{legend}</font>>;\n' + dot[first_line_end:])


def cmd_dot(args: argparse.Namespace, target: Target, out: Any) -> int:
    lowered = lower(target, _wrt(target, args.wrt))
    if args.stage is None:
        args.stage = "grad" if "grad" in lowered.graphs else "optimized"
    _stage(target, args.stage, list(lowered.graphs), "graph stages are {}")
    dot = _kernel_clusters(lowered.as_dot(args.stage), lowered.graphs[args.stage])
    dot = _with_legend(dot, f"{target.name}: {args.stage} stage")
    if args.output is None:
        out.write(dot)
        return 0
    path, fmt = args.output
    if fmt in DOT_FORMATS:
        path.write_text(dot, encoding="utf-8")
    else:
        program = shutil.which("dot")
        if program is None:
            raise UserError(f"cannot write {path}: " + INSTALL_GRAPHVIZ)
        run = subprocess.run([program, f"-T{fmt}", "-o", str(path)], input=dot.encode(), capture_output=True)
        if run.returncode != 0:
            raise UserError(f"Graphviz failed to write {path}: {run.stderr.decode(errors='replace').strip()}")
    print(f"wrote {path}", file=sys.stderr)
    return 0


def _dims(target: Target, given: Sequence[tuple[str, int]] | None) -> dict[str, int]:
    """A size for each symbolic dim of target's parameters: --dim's (which must name them), 4 for the rest."""
    types = annotated_types(target.fn) or []  # loading made sure there are annotations
    symbols = list(dict.fromkeys(d for t in types for d in t.symbols))
    for name, size in given or ():
        if name not in symbols:
            have = f"its symbolic dims are {', '.join(symbols)}" if symbols else "it has no symbolic dims"
            raise UsageError(f"--dim {name}={size}: {target.name} has no dim {name}; {have}")
    return bind_symbols(types, dict(given or ()))


def cmd_explain(args: argparse.Namespace, target: Target, out: Any) -> int:
    from .explain import explain
    wrt = _wrt(target, args.wrt)
    dims = _dims(target, args.dim)
    require_gradient(target, "to explain")
    lowered = lower(target, wrt)
    _stage(target, args.stage, list(lowered.graphs), "explain reads a graph stage: {}")
    explanation = explain(lowered, wrt, args.stage)
    out.write(explanation.latex() if args.latex else explanation.text(verbose=args.verbose))
    if args.verify:
        # the same formulas read from a float64 compilation, evaluated against the graph's values
        exact = explain(lower(Target(with_dtype(target.fn, "f64"), target.path, target.name), wrt),
                        wrt, args.stage)
        errors = exact.verify(*exact.example_inputs(dims, args.seed))
        worst = max(errors, key=lambda key: errors[key])
        out.write(f"\nverified: each formula evaluated with numpy on random inputs (float64) matches "
                  f"the compiled graph; worst relative error {errors[worst]:.1e} (%{worst})\n")
        if errors[worst] > 1e-9:
            raise UserError(f"formula %{worst} disagrees with the graph (relative error {errors[worst]:.2e})")
    return 0


def cmd_check(args: argparse.Namespace, target: Target, out: Any) -> int:
    wrt = _wrt(target, args.wrt)
    dims = _dims(target, args.dim)
    require_gradient(target, "to check")
    arrays = random_arguments(annotated_types(target.fn) or [], dims, args.seed)
    with reported_as_user_errors(target):  # the errors of the compilation, as the other commands report them
        result = check_grad(target.fn, *arrays, wrt=wrt, samples=args.samples, tolerance=args.tolerance,
                            seed=args.seed, raise_on_mismatch=False)
    result.setting = ", ".join(["float64"] + [f"{k}={v}" for k, v in dims.items()] + [f"seed {args.seed}"])
    out.write(f"{result}\n")
    return EXIT_OK if result.ok else EXIT_ERROR


def cmd_profile(args: argparse.Namespace, target: Target, out: Any) -> int:
    wrt = _wrt(target, args.wrt)
    dims = _dims(target, args.dim)
    if args.threads is not None:  # before compiling: a bad value is reported first
        from .backends.threads import set_num_threads
        try:
            set_num_threads(args.threads)
        except ValueError as e:  # "threads: expected an int from 1 to N, got M"
            raise UsageError(f"--threads {args.threads}: {str(e).removeprefix('threads: ')}") from e
    lowered = lower(target, wrt)
    arrays = random_arguments(annotated_types(target.fn) or [], dims, args.seed)
    result = lowered.profile(*arrays, calls=args.calls)
    setting = ", ".join(f"{k}={v}" for k, v in dims.items())
    call = "forward call" if target.non_scalar_output else "value and gradient"
    out.write(f"{call}{' with ' + setting if setting else ''}, random inputs\n{result}\n")
    return EXIT_OK


# --- argument parsing -------------------------------------------------------------------------------
# Values checkable without the model are checked by argparse (`type=`): a bad one exits 2 with the
# usage before the model is loaded. Those that depend on the model raise UsageError, to the same effect.

def _dim(item: str) -> tuple[str, int]:
    name, sep, size = item.partition("=")
    if not sep or not name.isidentifier() or not size.isdecimal() or int(size) < 1:
        raise argparse.ArgumentTypeError(f"expected NAME=SIZE with a positive SIZE, e.g. --dim B=8, "
                                         f"got {item!r}")
    return name, int(size)


def _picture(path: str) -> tuple[Path, str]:
    """-o FILE: the path and the format its suffix names."""
    fmt = Path(path).suffix.lstrip(".").lower()
    if fmt not in GRAPHVIZ_FORMATS + DOT_FORMATS:
        suffixes = ", ".join("." + f for f in GRAPHVIZ_FORMATS + DOT_FORMATS)
        raise argparse.ArgumentTypeError(f"{path}: the picture format comes from the suffix: {suffixes}")
    return Path(path), fmt


def _at_least(least: int) -> Callable[[str], int]:
    def integer(text: str) -> int:
        if not re.fullmatch(r"[-+]?\d+", text.strip(), re.ASCII) or int(text) < least:
            raise argparse.ArgumentTypeError(f"expected an integer >= {least}, got {text!r}")
        return int(text)
    return integer


def _tolerance(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value >= 0:  # NaN too: every comparison with it fails, so every check would
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text!r}")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gradc", description="Compile a Python model definition and show the work: the IR after "
        "every pass, the graph as a picture, the gradient as matrix calculus, and a gradient check.",
        epilog="A TARGET is FILE.py:FUNC (a function with gc.f32[...] annotations; FUNC may be left "
               "out when the file has one) or an IR file (.gir) as `gradc dump --stage traced` prints it. "
               "Exit status: 0 success, 1 an error in the model or a failed check, 2 bad command line, "
               "70 an internal error in gradc. GRADC_DUMP=DIR makes every compilation of a program "
               "write each stage to DIR/<function>/.")
    parser.add_argument("--version", action="version", version=f"gradc {_version()}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def command(name: str, help: str, example: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help, description=help, epilog=f"example: {example}",
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
        sub.add_argument("target", metavar="TARGET", help="FILE.py:FUNC or FILE.gir")
        sub.add_argument("--wrt", metavar="U,V", help="the arguments to differentiate with respect to, "
                         "by name or index (0 the first; --wrt=-1 the last) (default: all float arguments)")
        sub.add_argument("--dtype", choices=("f32", "f64"), help="compile in this dtype instead of "
                         "the annotated one")
        sub.add_argument("--traceback", action="store_true", help="show the Python traceback of errors")
        sub.set_defaults(parser=sub)  # for the usage line of a UsageError
        return sub

    dump = command("dump", "Print the IR of a compilation stage, or of all of them in order.",
                   "gradc dump examples/models/seed.py:loss --stage all")
    dump.add_argument("--stage", default="optimized", metavar="STAGE",
                      help="traced, grad, optimized, fused, llvm-unoptimized, llvm, asm (those this "
                           "gradc has), or all (default: optimized)")
    dump.add_argument("--timings", action="store_true", help="print the stage header and pass times "
                      "for a single stage too")
    dump.set_defaults(run=cmd_dump)

    dot = command("dot", "Draw a graph stage: forward ops and adjoint ops in different colours.",
                  "gradc dot examples/models/seed.py:loss --stage grad -o seed.svg")
    dot.add_argument("--stage", default=None,
                     help="a graph stage (default: grad, or optimized for a function without a gradient)")
    dot.add_argument("-o", "--output", metavar="FILE", type=_picture, help="graph.svg, graph.png or "
                     "graph.pdf (needs Graphviz) or graph.dot; without -o the DOT text goes to standard "
                     "output")
    dot.set_defaults(run=cmd_dot)

    ex = command("explain", "Print each gradient as a matrix-calculus formula, read from the "
                 "compiled adjoint graph.", "gradc explain examples/models/seed.py:loss --wrt U,V")
    ex.add_argument("--latex", action="store_true", help="LaTeX (an aligned environment) instead of Unicode")
    ex.add_argument("--stage", default="optimized", help="the graph stage to read (default: optimized)")
    ex.add_argument("-v", "--verbose", action="store_true", help="also show each formula's IR value "
                    "and source line")
    ex.add_argument("--verify", action="store_true", help="evaluate every formula with numpy on random "
                    "inputs and compare it with the compiled graph")
    ex.add_argument("--dim", action="append", metavar="NAME=SIZE", type=_dim,
                    help="size of a symbolic dim for --verify")
    ex.add_argument("--seed", type=_at_least(0), default=0, help="random seed for --verify")
    ex.set_defaults(run=cmd_explain)

    check = command("check", "Compare the compiled gradient with central finite differences in "
                    "float64 on random inputs.", "gradc check examples/models/mlp3.py:loss --dim B=8")
    check.add_argument("--dim", action="append", metavar="NAME=SIZE", type=_dim,
                       help="size of a symbolic dim (default: 4 each)")
    check.add_argument("--samples", type=_at_least(0), default=12, help="coordinates checked per "
                       "gradient, besides two random directions (default: 12)")
    check.add_argument("--tolerance", type=_tolerance, default=1e-5, help="largest relative error "
                       "accepted (default: 1e-5)")
    check.add_argument("--seed", type=_at_least(0), default=0, help="random seed for the inputs")
    check.set_defaults(run=cmd_check)

    prof = command("profile", "Time the compiled value-and-gradient call (the forward call of a "
                   "function without a scalar output) kernel by kernel, inside native code, on random "
                   "inputs.", "gradc profile examples/models/seed.py:loss --dim B=4096")
    prof.add_argument("--dim", action="append", metavar="NAME=SIZE", type=_dim,
                      help="size of a symbolic dim (default: 4 each)")
    prof.add_argument("--calls", type=_at_least(0), default=0,
                      help="calls to time (default: about 0.5 s worth)")
    prof.add_argument("--threads", type=_at_least(1), help="threads to use (default: gc.get_num_threads())")
    prof.add_argument("--seed", type=_at_least(0), default=0, help="random seed for the inputs")
    prof.set_defaults(run=cmd_profile)
    return parser


def _version() -> str:
    try:
        from importlib.metadata import version
        return version("gradc")
    except Exception:
        return "(not installed)"


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    show_traceback = args.traceback or os.environ.get("GRADC_TRACEBACK") == "1"
    if (sys.stdout.encoding or "").lower().replace("-", "") != "utf8":
        sys.stdout.reconfigure(errors="backslashreplace")  # type: ignore[union-attr]  # ∂, ᵀ unencodable
    try:
        target = load_target(args.target, args.dtype)
        return args.run(args, target, sys.stdout)
    except UserError as e:
        if show_traceback:
            traceback.print_exc()
        if isinstance(e, UsageError):
            args.parser.print_usage(sys.stderr)
        print(f"gradc {args.command}: {e}" if not e.where else str(e), file=sys.stderr)
        return EXIT_USAGE if isinstance(e, UsageError) else EXIT_ERROR
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `gradc dump ... | head`: the reader has all it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
    except Exception as e:
        if show_traceback:
            traceback.print_exc()
        print(f"gradc {args.command}: internal error: {type(e).__name__}: {e}\n"
              "this is a bug in gradc; run again with --traceback and report it", file=sys.stderr)
        return EXIT_INTERNAL


if __name__ == "__main__":
    sys.exit(main())
