"""Training data: readers for MNIST IDX files, ``.npz`` archives and image folders.

:func:`load_dataset` is the entry point; it returns fitted, split and normalised arrays and
a sentence (``fit_rule``) saying how. Pillow is imported only when image files are read.
"""

from cnncli.data.dataset import (
    Dataset,
    DataSplits,
    Normalizer,
    batches,
    detect_format,
    load_dataset,
    num_batches,
)

__all__ = [
    "DataSplits",
    "Dataset",
    "Normalizer",
    "batches",
    "detect_format",
    "load_dataset",
    "num_batches",
]
