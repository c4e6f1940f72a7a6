"""Image operations the MNIST-C corruptions are built from (``trainer.data.corruptions``): the affine warps about
the image centre, the reference code's line and zigzag strokes, local pixel shuffles, and the float conventions
they share. Images are ``[28, 28]`` float arrays in [0, 1]; ``x`` is the column (to the right), ``y`` the row
(downward), and the image centre is (13.5, 13.5)."""

from __future__ import annotations

import numpy as np
from scipy import ndimage
from skimage import transform

SIZE = 28
CENTER = (SIZE - 1) / 2  # 13.5: the point the reference's affine corruptions keep fixed


def as_image(image: np.ndarray) -> np.ndarray:
    """A float64 copy of a ``[28, 28]`` image; raises ValueError for any other shape."""
    x = np.array(image, dtype=np.float64)
    if x.shape != (SIZE, SIZE):
        raise ValueError(f"expected a [{SIZE}, {SIZE}] image, got shape {x.shape}")
    return x


def clipped(x: np.ndarray) -> np.ndarray:
    return np.clip(x, 0.0, 1.0).astype(np.float32)


def gaussian(x: np.ndarray, sigma: float) -> np.ndarray:
    """skimage.filters.gaussian's defaults (edge-replicating border, truncate at 4 sigma), without its dtype rules."""
    return np.asarray(ndimage.gaussian_filter(x, sigma=sigma, mode="nearest", truncate=4.0))


def warp_about_center(image: np.ndarray, inverse: np.ndarray) -> np.ndarray:
    """Bilinear warp whose inverse map is ``p -> inverse @ (p - c) + c`` in (x, y) coordinates, c = (13.5, 13.5).

    An output pixel at ``p`` takes the (bilinearly interpolated) input value at the mapped point; points outside the
    image read 0. This is skimage's ``warp(x, inverse_map=AffineTransform(...))`` with the translation the reference
    code adds to keep the image centre fixed.
    """
    x = as_image(image)
    a = np.asarray(inverse, dtype=np.float64)
    if a.shape != (2, 2):
        raise ValueError(f"expected a 2x2 inverse map, got shape {a.shape}")
    c = np.array([CENTER, CENTER])
    matrix = np.eye(3)
    matrix[:2, :2] = a
    matrix[:2, 2] = c - a @ c
    out = transform.warp(x, transform.AffineTransform(matrix=matrix), order=1, mode="constant", cval=0.0)
    return clipped(out)


def translate_image(image: np.ndarray, dx: float, dy: float) -> np.ndarray:
    """The image content moved ``dx`` pixels right and ``dy`` pixels down; uncovered pixels are 0."""
    x = as_image(image)
    matrix = np.eye(3)
    matrix[:2, 2] = (-dx, -dy)  # inverse map: an output pixel reads the input dx, dy back
    return clipped(transform.warp(x, transform.AffineTransform(matrix=matrix), order=1, mode="constant", cval=0.0))


def rotate_image(image: np.ndarray, angle: float) -> np.ndarray:
    """The content turned ``angle`` radians counter-clockwise (as displayed) about the image centre, bilinear."""
    cos, sin = np.cos(angle), np.sin(angle)
    # skimage's AffineTransform(rotation=angle) used as the inverse map, as in the reference code.
    return warp_about_center(image, np.array([[cos, -sin], [sin, cos]]))


def shear_image(image: np.ndarray, shear: float) -> np.ndarray:
    """Shear about the image centre with the inverse map of the reference code, ``[[1, -sin s], [0, cos s]]``.

    That is the matrix of ``skimage.transform.AffineTransform(shear=s)`` in the scikit-image releases MNIST-C was
    made with (newer releases define shear through ``tan`` and would give a different image), so it is written out
    here. Rows above the centre slide one way and rows below it the other; the content also stretches vertically by
    ``1 / cos s``.
    """
    return warp_about_center(image, np.array([[1.0, -np.sin(shear)], [0.0, np.cos(shear)]]))


def scale_image(image: np.ndarray, factor: float) -> np.ndarray:
    """The content scaled by ``factor`` about the image centre (``factor < 1`` shrinks it), bilinear."""
    return warp_about_center(image, np.eye(2) / factor)


