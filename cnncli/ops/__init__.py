"""Numerical kernels of the engine: pure NCHW functions, forward and backward.

Each ``*_forward`` returns ``(y, cache)`` and each ``*_backward`` takes ``(dy, cache)``;
caches are NamedTuples. float32 stays float32 and float64 stays float64. ``reference``
holds slow loop-based twins that the tests use as oracles. Numba is imported lazily, by
the functions that need the compiled kernels in ``_kernels``.
"""
