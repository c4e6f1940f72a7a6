"""MNIST-C corruptions (Mu & Gilmer 2019) as pure, seeded functions on 28x28 images in [0, 1].

Every corruption is ``f(image, rng) -> image``: ``image`` is a ``[28, 28]`` float array in [0, 1], ``rng`` a
``numpy.random.Generator`` (ignored by the deterministic ones), and the result a new ``[28, 28]`` float32 array in
[0, 1]. The parameters are those of the MNIST-C reference code (google-research/mnist-c, ``corruptions.py``) at
the severity each corruption was published with; the per-corruption docstrings give them. Geometric conventions:
``x`` is the column (to the right), ``y`` the row (downward), and the image centre is (13.5, 13.5).

``corrupt_batch`` applies one corruption to a stack of images with one generator per image, derived from
``(seed, index, corruption name)``, so a result depends neither on the batch it was computed in nor on the order.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable

import numpy as np
from scipy import ndimage
from skimage import feature, util

from trainer.data.image_ops import (
    SIZE,
    as_image,
    clipped,
    gaussian,
    line_layer,
    local_shuffle,
    rotate_image,
    scale_image,
    shear_image,
    translate_image,
    zigzag_layer,
)

# Parameters of the reference code at the published severity of each corruption.
SHOT_NOISE_RATE = 3.0  # shot_noise, severity 5: Poisson(x * 3) / 3
IMPULSE_NOISE_AMOUNT = 0.17  # impulse_noise, severity 4: fraction of pixels set to 0 or 1
GLASS_BLUR = (0.7, 1, 2)  # glass_blur, severity 1: (gaussian sigma, max swap distance, swap passes)
MOTION_BLUR = (10.0, 3.0, 45.0)  # motion_blur, severity 1: (radius, sigma, max |angle| in degrees)
SHEAR = 0.4  # shear, severity 2, random sign
SCALE = 0.7  # scale, severity 3: the inverse map zooms by 1 / 0.7
ROTATE = 0.4  # rotate, severity 2: radians, random sign
BRIGHTNESS = 0.5  # brightness, severity 5: added to the HSV value channel
TRANSLATE = 3  # translate, severity 3: pixels along each axis, random signs
FOG = (3.0, 1.4)  # fog, severity 5: (fractal strength, wibble decay)
SPATTER = (0.65, 0.3, 1.0, 0.65, 1.5)  # spatter, severity 4: (mean, std, sigma, threshold, mask sigma)
SPATTER_MASK_THRESHOLD = 0.8
SPATTER_COLOR = 63 / 255
STRIPE_COLUMNS = (slice(0, 7), slice(21, SIZE))  # stripe: columns 0-6 and 21-27 inverted

Corruption = Callable[[np.ndarray, np.random.Generator], np.ndarray]


# ------------------------------------------------------------------------------------- motion blur and fog


def motion_blur_kernel(angle: float, radius: float = MOTION_BLUR[0], sigma: float = MOTION_BLUR[1]) -> np.ndarray:
    """The correlation kernel of ImageMagick's ``MotionBlurImage(radius, sigma, angle)`` as a 2-D array.

    ImageMagick averages ``2 * ceil(radius) + 1`` pixels along a ray: tap ``i`` sits at the offset
    ``(ceil(i cos a - 1/2), ceil(i sin a - 1/2))`` in (x, y) with ``a = angle`` in degrees, and weighs
    ``exp(-i**2 / (2 sigma**2))``, normalised to sum 1 (a one-sided Gaussian, so the blur trails one way). The
    kernel returned is centred: entry ``[r + y, r + x]`` (``r = 2 * ceil(radius)``) holds the weight of offset
    ``(x, y)``, ready for ``scipy.ndimage.correlate``.
    """
    width = int(2 * np.ceil(radius) + 1)
    taps = np.arange(width, dtype=np.float64)
    weights = np.exp(-(taps**2) / (2.0 * sigma**2))
    weights /= weights.sum()
    a = np.deg2rad(angle)
    dx = np.ceil(taps * np.cos(a) - 0.5).astype(np.int64)
    dy = np.ceil(taps * np.sin(a) - 0.5).astype(np.int64)
    reach = width - 1
    kernel = np.zeros((2 * reach + 1, 2 * reach + 1))
    np.add.at(kernel, (reach + dy, reach + dx), weights)
    return kernel


def motion_blur_image(image: np.ndarray, angle: float) -> np.ndarray:
    """ImageMagick's motion blur at the MNIST-C severity (radius 10, sigma 3) along ``angle`` degrees.

    Pixels beyond the border repeat the edge, as ImageMagick's default virtual-pixel method does. Only the rows and
    columns of the kernel that hold taps are used, which keeps this a sub-millisecond correlation.
    """
    x = as_image(image)
    kernel = motion_blur_kernel(angle)
    rows = np.flatnonzero(kernel.any(axis=1))
    cols = np.flatnonzero(kernel.any(axis=0))
    reach = kernel.shape[0] // 2
    # Crop the kernel to its support; `origin` keeps the crop's taps at the same offsets.
    crop = kernel[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    # scipy centres a kernel of length n at n // 2 + origin; the offset-0 tap sits at reach - first.
    origin = (reach - rows[0] - crop.shape[0] // 2, reach - cols[0] - crop.shape[1] // 2)
    blurred = ndimage.correlate(x, crop, mode="nearest", origin=origin)
    return clipped(blurred)


def plasma_fractal(rng: np.random.Generator, mapsize: int = 256, decay: float = FOG[1]) -> np.ndarray:
    """A ``[mapsize, mapsize]`` diamond-square height map in [0, 1] (toroidal), as ImageNet-C/MNIST-C draw fog.

    Starting from a single 0 corner with grid step ``mapsize``, each level sets every square's centre to the mean
    of its 4 corners plus noise, then every edge midpoint to the mean of its 2 corner and 2 centre neighbours plus
    noise; the step then halves and the noise amplitude ``w`` (100 at first) is divided by ``decay``. The noise is
    ``w * U(-w, w)``, i.e. of scale ``w**2``, exactly as in the reference code. The map is finally rescaled to [0, 1].
    """
    if mapsize < 2 or mapsize & (mapsize - 1):
        raise ValueError(f"mapsize must be a power of two >= 2, got {mapsize}")
    height = np.zeros((mapsize, mapsize))
    step, wibble = mapsize, 100.0
    while step >= 2:
        half = step // 2
        corners = height[::step, ::step]
        corner_sum = corners + np.roll(corners, -1, axis=0)
        corner_sum = corner_sum + np.roll(corner_sum, -1, axis=1)
        height[half::step, half::step] = corner_sum / 4 + wibble * rng.uniform(-wibble, wibble, corner_sum.shape)
        centres = height[half::step, half::step]
        corners = height[::step, ::step]
        # Midpoints of horizontal edges (on corner rows): centres above and below, corners left and right.
        vertical = centres + np.roll(centres, 1, axis=0) + corners + np.roll(corners, -1, axis=1)
        height[::step, half::step] = vertical / 4 + wibble * rng.uniform(-wibble, wibble, vertical.shape)
        # Midpoints of vertical edges (on corner columns): centres left and right, corners above and below.
        horizontal = centres + np.roll(centres, 1, axis=1) + corners + np.roll(corners, -1, axis=0)
        height[half::step, ::step] = horizontal / 4 + wibble * rng.uniform(-wibble, wibble, horizontal.shape)
        step //= 2
        wibble /= decay
    height -= height.min()
    return height / height.max()


# ------------------------------------------------------------------------------------------------ parameter draws


def draw_translation(rng: np.random.Generator) -> tuple[int, int]:
    """``(dx, dy)`` for ``translate``: each ``+-3`` px with an independent fair sign."""
    signs = rng.choice(np.array([-1, 1]), size=2)
    return TRANSLATE * int(signs[0]), TRANSLATE * int(signs[1])


def draw_rotation(rng: np.random.Generator) -> float:
    """The angle for ``rotate``: ``+-0.4`` rad with a fair sign."""
    return ROTATE * float(rng.choice(np.array([-1.0, 1.0])))


def draw_shear(rng: np.random.Generator) -> float:
    """The shear for ``shear``: ``+-0.4`` with a fair sign."""
    return SHEAR * float(rng.choice(np.array([-1.0, 1.0])))


def draw_motion_angle(rng: np.random.Generator) -> float:
    """The direction for ``motion_blur``: degrees, uniform on [-45, 45)."""
    return float(rng.uniform(-MOTION_BLUR[2], MOTION_BLUR[2]))


# ----------------------------------------------------------------------------------------------------- corruptions


def identity(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The image unchanged (as float32)."""
    return clipped(as_image(image))


