"""Backends that turn optimized gradc graphs into native code."""
