"""Data for the supervised robustness experiment: MNIST-C corruptions, digits-C, and MNIST / MNIST-C loaders.

``corruptions`` holds the 15 MNIST-C corruptions (and ``identity``) as seeded functions on 28x28 images in [0, 1];
``digits`` builds digits-C from scikit-learn's bundled handwritten digits (MNIST itself cannot be downloaded here);
``mnist_c`` reads the real MNIST-C and MNIST files when a copy is on disk; ``grid`` draws the corruptions.
"""

from trainer.data.corruptions import CORRUPTIONS, RANDOM_CORRUPTIONS, corrupt_batch, image_rng
from trainer.data.digits import (
    DIGITS_C_CORRUPTIONS,
    N_TEST,
    N_TRAIN,
    digits_c,
    digits_split,
    load_digits_28,
    split_indices,
)
from trainer.data.mnist_c import MNIST_C_CORRUPTIONS, DataFormatError, load_mnist_c, load_mnist_idx, read_idx

__all__ = [
    "CORRUPTIONS",
    "DIGITS_C_CORRUPTIONS",
    "MNIST_C_CORRUPTIONS",
    "N_TEST",
    "N_TRAIN",
    "RANDOM_CORRUPTIONS",
    "DataFormatError",
    "corrupt_batch",
    "digits_c",
    "digits_split",
    "image_rng",
    "load_digits_28",
    "load_mnist_c",
    "load_mnist_idx",
    "read_idx",
    "split_indices",
]