def shot_noise(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Poisson noise: each pixel becomes ``Poisson(3 x) / 3``, clipped to [0, 1] (severity 5, rate 3)."""
    x = as_image(image)
    return clipped(rng.poisson(x * SHOT_NOISE_RATE) / SHOT_NOISE_RATE)


def impulse_noise(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Salt-and-pepper noise: each pixel, with probability 0.17, is set to 1 or 0 with equal odds (severity 4).

    Uses ``skimage.util.random_noise(mode="s&p", amount=0.17)``, which flips each pixel independently.
    """
    x = as_image(image)
    return clipped(util.random_noise(x, mode="s&p", amount=IMPULSE_NOISE_AMOUNT, rng=rng))


def glass_blur(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Glass blur (severity 1): gaussian sigma 0.7, 2 sweeps of local pixel swaps (max distance 1), gaussian 0.7.

    As in the reference, the first blur is quantised down to 8 bits (``uint8(255 y) / 255``) before the shuffle.
    See ``local_shuffle`` for the swap order and distribution.
    """
    sigma, max_delta, passes = GLASS_BLUR
    x = as_image(image)
    blurred = np.floor(np.clip(gaussian(x, sigma), 0.0, 1.0) * 255.0) / 255.0
    shuffled = local_shuffle(blurred, max_delta, passes, rng)
    return clipped(gaussian(shuffled, sigma))


def motion_blur(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Motion blur (severity 1): ImageMagick's one-sided Gaussian (radius 10, sigma 3) at an angle U(-45, 45) deg.

    See ``motion_blur_kernel`` for the kernel; the edge pixels repeat beyond the border.
    """
    return motion_blur_image(image, draw_motion_angle(rng))


def shear(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Shear (severity 2): ``shear_image`` with ``s = +-0.4`` (fair sign) about the centre (13.5, 13.5)."""
    return shear_image(image, draw_shear(rng))


def scale(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Scale (severity 3): the content shrunk to 0.7x about the centre (13.5, 13.5), bilinear."""
    return scale_image(image, SCALE)


def rotate(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Rotate (severity 2): the content turned by ``+-0.4`` rad (fair sign) about the centre, bilinear."""
    return rotate_image(image, draw_rotation(rng))


def brightness(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Brightness (severity 5): 0.5 added to the HSV value, clipped; for a grey image this is ``min(x + 0.5, 1)``.

    The reference goes grey -> RGB -> HSV, adds 0.5 to V, and back; a grey pixel has hue and saturation 0 and value
    ``x``, and the luminance weights sum to 1, so the round trip is the closed form used here (the tests check it
    against scikit-image's colour conversions).
    """
    x = as_image(image)
    return clipped(x + BRIGHTNESS)


def translate(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Translate (severity 3): the content moved 3 px along each axis with independent fair signs (4 outcomes)."""
    dx, dy = draw_translation(rng)
    return translate_image(image, dx, dy)


def stripe(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Stripe: columns 0-6 and 21-27 inverted (``1 - x``), the middle 14 columns unchanged."""
    x = as_image(image)
    for columns in STRIPE_COLUMNS:
        x[:, columns] = 1.0 - x[:, columns]
    return clipped(x)


def fog(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Fog (severity 5): ``x + 3 f`` rescaled by ``max(x) / (max(x) + 3)``, clipped.

    ``f`` is the top-left 28x28 corner of a fresh 256x256 ``plasma_fractal`` with decay 1.4.
    """
    strength, decay = FOG
    x = as_image(image)
    peak = x.max()
    fogged = x + strength * plasma_fractal(rng, 256, decay)[:SIZE, :SIZE]
    return clipped(fogged * peak / (peak + strength))


def spatter(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Spatter (severity 4): blobs of mud colour 63/255 over the image.

    A layer ``N(0.65, 0.3)`` per pixel is blurred (gaussian sigma 1) and thresholded at 0.65; the binary mask of the
    pixels above 0.65 is blurred (sigma 1.5) and zeroed below 0.8; the result ``m`` blends
    ``x (1 - m) + m * 63 / 255``.
    """
    mean, std, sigma, threshold, mask_sigma = SPATTER
    x = as_image(image)
    liquid = gaussian(rng.normal(mean, std, size=x.shape), sigma)
    mask = gaussian((liquid > threshold).astype(np.float64), mask_sigma)
    mask[mask < SPATTER_MASK_THRESHOLD] = 0.0
    return clipped(x * (1.0 - mask) + SPATTER_COLOR * mask)


def dotted_line(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Dotted line: a ``line_layer`` from (0, r0) to (27, r1), r0 and r1 uniform integers in [0, 26], dashed.

    Dashes are 2 px wide every 4 px: columns ``c`` with ``(c // 2)`` even are blanked (0-1, 4-5, ...); the line
    layer itself already stops before column 27. The dashes are added to the image and clipped.
    """
    x = as_image(image)
    r0, r1 = (int(v) for v in rng.integers(0, SIZE - 1, size=2))
    layer = line_layer(0, r0, SIZE - 1, r1)
    layer[:, (np.arange(SIZE) // 2) % 2 == 0] = 0.0
    return clipped(x + layer)


def zigzag(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Zigzag: a ``zigzag_layer`` from (2, r0) to (25, r0 + k), r0 uniform in [0, 26], k in [-5, 4], added, clipped."""
    x = as_image(image)
    r0 = int(rng.integers(0, SIZE - 1))
    rise = int(rng.integers(-5, 5))
    return clipped(x + zigzag_layer(r0, rise))


def canny_edges(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Canny edges: ``skimage.feature.canny`` with its defaults (sigma 1, thresholds 0.1 and 0.2) as a 0/1 image."""
    x = as_image(image)
    return clipped(feature.canny(x).astype(np.float64))


CORRUPTIONS: dict[str, Corruption] = {
    "identity": identity,
    "shot_noise": shot_noise,
    "impulse_noise": impulse_noise,
    "glass_blur": glass_blur,
    "motion_blur": motion_blur,
    "shear": shear,
    "scale": scale,
    "rotate": rotate,
    "brightness": brightness,
    "translate": translate,
    "stripe": stripe,
    "fog": fog,
    "spatter": spatter,
    "dotted_line": dotted_line,
    "zigzag": zigzag,
    "canny_edges": canny_edges,
}
"""All 15 MNIST-C corruptions and ``identity``, in the order of the MNIST-C code."""

RANDOM_CORRUPTIONS = frozenset(
    {
        "shot_noise",
        "impulse_noise",
        "glass_blur",
        "motion_blur",
        "shear",
        "rotate",
        "translate",
        "fog",
        "spatter",
        "dotted_line",
        "zigzag",
    }
)
"""The corruptions whose result depends on the generator."""


def image_rng(seed: int, index: int, name: str) -> np.random.Generator:
    """The generator ``corrupt_batch`` gives image ``index`` for corruption ``name`` under ``seed``."""
    if seed < 0 or index < 0:
        raise ValueError(f"seed and index must be non-negative, got seed={seed}, index={index}")
    return np.random.default_rng([seed, index, zlib.crc32(name.encode())])


def corrupt_batch(images: np.ndarray, name: str, seed: int = 0, *, start: int = 0) -> np.ndarray:
    """Applies corruption ``name`` to each of ``images`` ``[n, 28, 28]`` (float in [0, 1]); returns float32.

    Image ``i`` gets the generator ``image_rng(seed, start + i, name)``, so corrupting a dataset in chunks (passing
    each chunk's offset as ``start``) gives the same result as corrupting it at once.
    """
    if name not in CORRUPTIONS:
        raise ValueError(f"unknown corruption {name!r}; known: {', '.join(CORRUPTIONS)}")
    batch = np.asarray(images)
    if batch.ndim != 3 or batch.shape[1:] != (SIZE, SIZE):
        raise ValueError(f"expected images of shape [n, {SIZE}, {SIZE}], got {batch.shape}")
    fn = CORRUPTIONS[name]
    out = np.empty(batch.shape, dtype=np.float32)
    for i, image in enumerate(batch):
        out[i] = fn(image, image_rng(seed, start + i, name))
    return out
