"""digits-C: scikit-learn's handwritten digits placed like MNIST, and their MNIST-C corruptions.

MNIST cannot be downloaded here, so the robustness experiment runs on ``sklearn.datasets.load_digits`` (1797 real
handwritten digits, 8x8, bundled with scikit-learn). Each digit is upsampled to 20x20 (MNIST's digits fit a 20x20
box) and placed in a 28x28 frame by its centre of mass, as MNIST's were; a fixed stratified split gives 1437
training and 360 test images; ``digits_c`` applies one MNIST-C corruption to a split. Nothing touches the disk.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Literal

import numpy as np
from skimage.transform import resize

# scikit-learn ships no type information; `unused-ignore` keeps this valid once pyproject.toml ignores sklearn.*.
from sklearn.datasets import load_digits  # type: ignore[import-untyped, unused-ignore]
from sklearn.model_selection import train_test_split  # type: ignore[import-untyped, unused-ignore]

from trainer.data.corruptions import CORRUPTIONS, SIZE, corrupt_batch

Upsample = Literal["nearest", "bilinear", "bicubic"]
Center = Literal["mass", "box"]
Split = Literal["train", "test", "all"]

BOX = 20  # MNIST digits are size-normalised to fit a 20x20 box
N_DIGITS = 1797
N_TEST = 360
N_TRAIN = N_DIGITS - N_TEST  # 1437
SPLIT_SEED = 0
DIGITS_C_CORRUPTIONS: list[str] = list(CORRUPTIONS)
"""The corruptions digits-C offers: ``identity`` and the 15 of MNIST-C."""

_ORDER = {"nearest": 0, "bilinear": 1, "bicubic": 3}
_MAX_INK = 16.0  # load_digits counts set pixels of a 4x4 block: 0..16


def _place(box: np.ndarray, center: Center) -> np.ndarray:
    """A ``BOX x BOX`` digit in a 28x28 zero frame: centred, or moved by whole pixels so its centre of mass is
    nearest the frame centre (13.5, 13.5) while the box stays inside the frame."""
    margin = (SIZE - BOX) // 2
    top, left = margin, margin
    if center == "mass":
        total = box.sum()
        if total > 0:
            rows, cols = np.indices(box.shape)
            com_r = (rows * box).sum() / total + margin
            com_c = (cols * box).sum() / total + margin
            top += int(np.clip(np.round((SIZE - 1) / 2 - com_r), -margin, margin))
            left += int(np.clip(np.round((SIZE - 1) / 2 - com_c), -margin, margin))
    frame = np.zeros((SIZE, SIZE), dtype=np.float32)
    frame[top : top + BOX, left : left + BOX] = box
    return frame


@lru_cache(maxsize=8)
def _digits_28(upsample: Upsample, center: Center) -> tuple[np.ndarray, np.ndarray]:
    if upsample not in _ORDER:
        raise ValueError(f"upsample must be one of {sorted(_ORDER)}, got {upsample!r}")
    if center not in ("mass", "box"):
        raise ValueError(f"center must be 'mass' or 'box', got {center!r}")
    bunch = load_digits()
    small = np.asarray(bunch.images, dtype=np.float64) / _MAX_INK
    images = np.empty((small.shape[0], SIZE, SIZE), dtype=np.float32)
    for i, digit in enumerate(small):
        box = resize(digit, (BOX, BOX), order=_ORDER[upsample], mode="edge", anti_aliasing=False, clip=True)
        images[i] = _place(np.clip(box, 0.0, 1.0), center)
    labels = np.asarray(bunch.target, dtype=np.int64)
    images.setflags(write=False)
    labels.setflags(write=False)
    return images, labels


def load_digits_28(upsample: Upsample = "bilinear", center: Center = "mass") -> tuple[np.ndarray, np.ndarray]:
    """All 1797 digits as float32 ``[1797, 28, 28]`` in [0, 1] and their int64 labels ``[1797]``.

    Each 8x8 digit (ink counts 0..16, divided by 16) is resized to 20x20 with ``upsample`` interpolation
    (``skimage.transform.resize``; nearest, bilinear or bicubic, clipped to [0, 1]) and placed in a 28x28 frame:
    ``center="mass"`` moves it by whole pixels so its centre of mass lands nearest the frame centre, as MNIST did
    (the 20x20 box is kept inside the frame); ``center="box"`` pads it by 4 px on each side. Computed once per
    argument pair and kept in memory; the arrays returned are fresh copies.
    """
    images, labels = _digits_28(upsample, center)
    return images.copy(), labels.copy()


@lru_cache(maxsize=1)
def _split_indices() -> tuple[np.ndarray, np.ndarray]:
    labels = np.asarray(load_digits().target, dtype=np.int64)
    train, test = train_test_split(
        np.arange(labels.size), test_size=N_TEST, stratify=labels, random_state=SPLIT_SEED, shuffle=True
    )
    train, test = np.sort(train), np.sort(test)
    train.setflags(write=False)
    test.setflags(write=False)
    return train, test


def split_indices() -> tuple[np.ndarray, np.ndarray]:
    """The fixed train and test indices into ``load_digits_28``'s arrays (1437 and 360, stratified by label, seed 0,
    each sorted)."""
    train, test = _split_indices()
    return train.copy(), test.copy()


def digits_split(
    split: Split = "test", upsample: Upsample = "bilinear", center: Center = "mass"
) -> tuple[np.ndarray, np.ndarray]:
    """The clean images and labels of one split: ``"train"`` (1437), ``"test"`` (360) or ``"all"`` (1797)."""
    images, labels = _digits_28(upsample, center)
    if split == "all":
        return images.copy(), labels.copy()
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train', 'test' or 'all', got {split!r}")
    train, test = _split_indices()
    index = train if split == "train" else test
    return images[index], labels[index]


def digits_c(
    corruption: str,
    split: Split = "test",
    seed: int = 0,
    *,
    upsample: Upsample = "bilinear",
    center: Center = "mass",
) -> tuple[np.ndarray, np.ndarray]:
    """One split of digits-C: the split's images with ``corruption`` applied (float32 ``[n, 28, 28]`` in [0, 1]) and
    their int64 labels.

    Image ``i`` of the split is corrupted with ``corruptions.image_rng(seed, i, corruption)``, so the result is a
    function of the arguments alone. ``corruption`` is one of ``DIGITS_C_CORRUPTIONS``.
    """
    if corruption not in CORRUPTIONS:
        raise ValueError(f"unknown corruption {corruption!r}; known: {', '.join(DIGITS_C_CORRUPTIONS)}")
    images, labels = digits_split(split, upsample, center)
    return corrupt_batch(images, corruption, seed), labels
