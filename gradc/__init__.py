"""gradc: compile Python neural-network definitions into native forward and backward code."""
from . import ir
