"""gradc's IR: typed graphs of registered ops, their text form, verifier and reference interpreter."""
from .builder import Builder, Sym
from .graph import Graph, Op, Value, VerificationError, verify
from .interpreter import interpret
from .ops import OPS, OpDef
from .text import ParseError, parse, print_graph
from .types import ShapeError, TensorType

__all__ = ["Builder", "Sym", "Graph", "Op", "Value", "VerificationError", "verify", "interpret",
           "OPS", "OpDef", "ParseError", "parse", "print_graph", "ShapeError", "TensorType"]
