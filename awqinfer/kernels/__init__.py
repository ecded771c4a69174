"""Numba kernels: plain functions over numpy arrays, knowing nothing of the engine.

Every kernel writes into an ``out`` array the caller allocated and trusts the
shapes in its docstring: the engine validates shapes, dtypes and indices before
calling, because Numba does not check bounds.
"""