def line_layer(c0: float, r0: float, c1: float, r1: float) -> np.ndarray:
    """The reference code's line stroke through (column, row) points ``(c0, r0)`` and ``(c1, r1)``.

    A pixel's value is ``1 + log(1 - d / 2.3)`` clipped to [0, 1], where ``d`` is its vertical distance to the
    line (so the stroke is about 3 px tall, full intensity on the line); columns outside
    ``[floor(c0), ceil(c1))`` are 0, and so is everything when the line is vertical (``c0 == c1``).
    """
    if c1 == c0:
        return np.zeros((SIZE, SIZE))
    cols = np.arange(SIZE, dtype=np.float64)[None, :]
    rows = np.arange(SIZE, dtype=np.float64)[:, None]
    slope = (r1 - r0) / (c1 - c0)
    distance = np.clip(np.abs(rows - (slope * (cols - c0) + r0)), 0.0, 2.3 - 1e-10)
    layer = np.clip(np.log1p(-distance / 2.3) + 1.0, 0.0, 1.0)
    layer[:, : int(np.floor(c0))] = 0.0
    layer[:, int(np.ceil(c1)) :] = 0.0
    return layer


def zigzag_layer(r0: int, rise: int) -> np.ndarray:
    """The reference code's zigzag: 2 px teeth of amplitude 2 along a line from (2, r0) to (25, r0 + rise).

    The unrotated path starts at (0, 0), visits ``((2i + 1) * 2, 2 * (-1)**i)`` for each full tooth that fits in
    the line's length ``d``, and, when ``d`` is not a whole number of teeth, ends at ``(d, r / (2 (d - m)))`` with
    ``r`` the last tooth's height and ``m`` the length the full teeth cover (the reference's formula, kept as is).
    The path is turned by the line's angle, moved to (2, r0), and each segment drawn with ``line_layer``.
    """
    tooth, amplitude = 2.0, 2.0
    c0, c1 = 2, 25
    theta = np.arctan(rise / (c1 - c0))
    length = (c1 - c0) / np.cos(theta)
    teeth = int((length - tooth) // (2 * tooth)) + 1
    i = np.arange(teeth)
    path_c = [0.0, *((2 * i + 1) * tooth)]
    path_r = [0.0, *(amplitude * (-1.0) ** i)]
    covered = 2 * tooth * (length // (2 * tooth))
    if length != covered:
        path_c.append(length)
        path_r.append(path_r[-1] / (2 * (length - covered)))
    turn = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    cs, rs = turn @ np.array([path_c, path_r])
    cs, rs = cs + c0, rs + r0
    layer = np.zeros((SIZE, SIZE))
    for k in range(1, cs.size):
        layer += line_layer(cs[k - 1], rs[k - 1], cs[k], rs[k])
    return layer


def local_shuffle(image: np.ndarray, max_delta: int, passes: int, rng: np.random.Generator) -> np.ndarray:
    """Glass blur's pixel shuffle: ``passes`` sweeps of random swaps with nearby pixels, in the reference's order.

    Each sweep visits the pixels row by row and, within a row, column by column, both from ``28 - max_delta`` down to
    ``max_delta + 1`` (27 to 2 for ``max_delta = 1``); with probability 1/2 the pixel swaps with the one
    ``(dy, dx)`` away, both drawn from
    ``{-max_delta, ..., max_delta - 1}`` (numpy's ``randint(-d, d)``, upper bound excluded, as in the reference, so
    swaps go up and left only for ``d = 1``). Swaps are sequential (a pixel moved earlier can move again), so the
    draws are vectorised and only the swaps themselves run in a loop over a flat list.
    """
    x = np.array(image, dtype=np.float64)
    n = x.shape[0]
    positions = np.arange(n - max_delta, max_delta, -1)
    pixels = x.ravel().tolist()
    for _ in range(passes):
        swap = rng.random((positions.size, positions.size)) < 0.5
        delta = rng.integers(-max_delta, max_delta, size=(positions.size, positions.size, 2))
        h, w = np.meshgrid(positions, positions, indexing="ij")
        source = (h * n + w)[swap]
        target = ((h + delta[..., 0]) * n + (w + delta[..., 1]))[swap]
        for p, q in zip(source.tolist(), target.tolist(), strict=True):
            pixels[p], pixels[q] = pixels[q], pixels[p]
    return np.asarray(pixels, dtype=np.float64).reshape(x.shape)
