"""Loaders for the real data, where a copy exists on disk: MNIST-C's ``.npy`` layout and MNIST's IDX files.

Nothing here downloads. MNIST-C (Mu & Gilmer 2019, zenodo record 3237938) unpacks to
``<root>/<corruption>/{train,test}_{images,labels}.npy`` with uint8 images ``(n, 28, 28, 1)`` and labels ``(n,)``;
MNIST ships as IDX files (``train-images-idx3-ubyte``, ``t10k-labels-idx1-ubyte``, ..., optionally gzipped). Both
loaders return float32 images ``[n, 28, 28]`` in [0, 1] and int64 labels, like ``trainer.data.digits``.
"""

from __future__ import annotations

import gzip
from pathlib import Path
from typing import Any, Literal

import numpy as np

MNIST_C_CORRUPTIONS: list[str] = [
    "identity",
    "shot_noise",
    "impulse_noise",
    "glass_blur",
    "motion_blur",
    "shear",
    "scale",
    "rotate",
    "brightness",
    "translate",
    "stripe",
    "fog",
    "spatter",
    "dotted_line",
    "zigzag",
    "canny_edges",
]
"""The directories of the MNIST-C release: ``identity`` (clean MNIST) and the 15 corruptions."""

IDX_IMAGES_MAGIC = 2051  # 0x00000803: unsigned bytes, 3 dimensions
IDX_LABELS_MAGIC = 2049  # 0x00000801: unsigned bytes, 1 dimension
MNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}

Split = Literal["train", "test"]

_IDX_DTYPES: dict[int, np.dtype[Any]] = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


class DataFormatError(ValueError):
    """A data file exists but does not hold what its name promises (bad magic number, shape, dtype or size)."""


def _check_split(split: str) -> None:
    if split not in MNIST_FILES:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")


def _as_float_images(images: np.ndarray, path: Path) -> np.ndarray:
    if images.dtype != np.uint8:
        raise DataFormatError(f"{path}: expected uint8 images, got {images.dtype}")
    if images.ndim == 4 and images.shape[3] == 1:
        images = images[..., 0]
    if images.ndim != 3 or images.shape[1:] != (28, 28):
        raise DataFormatError(f"{path}: expected images of shape (n, 28, 28[, 1]), got {images.shape}")
    return (images.astype(np.float32) / np.float32(255.0)).astype(np.float32)


def _as_labels(labels: np.ndarray, n: int, path: Path) -> np.ndarray:
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise DataFormatError(f"{path}: expected integer labels of shape (n,), got {labels.dtype} {labels.shape}")
    if labels.shape[0] != n:
        raise DataFormatError(f"{path}: {labels.shape[0]} labels for {n} images")
    return labels.astype(np.int64)


def load_mnist_c(root: str | Path, corruption: str, split: Split = "test") -> tuple[np.ndarray, np.ndarray]:
    """One split of one MNIST-C corruption: float32 images ``[n, 28, 28]`` in [0, 1] and int64 labels ``[n]``.

    Reads ``<root>/<corruption>/<split>_images.npy`` (uint8, ``(n, 28, 28, 1)`` or ``(n, 28, 28)``) and
    ``<split>_labels.npy``; raises FileNotFoundError naming a missing file and DataFormatError for a wrong dtype,
    shape or count. Arrays are loaded without pickle.
    """
    _check_split(split)
    folder = Path(root) / corruption
    paths = [folder / f"{split}_{kind}.npy" for kind in ("images", "labels")]
    for path in paths:
        if not path.is_file():
            hint = f" (known corruptions: {', '.join(MNIST_C_CORRUPTIONS)})" if not folder.is_dir() else ""
            raise FileNotFoundError(f"MNIST-C file not found: {path}{hint}")
    image_path, label_path = paths
    images = _as_float_images(np.load(image_path, allow_pickle=False), image_path)
    labels = _as_labels(np.load(label_path, allow_pickle=False), images.shape[0], label_path)
    return images, labels


def read_idx(path: str | Path, magic: int | None = None) -> np.ndarray:
    """The array in an IDX file (gzipped when the name ends in ``.gz``).

    The header is two zero bytes, a type byte (0x08 uint8, 0x09 int8, 0x0B int16, 0x0C int32, 0x0D float32,
    0x0E float64, big-endian), a byte with the number of dimensions, then one big-endian uint32 per dimension; the
    data follow. ``magic``, when given, is the header's first 4 bytes as a big-endian integer that the file must
    carry (2051 for MNIST images, 2049 for labels). Raises DataFormatError naming the file for a wrong magic number,
    an unknown type, or data whose length does not match the dimensions.
    """
    path = Path(path)
    raw = gzip.decompress(path.read_bytes()) if path.name.endswith(".gz") else path.read_bytes()
    if len(raw) < 4:
        raise DataFormatError(f"{path}: {len(raw)} bytes is too short for an IDX header")
    found = int.from_bytes(raw[:4], "big")
    if magic is not None and found != magic:
        raise DataFormatError(f"{path}: bad IDX magic number {found} (0x{found:08x}), expected {magic} (0x{magic:08x})")
    if raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise DataFormatError(f"{path}: bad IDX magic number {found} (0x{found:08x}): not an IDX header")
    dtype, ndim = _IDX_DTYPES[raw[2]], raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataFormatError(f"{path}: header announces {ndim} dimensions but the file has {len(raw)} bytes")
    shape = tuple(int.from_bytes(raw[4 + 4 * k : 8 + 4 * k], "big") for k in range(ndim))
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(raw) - header != expected:
        raise DataFormatError(
            f"{path}: dimensions {shape} need {expected} bytes of {dtype} data, found {len(raw) - header}"
        )
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def _idx_path(root: Path, name: str) -> Path:
    for candidate in (root / name, root / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"MNIST file not found: {root / name} (nor {name}.gz)")


def load_mnist_idx(root: str | Path, split: Split = "train") -> tuple[np.ndarray, np.ndarray]:
    """MNIST from its IDX files in ``root``: float32 images ``[n, 28, 28]`` in [0, 1] and int64 labels ``[n]``.

    Reads ``train-images-idx3-ubyte`` and ``train-labels-idx1-ubyte`` (``t10k-...`` for ``split="test"``), each
    plain or with a ``.gz`` suffix; checks the magic numbers (2051 and 2049), the sizes, and that both files hold the
    same number of items.
    """
    _check_split(split)
    root = Path(root)
    image_name, label_name = MNIST_FILES[split]
    image_path, label_path = _idx_path(root, image_name), _idx_path(root, label_name)
    images = _as_float_images(read_idx(image_path, IDX_IMAGES_MAGIC), image_path)
    labels = _as_labels(read_idx(label_path, IDX_LABELS_MAGIC), images.shape[0], label_path)
    return images, labels
