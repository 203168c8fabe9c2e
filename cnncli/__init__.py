"""cnncli: convolutional neural networks from the command line.

The library does the work and returns data; ``cnncli.cli`` only parses options, calls it
and renders. Heavy modules (numba, the engine) are imported lazily so that ``cnn --help``
and ``cnn shapes`` start fast.
"""

__version__ = "0.1.0"
