"""Images as model inputs: a PNG or JPEG request body, decoded with Pillow and formatted like MNIST's digits.

A model takes images when its one input is a float image with one channel: ``[batch, 1, H, W]``, ``[batch, H, W, 1]``
or ``[batch, H, W]`` (the bundled ``digits``: ``[batch, 1, 28, 28]``). An image sent to it is decoded to gray levels
and formatted as MNIST's digits were (``mnist_format``), because that is the only input such a classifier was trained
on: fed the same digits scaled to fill the frame, ``digits`` is right about one time in five.

Decoding is bounded before it starts: ``open_image`` reads only the header (the formats are limited to PNG and JPEG)
and refuses an image of more than ``max_image_pixels`` pixels. An image of at most ``INLINE_PIXELS`` pixels decodes
in well under a millisecond and may be decoded on the event loop; a larger one belongs in a bulk worker process.

Pillow is imported when the REST application is made (``preload``) or the first image arrives, not with the module:
the bulk workers import it only when they get an image.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from service.errors import InvalidArgument, PayloadTooLarge
from service.tensors import Signature, Tensor

if TYPE_CHECKING:
    from PIL.Image import Image as PilImage

Buffer = bytes | bytearray | memoryview

MEDIA_TYPES = ("image/png", "image/jpeg", "image/jpg")
"""Content types of image bodies (``image/jpg`` is not registered, but clients send it)."""
FORMATS = ("PNG", "JPEG")
"""What Pillow may decode; either is accepted whichever of the two the content type named."""
MNIST_FRAME, MNIST_BOX = 28, 20
"""MNIST's digits are size-normalised into a 20x20 box and centred by centre of mass in a 28x28 frame."""
INLINE_PIXELS = 128 * 128
"""Images of at most this many pixels may be decoded and formatted on the event loop: a 128x128 PNG or JPEG takes
0.3-0.4 ms here (opening, decoding, formatting), a small JSON body's order of time. Decoding grows with the pixels
(256x256: ~0.8 ms; 512x512: ~7-9 ms, 2048x2048: ~70-90 ms), so larger ones go to a bulk worker process."""
INK_LEVEL = 0.1
"""The fraction of the image's strongest ink above which a pixel counts for the digit's bounding box (below it:
background noise, JPEG ringing)."""
_FLOAT_TYPES = {"FP16": np.float16, "FP32": np.float32, "FP64": np.float64}


@dataclass(frozen=True)
class ImageInput:
    """A model's one image input: its name, datatype, row shape (``[1, H, W]``, ``[H, W, 1]`` or ``[H, W]``) and
    frame ``(H, W)``."""

    name: str
    datatype: str
    row: tuple[int, ...]
    frame: tuple[int, int]


def image_input(signature: Signature, model: str) -> ImageInput:
    """The model's image input; ``InvalidArgument`` (saying what an image model looks like) when it has none."""
    specs = signature.inputs
    if len(specs) == 1 and specs[0].datatype in _FLOAT_TYPES and specs[0].shape[:1] == (-1,):
        spec = specs[0]
        frame = _frame(spec.shape[1:])
        if frame is not None:
            return ImageInput(spec.name, spec.datatype, spec.shape[1:], frame)
    inputs = ", ".join(f"{s.name!r} {s.datatype} {list(s.shape)}" for s in specs)
    raise InvalidArgument(
        f"request body: {model!r} takes no image (its inputs: {inputs}); an image body is for a model whose one "
        "input is a float image with one channel, [batch, 1, H, W], [batch, H, W, 1] or [batch, H, W]"
    )


def _frame(row: tuple[int, ...]) -> tuple[int, int] | None:
    """(H, W) of an input row ``[1, H, W]``, ``[H, W, 1]`` or ``[H, W]`` with fixed H and W, else ``None``."""
    if len(row) == 3 and row[0] == 1:
        row = row[1:]
    elif len(row) == 3 and row[2] == 1:
        row = row[:2]
    if len(row) != 2 or min(row) < 1:
        return None
    return row[0], row[1]


def media_type(content_type: str | None) -> str | None:
    """The image media type of a ``Content-Type`` header (``None``: not an image); ``InvalidArgument`` for an image
    type other than PNG and JPEG."""
    if content_type is None:
        return None
    kind = content_type.split(";", 1)[0].strip().lower()
    if not kind.startswith("image/"):
        return None
    if kind not in MEDIA_TYPES:
        raise InvalidArgument(f"Content-Type: {kind} is not supported; send image/png or image/jpeg")
    return kind


def open_image(data: Buffer, max_pixels: int) -> PilImage:
    """The image in ``data``, its header read and nothing decoded yet: ``PayloadTooLarge`` when it has more than
    ``max_pixels`` pixels, ``InvalidArgument`` when it is not a PNG or JPEG image."""
    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            # Pillow's own bound (89 M pixels) warns, then refuses; ours is lower, and checked below.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=FORMATS)
    except Image.DecompressionBombError:
        raise PayloadTooLarge(f"request body: an image of more than {max_pixels} pixels (max_image_pixels)") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError) as exc:
        raise InvalidArgument(f"request body: not a PNG or JPEG image ({_reason(exc)})") from None
    width, height = image.size
    if width * height > max_pixels:
        raise PayloadTooLarge(
            f"request body: a {width}x{height} image has {width * height} pixels, more than {max_pixels} "
            "(max_image_pixels)"
        )
    if width < 1 or height < 1:
        raise InvalidArgument(f"request body: an image of {width}x{height} pixels is empty")
    return image


def gray_levels(image: PilImage) -> np.ndarray:
    """The decoded image as uint8 gray levels ``[H, W]`` (ITU-R 601 luma; transparency flattened by
    ``flatten_alpha``); ``InvalidArgument`` when its data is truncated or corrupt."""
    try:
        if image.format == "JPEG":
            image.draft("L", image.size)  # decode the luma plane only: no colour conversion, a third of the memory
        if image.mode in ("I;16", "I;16B", "I;16L", "I"):  # 16-bit gray PNG
            wide = np.asarray(image, dtype=np.float32)
            return np.clip(np.rint(wide * (255 / 65535)), 0, 255).astype(np.uint8)
        if "transparency" in image.info or image.mode == "PA":
            image = image.convert("RGBA")  # a palette's transparency, as an alpha band
        if "A" in image.getbands():
            return flatten_alpha(np.asarray(image.convert("L")), np.asarray(image.getchannel("A")))
        return np.asarray(image.convert("L"))
    except MemoryError:
        raise
    except Exception as exc:  # Pillow's decoders raise OSError, SyntaxError, ValueError, struct.error, ...
        raise InvalidArgument(f"request body: the image data cannot be decoded ({_reason(exc)})") from None


def preload() -> None:
    """Imports Pillow and its PNG and JPEG decoders now (about 25 ms), so that the first image to arrive does not hold
    the event loop that long."""
    from PIL import Image

    Image.preinit()


def check_header(prefix: Buffer, max_pixels: int) -> None:
    """The early refusal of a large image body from its first bytes (a PNG's size is in its first 24 bytes, a JPEG's
    usually within its first few KiB): ``PayloadTooLarge`` for more than ``max_pixels`` pixels, before the rest of
    the body is read. A prefix that does not show the size refuses nothing: the whole body is checked later."""
    with contextlib.suppress(InvalidArgument):
        open_image(prefix, max_pixels)


def as_input(image: PilImage, target: ImageInput) -> Tensor:
    """An opened image as the input tensor of an image model: one row, formatted by ``mnist_format`` in the model's
    frame. Raises as ``gray_levels`` does."""
    frame = mnist_format(gray_levels(image), target.frame)
    return Tensor(target.name, target.datatype, frame.astype(_FLOAT_TYPES[target.datatype]).reshape(1, *target.row))


def image_tensor(data: Buffer, signature: Signature, model: str, max_pixels: int) -> Tensor:
    """An image body as the input tensor of an image model (``as_input``), as a bulk worker decodes it. Raises as
    ``image_input``, ``open_image`` and ``gray_levels`` do."""
    target = image_input(signature, model)
    return as_input(open_image(data, max_pixels), target)


# -- MNIST's format, in numpy ----------------------------------------------------------------------------------------


def flatten_alpha(luma: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """Gray levels of a transparent image (uint8 ``luma`` and ``alpha``, same shape) laid on the background that
    contrasts with its ink: white under dark ink, black under light ink (the ink's level is the mean of the pixels
    at least half opaque), so a digit drawn on a transparent canvas in either colour stays visible."""
    if alpha.size == 0 or int(alpha.min()) == 255:
        return np.asarray(luma, dtype=np.uint8)
    opaque = alpha >= 128
    dark_ink = bool(opaque.any()) and float(luma[opaque].mean()) < 128
    # (luma * alpha + background * (255 - alpha)) / 255, rounded, in 16-bit integers (the sum is at most 255 * 255)
    # and in place: an image may have millions of pixels.
    a = alpha.astype(np.uint16)
    out = luma.astype(np.uint16)
    out *= a
    if dark_ink:
        np.subtract(255, a, out=a)
        a *= 255
        out += a
    del a
    out += 127
    out //= 255
    return out.astype(np.uint8)


def mnist_format(image: np.ndarray, frame: tuple[int, int] = (MNIST_FRAME, MNIST_FRAME)) -> np.ndarray:
    """A gray image of a digit formatted like MNIST's: float32 ``frame`` in [0, 1], a light digit on black.

    ``image`` is ``[h, w]``, uint8 levels or floats in [0, 1], a digit in either polarity. The steps:

    1. the background is the median of the image's border; a light background (above mid-level) means a dark digit,
       and the image is inverted;
    2. the background level is subtracted and the result divided by its maximum, so the strongest ink is 1;
    3. the image is cropped to the digit's bounding box (pixels above ``INK_LEVEL``);
    4. the crop is scaled, keeping its aspect ratio, so that its longer side fills the box -- 20 pixels in a 28-pixel
       frame, ``round(20/28 * min(frame))`` in general -- with a linear filter that averages when it shrinks;
    5. the box is placed in the frame, then moved by whole pixels so that its centre of mass is nearest the frame's
       centre while it stays inside the frame (as ``trainer.data.digits`` placed the training digits).

    An image with no ink at all (a single level) gives a black frame. Raises ``ValueError`` for an image that is not
    2-D or is empty, or a frame smaller than 1x1.
    """
    x = np.asarray(image)
    if x.ndim != 2 or x.size == 0:
        raise ValueError(f"expected a non-empty 2-D image, got shape {x.shape}")
    if len(frame) != 2 or min(frame) < 1:
        raise ValueError(f"expected a frame (height, width) of at least 1x1, got {frame}")
    if x.dtype.kind == "f":
        x = np.clip(x, 0.0, 1.0)
    elif x.dtype != np.uint8:
        raise ValueError(f"expected uint8 levels or floats in [0, 1], got {x.dtype}")
    mid = 127.5 if x.dtype == np.uint8 else 0.5
    border = np.concatenate([x[0], x[-1], x[1:-1, 0], x[1:-1, -1]])
    background = x.dtype.type(np.median(border))
    # Ink above the background, in the image's own dtype until cropped (a 4096x4096 image is 16 MB as uint8).
    ink = background - np.minimum(x, background) if background > mid else np.maximum(x, background) - background
    peak = ink.max()
    out = np.zeros(frame, dtype=np.float32)
    if peak <= 0:
        return out
    strong = ink > peak * INK_LEVEL
    rows, cols = np.flatnonzero(strong.any(axis=1)), np.flatnonzero(strong.any(axis=0))
    crop = ink[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1].astype(np.float32) / np.float32(peak)
    box = max(1, round(MNIST_BOX / MNIST_FRAME * min(frame)))
    h, w = crop.shape
    scale = box / max(h, w)
    size = (min(frame[0], max(1, round(h * scale))), min(frame[1], max(1, round(w * scale))))
    digit = np.clip(resample(crop, size), 0.0, 1.0)
    return _place_by_mass(digit, out)


def resample(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``image`` [h, w] resampled to ``size`` with a separable linear (triangle) filter; when shrinking, the filter
    widens by the shrink factor, so every input pixel counts (an area average, no aliasing). Pixel centres are aligned
    (``(i + 0.5) * scale``), and weights are renormalised at the edges."""
    return _weights(image.shape[0], size[0]) @ image @ _weights(image.shape[1], size[1]).T


def _weights(n_in: int, n_out: int) -> np.ndarray:
    """The ``[n_out, n_in]`` matrix of ``resample`` along one axis."""
    scale = n_in / n_out
    support = max(scale, 1.0)
    centres = (np.arange(n_out, dtype=np.float64) + 0.5) * scale
    taps = np.arange(n_in, dtype=np.float64) + 0.5
    w = np.maximum(0.0, 1.0 - np.abs(taps[None, :] - centres[:, None]) / support)
    return (w / w.sum(axis=1, keepdims=True)).astype(np.float32)


def _place_by_mass(digit: np.ndarray, out: np.ndarray) -> np.ndarray:
    """``digit`` placed in ``out``: centred, then moved by whole pixels towards putting its centre of mass at the
    frame's centre, as far as it stays inside the frame."""
    (h, w), (fh, fw) = digit.shape, out.shape
    top, left = (fh - h) // 2, (fw - w) // 2
    total = float(digit.sum())
    if total > 0:
        com_r = float(digit.sum(axis=1) @ np.arange(h)) / total + top
        com_c = float(digit.sum(axis=0) @ np.arange(w)) / total + left
        top += int(np.clip(np.round((fh - 1) / 2 - com_r), -top, fh - h - top))
        left += int(np.clip(np.round((fw - 1) / 2 - com_c), -left, fw - w - left))
    out[top : top + h, left : left + w] = digit
    return out


def _reason(exc: BaseException) -> str:
    """A short, path-free reason from Pillow's exception."""
    text = str(exc).split("\n", 1)[0][:200]
    return text or type(exc).__name__
