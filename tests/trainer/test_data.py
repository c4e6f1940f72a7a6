"""digits-C and MNIST-C: corruptions against closed forms and independent oracles, the digits split, the loaders."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage, stats
from skimage import color

from trainer.cli import main as trainer_main
from trainer.data import corruptions, image_ops
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
from trainer.data.grid import render_grid
from trainer.data.mnist_c import (
    IDX_IMAGES_MAGIC,
    IDX_LABELS_MAGIC,
    MNIST_C_CORRUPTIONS,
    DataFormatError,
    load_mnist_c,
    load_mnist_idx,
    read_idx,
)

TABLE_1 = [
    "identity",
    "shot_noise",
    "glass_blur",
    "motion_blur",
    "shear",
    "scale",
    "rotate",
    "translate",
    "stripe",
    "dotted_line",
    "spatter",
]


@pytest.fixture(scope="module")
def digit() -> np.ndarray:
    """A real test digit (a 3), float64 [28, 28]."""
    images, labels = digits_split("test")
    return images[np.flatnonzero(labels == 3)[0]].astype(np.float64)


def blob(cx: float, cy: float, sx: float = 2.0, sy: float = 2.0) -> np.ndarray:
    """A smooth Gaussian blob centred at column cx, row cy."""
    rows, cols = np.indices((28, 28), dtype=np.float64)
    return np.exp(-((cols - cx) ** 2) / (2 * sx**2) - (rows - cy) ** 2 / (2 * sy**2))


def center_of_mass(image: np.ndarray) -> np.ndarray:
    """(x, y) = (column, row) centre of mass."""
    r, c = ndimage.center_of_mass(image)
    return np.array([c, r])


# --------------------------------------------------------------------------------------------- every corruption


def test_registry_holds_all_mnist_c_corruptions() -> None:
    assert set(TABLE_1) <= set(CORRUPTIONS)
    assert list(CORRUPTIONS) == MNIST_C_CORRUPTIONS == DIGITS_C_CORRUPTIONS
    assert len(CORRUPTIONS) == 16
    assert set(CORRUPTIONS) > RANDOM_CORRUPTIONS


@pytest.mark.parametrize("name", list(CORRUPTIONS))
def test_corruption_contract(name: str, digit: np.ndarray) -> None:
    fn = CORRUPTIONS[name]
    before = digit.copy()
    out = fn(digit, np.random.default_rng(0))
    assert out.shape == (28, 28)
    assert out.dtype == np.float32
    assert np.isfinite(out).all()
    assert out.min() >= 0.0
    assert out.max() <= 1.0
    np.testing.assert_array_equal(digit, before)  # pure: the input is not modified
    np.testing.assert_array_equal(out, fn(digit, np.random.default_rng(0)))  # same seed, same image
    outputs = {fn(digit, np.random.default_rng(seed)).tobytes() for seed in range(10)}
    if name in RANDOM_CORRUPTIONS:
        assert len(outputs) > 1, f"{name} gave one image for 10 seeds"
    else:
        assert len(outputs) == 1, f"{name} depends on the generator"
    if name != "identity":
        assert not np.array_equal(out, digit.astype(np.float32)), f"{name} left the digit unchanged"


@pytest.mark.parametrize("name", list(CORRUPTIONS))
def test_corruption_rejects_other_shapes(name: str) -> None:
    with pytest.raises(ValueError, match=r"expected a \[28, 28\] image, got shape \(32, 32\)"):
        CORRUPTIONS[name](np.zeros((32, 32)), np.random.default_rng(0))


def test_identity_returns_the_input(digit: np.ndarray) -> None:
    out = corruptions.identity(digit, np.random.default_rng(0))
    np.testing.assert_array_equal(out, digit.astype(np.float32))
    assert out is not digit


# ------------------------------------------------------------------------------------------- closed forms


def test_stripe_inverts_the_outer_columns(digit: np.ndarray) -> None:
    out = corruptions.stripe(digit, np.random.default_rng(0))
    expected = digit.copy()
    expected[:, 0:7] = 1.0 - expected[:, 0:7]
    expected[:, 21:28] = 1.0 - expected[:, 21:28]
    np.testing.assert_allclose(out, expected, atol=1e-7)
    np.testing.assert_array_equal(out[:, 7:21], digit[:, 7:21].astype(np.float32))


def test_brightness_matches_the_hsv_round_trip_of_the_reference() -> None:
    x = np.random.default_rng(1).random((28, 28))
    hsv = color.rgb2hsv(color.gray2rgb(x))
    hsv[..., 2] = np.clip(hsv[..., 2] + 0.5, 0, 1)
    reference = np.clip(color.rgb2gray(color.hsv2rgb(hsv)), 0, 1)
    np.testing.assert_allclose(corruptions.brightness(x, np.random.default_rng(0)), reference, atol=1e-6)


@pytest.mark.parametrize("seed", range(8))
def test_translate_moves_the_center_of_mass_by_the_drawn_shift(seed: int) -> None:
    images, _ = load_digits_28(center="box")  # 4 px margins: a 3 px shift keeps all the ink
    image = images[seed].astype(np.float64)
    dx, dy = corruptions.draw_translation(np.random.default_rng(seed))
    assert abs(dx) == 3
    assert abs(dy) == 3
    out = corruptions.translate(image, np.random.default_rng(seed))
    np.testing.assert_allclose(center_of_mass(out) - center_of_mass(image), [dx, dy], atol=1e-5)
    np.testing.assert_allclose(out.sum(), image.sum(), rtol=1e-5)
    np.testing.assert_allclose(out, np.roll(image, (dy, dx), axis=(0, 1)), atol=1e-6)


def test_translate_draws_all_four_directions_evenly() -> None:
    draws = [corruptions.draw_translation(np.random.default_rng(s)) for s in range(400)]
    counts = {d: draws.count(d) for d in [(3, 3), (3, -3), (-3, 3), (-3, -3)]}
    assert sum(counts.values()) == 400
    assert stats.chisquare(list(counts.values())).pvalue > 1e-3


@pytest.mark.parametrize("seed", range(4))
def test_rotate_matches_scipy_rotate_by_the_drawn_angle(seed: int, digit: np.ndarray) -> None:
    angle = corruptions.draw_rotation(np.random.default_rng(seed))
    assert abs(angle) == pytest.approx(0.4)
    out = corruptions.rotate(digit, np.random.default_rng(seed))
    expected = ndimage.rotate(digit, np.degrees(angle), reshape=False, order=1, mode="constant")
    np.testing.assert_allclose(out, np.clip(expected, 0, 1), atol=1e-5)


@pytest.mark.parametrize("angle", [0.4, -0.4])
def test_rotate_turns_the_principal_axis(angle: float) -> None:
    bar = blob(13.5, 13.5, sx=6.0, sy=1.5)  # long axis along x
    out = image_ops.rotate_image(bar, angle)
    rows, cols = np.indices(out.shape, dtype=np.float64)
    w = out / out.sum()
    u, v = cols - (w * cols).sum(), -(rows - (w * rows).sum())  # v points up: counter-clockwise is positive
    cov = np.array([[(w * u * u).sum(), (w * u * v).sum()], [(w * u * v).sum(), (w * v * v).sum()]])
    evals, evecs = np.linalg.eigh(cov)
    major = evecs[:, np.argmax(evals)]
    measured = np.arctan(major[1] / major[0])
    assert measured == pytest.approx(angle, abs=0.02)


@pytest.mark.parametrize("shear", [0.4, -0.4])
def test_shear_moves_an_off_center_blob_by_the_inverse_of_the_reference_map(shear: float) -> None:
    # The reference's inverse map is A = [[1, -sin s], [0, cos s]]; content at offset q from the centre lands at
    # A^-1 q = (q_x + tan(s) q_y, q_y / cos(s)).
    offset = np.array([-2.0, 5.0])
    image = blob(13.5 + offset[0], 13.5 + offset[1], 1.5, 1.5)
    out = image_ops.shear_image(image, shear)
    expected = np.array([offset[0] + np.tan(shear) * offset[1], offset[1] / np.cos(shear)])
    np.testing.assert_allclose(center_of_mass(out) - 13.5, expected, atol=0.05)
    # the mass grows by the Jacobian 1 / cos(s)
    assert out.sum() == pytest.approx(image.sum() / np.cos(shear), rel=0.01)


def test_shear_draws_a_random_sign(digit: np.ndarray) -> None:
    shears = {corruptions.draw_shear(np.random.default_rng(s)) for s in range(20)}
    assert shears == {0.4, -0.4}
    for seed in range(4):
        s = corruptions.draw_shear(np.random.default_rng(seed))
        np.testing.assert_array_equal(
            corruptions.shear(digit, np.random.default_rng(seed)), image_ops.shear_image(digit, s)
        )


def test_scale_shrinks_the_digit_by_0_7_about_the_center(digit: np.ndarray) -> None:
    out = corruptions.scale(digit, np.random.default_rng(0))

    def extent(image: np.ndarray) -> np.ndarray:
        rows, cols = np.nonzero(image > 0.5)
        return np.array([cols.max() - cols.min() + 1, rows.max() - rows.min() + 1], dtype=np.float64)

    np.testing.assert_allclose(extent(out) / extent(digit), 0.7, atol=0.08)
    # second moments shrink by exactly the factor for a smooth image; the mass by its square
    image = blob(15.0, 11.0, 3.0, 2.0)
    small = image_ops.scale_image(image, 0.7)
    np.testing.assert_allclose(center_of_mass(small) - 13.5, 0.7 * (np.array([15.0, 11.0]) - 13.5), atol=0.02)
    assert small.sum() == pytest.approx(0.49 * image.sum(), rel=0.01)


def test_shot_noise_is_poisson_with_rate_three() -> None:
    levels = np.array([0.0, 0.05, 0.1, 0.2, 0.35, 0.5, 0.75, 1.0])
    image = np.repeat(np.resize(levels, 28)[None, :], 28, axis=0)  # each column one level
    samples = 300
    out = np.stack([corruptions.shot_noise(image, np.random.default_rng(s)) for s in range(samples)]).astype(np.float64)
    k = np.arange(0, 40)
    for level in levels:
        values = out[:, image == level].ravel()
        # Exact moments of min(Poisson(3x) / 3, 1).
        pmf = stats.poisson.pmf(k, 3 * level) if level > 0 else (k == 0).astype(float)
        clipped = np.minimum(k / 3, 1.0)
        mean = (pmf * clipped).sum()
        var = (pmf * clipped**2).sum() - mean**2
        se = np.sqrt(max(var, 1e-12) / values.size)
        assert abs(values.mean() - mean) < 5 * se + 1e-9, level
        if level > 0:
            assert values.var() == pytest.approx(var, rel=0.1), level
        if 0 < level <= 0.1:  # clipping is negligible: the Poisson moments themselves
            assert values.mean() == pytest.approx(level, abs=5 * se)
            assert values.var() == pytest.approx(level / 3, rel=0.1)
    assert set(np.unique(out * 3).round(4)) <= {0.0, 1.0, 2.0, 3.0}


def test_impulse_noise_flips_17_percent_to_black_or_white() -> None:
    image = np.full((28, 28), 0.5)
    out = np.stack([corruptions.impulse_noise(image, np.random.default_rng(s)) for s in range(50)])
    assert set(np.unique(out)) == {0.0, 0.5, 1.0}
    n = out.size
    for value, p in [(0.0, 0.085), (1.0, 0.085), (0.5, 0.83)]:
        frac = (out == value).mean()
        assert abs(frac - p) < 5 * np.sqrt(p * (1 - p) / n), value


def test_local_shuffle_permutes_pixels_near_where_they_were() -> None:
    image = np.random.default_rng(0).random((28, 28))
    out = image_ops.local_shuffle(image, 1, 2, np.random.default_rng(1))
    np.testing.assert_array_equal(np.sort(out.ravel()), np.sort(image.ravel()))  # a permutation
    assert (out != image).mean() > 0.3
    # swaps only reach up and left by one (randint(-1, 1) draws -1 or 0) from rows and columns 2..27
    np.testing.assert_array_equal(out[0], image[0])
    np.testing.assert_array_equal(out[:, 0], image[:, 0])
    # a pixel can travel up/left through a chain of swaps, but down/right only by being swapped back from a
    # position that the sweep has passed: at most one row and column per pass
    positions = {v: divmod(i, 28) for i, v in enumerate(image.ravel())}
    for i, v in enumerate(out.ravel()):
        r, c = divmod(i, 28)
        r0, c0 = positions[v]
        assert (r - r0) <= 2
        assert (c - c0) <= 2


def test_glass_blur_of_a_blank_image_is_blank() -> None:
    np.testing.assert_array_equal(corruptions.glass_blur(np.zeros((28, 28)), np.random.default_rng(0)), 0.0)


def brute_force_motion_blur(image: np.ndarray, angle: float, radius: int = 10, sigma: float = 3.0) -> np.ndarray:
    """ImageMagick's MotionBlurImage written out pixel by pixel, with edge-replicating virtual pixels."""
    width = 2 * radius + 1
    weights = np.exp(-(np.arange(width) ** 2) / (2 * sigma**2))
    weights /= weights.sum()
    out = np.zeros_like(image)
    for i in range(width):
        ox = int(np.ceil(i * np.cos(np.radians(angle)) - 0.5))
        oy = int(np.ceil(i * np.sin(np.radians(angle)) - 0.5))
        rows = np.clip(np.arange(28) + oy, 0, 27)
        cols = np.clip(np.arange(28) + ox, 0, 27)
        out += weights[i] * image[np.ix_(rows, cols)]
    return out


@pytest.mark.parametrize("angle", [-45.0, -30.0, -17.3, 0.0, 8.0, 30.0, 44.99, 60.0])  # +-30, 60: half-pixel ties
def test_motion_blur_matches_imagemagick_definition(angle: float, digit: np.ndarray) -> None:
    image = digit.copy()
    image[0, :5] = 0.8  # ink on the border exercises the edge handling
    np.testing.assert_allclose(
        corruptions.motion_blur_image(image, angle), brute_force_motion_blur(image, angle), atol=1e-6
    )


def test_motion_blur_kernel_is_a_one_sided_ray() -> None:
    kernel = corruptions.motion_blur_kernel(0.0)
    assert kernel.sum() == pytest.approx(1.0)
    r = kernel.shape[0] // 2
    assert (kernel[r, r:] > 0).all()
    assert kernel[r, :r].sum() == 0
    assert kernel.sum() - kernel[r].sum() == 0
    angles = [corruptions.draw_motion_angle(np.random.default_rng(s)) for s in range(200)]
    assert -45 <= min(angles) < -35
    assert 35 < max(angles) < 45


def test_fog_never_exceeds_the_image_peak(digit: np.ndarray) -> None:
    field = corruptions.plasma_fractal(np.random.default_rng(0), 64, 1.4)
    assert field.shape == (64, 64)
    assert field.min() == 0.0
    assert field.max() == 1.0
    out = corruptions.fog(digit, np.random.default_rng(0))
    assert out.max() <= digit.max() + 1e-6
    assert out.min() > 0  # the fog covers the background
    np.testing.assert_array_equal(corruptions.fog(np.zeros((28, 28)), np.random.default_rng(0)), 0.0)
    with pytest.raises(ValueError, match="power of two"):
        corruptions.plasma_fractal(np.random.default_rng(0), 100)


def test_spatter_blends_pixels_toward_mud_or_leaves_them(digit: np.ndarray) -> None:
    mud = 63 / 255
    touched = 0
    for seed in range(10):
        out = corruptions.spatter(digit, np.random.default_rng(seed)).astype(np.float64)
        changed = ~np.isclose(out, digit, atol=1e-6)
        # a changed pixel is x (1 - m) + mud m with m >= 0.8: within 0.2 |x - mud| of the mud colour
        assert (np.abs(out - mud)[changed] <= 0.2 * np.abs(digit - mud)[changed] + 1e-6).all()
        touched += int(changed.sum())
    assert touched > 0


def test_dotted_line_is_dashed_every_other_pair_of_columns() -> None:
    blank = np.zeros((28, 28))
    for seed in range(10):
        out = corruptions.dotted_line(blank, np.random.default_rng(seed))
        blanked = (np.arange(28) // 2) % 2 == 0
        assert (out[:, blanked] == 0).all()
        assert (out[:, 27] == 0).all()
        assert out[:, ~blanked].max() == pytest.approx(1.0, abs=0.2)
        # one stroke per dash column, about 3 px tall
        for c in np.flatnonzero(~blanked)[:-1]:
            assert 1 <= np.count_nonzero(out[:, c]) <= 4


def test_line_layer_is_full_on_the_line_and_zero_off_it() -> None:
    layer = image_ops.line_layer(0, 10, 27, 10)
    np.testing.assert_allclose(layer[10, :27], 1.0)
    assert (layer[[7, 13], :] == 0).all()
    assert (layer[:, 27] == 0).all()
    np.testing.assert_array_equal(image_ops.line_layer(5, 0, 5, 20), 0.0)


def test_zigzag_draws_a_stroke_between_columns_two_and_twenty_five() -> None:
    for seed in range(10):
        out = corruptions.zigzag(np.zeros((28, 28)), np.random.default_rng(seed))
        cols = np.flatnonzero(out.any(axis=0))
        assert cols.size >= 15
        assert cols.min() >= 1
        assert cols.max() <= 26
        assert out.max() == pytest.approx(1.0, abs=0.05)


def test_canny_edges_outline_a_square() -> None:
    square = np.zeros((28, 28))
    square[8:20, 8:20] = 1.0
    out = corruptions.canny_edges(square, np.random.default_rng(0))
    assert set(np.unique(out)) == {0.0, 1.0}
    assert out[13, 13] == 0  # inside
    assert out[2, 2] == 0  # outside
    assert out[7:9, 13].any()
    assert out[13, 7:9].any()
    np.testing.assert_array_equal(corruptions.canny_edges(np.zeros((28, 28)), np.random.default_rng(0)), 0.0)


# ----------------------------------------------------------------------------------------------- batches


@pytest.mark.parametrize("name", ["shot_noise", "glass_blur", "translate", "fog", "stripe"])
def test_corrupt_batch_does_not_depend_on_how_the_batch_is_split(name: str) -> None:
    images, _ = digits_split("test")
    images = images[:12]
    whole = corrupt_batch(images, name, seed=5)
    parts = np.concatenate([corrupt_batch(images[:5], name, seed=5), corrupt_batch(images[5:], name, 5, start=5)])
    np.testing.assert_array_equal(whole, parts)
    for i in (0, 7):
        np.testing.assert_array_equal(whole[i], CORRUPTIONS[name](images[i], image_rng(5, i, name)))
    if name in RANDOM_CORRUPTIONS:
        assert not np.array_equal(whole, corrupt_batch(images, name, seed=6))


def test_corrupt_batch_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="unknown corruption 'snow'"):
        corrupt_batch(np.zeros((2, 28, 28)), "snow")
    with pytest.raises(ValueError, match=r"expected images of shape \[n, 28, 28\], got \(28, 28\)"):
        corrupt_batch(np.zeros((28, 28)), "identity")
    with pytest.raises(ValueError, match="non-negative"):
        corrupt_batch(np.zeros((1, 28, 28)), "identity", seed=-1)


# ------------------------------------------------------------------------------------------------ digits-C


def test_load_digits_28_shapes_range_and_labels() -> None:
    images, labels = load_digits_28()
    assert images.shape == (1797, 28, 28)
    assert images.dtype == np.float32
    assert labels.dtype == np.int64
    assert images.min() == 0.0
    assert images.max() == 1.0
    assert np.array_equal(np.unique(labels), np.arange(10))
    assert np.bincount(labels).min() >= 170
    # placed like MNIST: centre of mass within a pixel of the frame centre, a 20x20 box of ink
    coms = np.array([ndimage.center_of_mass(im) for im in images[:200]])
    assert np.abs(coms - 13.5).max() <= 1.0
    box, _ = load_digits_28(center="box")
    assert not box[:, :4].any()
    assert not box[:, 24:].any()
    assert not box[:, :, :4].any()
    assert not box[:, :, 24:].any()
    # copies: writing to one result leaves the next intact
    images[:] = 0
    assert load_digits_28()[0].max() == 1.0


@pytest.mark.parametrize("upsample", ["nearest", "bilinear", "bicubic"])
def test_upsampling_modes(upsample: str) -> None:
    images, _ = load_digits_28(upsample=upsample, center="box")  # type: ignore[arg-type]
    assert images.min() >= 0.0
    assert images.max() <= 1.0
    if upsample == "nearest":  # 8x8 blocks of 2.5 px: only the 17 ink levels k / 16
        assert set(np.unique(images * 16).round(4)) <= set(map(float, range(17)))


def test_load_digits_28_rejects_unknown_modes() -> None:
    with pytest.raises(ValueError, match="upsample must be one of"):
        load_digits_28(upsample="lanczos")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="center must be"):
        load_digits_28(center="top")  # type: ignore[arg-type]


def test_split_is_fixed_disjoint_and_stratified() -> None:
    train, test = split_indices()
    assert train.size == N_TRAIN == 1437
    assert test.size == N_TEST == 360
    assert np.intersect1d(train, test).size == 0
    np.testing.assert_array_equal(np.sort(np.concatenate([train, test])), np.arange(1797))
    _, labels = load_digits_28()
    expected = np.bincount(labels) * 360 / 1797
    assert np.abs(np.bincount(labels[test], minlength=10) - expected).max() <= 1.0
    again_train, again_test = split_indices()
    np.testing.assert_array_equal(test, again_test)
    np.testing.assert_array_equal(train, again_train)
    x_train, y_train = digits_split("train")
    x_test, y_test = digits_split("test")
    assert x_train.shape == (1437, 28, 28)
    assert x_test.shape == (360, 28, 28)
    np.testing.assert_array_equal(y_test, labels[test])
    np.testing.assert_array_equal(y_train, labels[train])
    with pytest.raises(ValueError, match="split must be"):
        digits_split("val")  # type: ignore[arg-type]


def test_digits_c_applies_the_corruption_to_the_split() -> None:
    clean, labels = digits_split("test")
    x, y = digits_c("identity")
    np.testing.assert_array_equal(x, clean)
    np.testing.assert_array_equal(y, labels)
    x, y = digits_c("stripe", split="train")
    assert x.shape == (1437, 28, 28)
    np.testing.assert_allclose(x[:, :, :7], 1 - digits_split("train")[0][:, :, :7], atol=1e-6)
    a, _ = digits_c("translate", seed=1)
    b, _ = digits_c("translate", seed=1)
    np.testing.assert_array_equal(a, b)
    assert a.dtype == np.float32
    assert a.min() >= 0
    assert a.max() <= 1
    with pytest.raises(ValueError, match="unknown corruption 'snow'"):
        digits_c("snow")


# ------------------------------------------------------------------------------------------------ loaders


def write_mnist_c(root: Path, corruption: str, split: str, images: np.ndarray, labels: np.ndarray) -> None:
    folder = root / corruption
    folder.mkdir(parents=True, exist_ok=True)
    np.save(folder / f"{split}_images.npy", images)
    np.save(folder / f"{split}_labels.npy", labels)


def test_load_mnist_c_round_trips(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(5, 28, 28, 1), dtype=np.uint8)
    labels = rng.integers(0, 10, size=5).astype(np.uint8)
    write_mnist_c(tmp_path, "stripe", "test", images, labels)
    x, y = load_mnist_c(tmp_path, "stripe", "test")
    assert x.dtype == np.float32
    assert y.dtype == np.int64
    assert x.shape == (5, 28, 28)
    np.testing.assert_allclose(x * 255, images[..., 0], atol=1e-4)
    np.testing.assert_array_equal(y, labels)
    write_mnist_c(tmp_path, "fog", "train", images[..., 0], labels.astype(np.int64))  # (n, 28, 28) is fine too
    np.testing.assert_array_equal(load_mnist_c(tmp_path, "fog", "train")[1], labels)


def test_load_mnist_c_names_what_is_wrong(tmp_path: Path) -> None:
    images = np.zeros((3, 28, 28, 1), dtype=np.uint8)
    with pytest.raises(FileNotFoundError, match=r"stripe[/\\]test_images\.npy \(known corruptions: identity"):
        load_mnist_c(tmp_path, "stripe")
    write_mnist_c(tmp_path, "stripe", "test", images, np.zeros(3, dtype=np.int64))
    (tmp_path / "stripe" / "test_labels.npy").unlink()
    with pytest.raises(FileNotFoundError, match=r"test_labels\.npy"):
        load_mnist_c(tmp_path, "stripe")
    write_mnist_c(tmp_path, "stripe", "test", images, np.zeros(4, dtype=np.int64))
    with pytest.raises(DataFormatError, match=r"test_labels\.npy: 4 labels for 3 images"):
        load_mnist_c(tmp_path, "stripe")
    write_mnist_c(tmp_path, "stripe", "test", images.astype(np.float32), np.zeros(3, dtype=np.int64))
    with pytest.raises(DataFormatError, match=r"test_images\.npy: expected uint8 images, got float32"):
        load_mnist_c(tmp_path, "stripe")
    write_mnist_c(tmp_path, "stripe", "test", np.zeros((3, 32, 32), np.uint8), np.zeros(3, dtype=np.int64))
    with pytest.raises(DataFormatError, match=r"expected images of shape \(n, 28, 28\[, 1\]\), got \(3, 32, 32\)"):
        load_mnist_c(tmp_path, "stripe")
    with pytest.raises(ValueError, match="split must be"):
        load_mnist_c(tmp_path, "stripe", "val")  # type: ignore[arg-type]


def idx_bytes(array: np.ndarray, magic: int | None = None) -> bytes:
    """An IDX file: magic (0x0000 0x08 ndim for uint8 unless given), big-endian uint32 sizes, then the bytes."""
    header = (0x00000800 + array.ndim) if magic is None else magic
    sizes = b"".join(int(n).to_bytes(4, "big") for n in array.shape)
    return header.to_bytes(4, "big") + sizes + array.astype(np.uint8).tobytes()


@pytest.mark.parametrize("compress", [False, True])
@pytest.mark.parametrize("split", ["train", "test"])
def test_load_mnist_idx_round_trips(tmp_path: Path, compress: bool, split: str) -> None:
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, size=(7, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, size=7, dtype=np.uint8)
    prefix = "train" if split == "train" else "t10k"
    for name, array in [(f"{prefix}-images-idx3-ubyte", images), (f"{prefix}-labels-idx1-ubyte", labels)]:
        data = idx_bytes(array)
        if compress:
            (tmp_path / f"{name}.gz").write_bytes(gzip.compress(data))
        else:
            (tmp_path / name).write_bytes(data)
    x, y = load_mnist_idx(tmp_path, split)  # type: ignore[arg-type]
    assert x.dtype == np.float32
    assert y.dtype == np.int64
    np.testing.assert_allclose(x * 255, images, atol=1e-4)
    np.testing.assert_array_equal(y, labels)


def test_idx_magic_numbers_match_the_header_layout() -> None:
    assert int.from_bytes(idx_bytes(np.zeros((1, 28, 28)))[:4], "big") == IDX_IMAGES_MAGIC == 2051
    assert int.from_bytes(idx_bytes(np.zeros(1))[:4], "big") == IDX_LABELS_MAGIC == 2049


def test_read_idx_handles_other_types(tmp_path: Path) -> None:
    values = np.arange(-3, 3, dtype=">i4").reshape(2, 3)
    path = tmp_path / "ints-idx2"
    path.write_bytes(
        (0x00000C02).to_bytes(4, "big") + b"".join(n.to_bytes(4, "big") for n in (2, 3)) + values.tobytes()
    )
    out = read_idx(path)
    np.testing.assert_array_equal(out, values)
    assert out.dtype == np.dtype(np.int32)


def test_read_idx_rejects_bad_files(tmp_path: Path) -> None:
    images = np.zeros((2, 28, 28), np.uint8)
    labels_path = tmp_path / "train-labels-idx1-ubyte"
    labels_path.write_bytes(idx_bytes(np.zeros(2)))
    images_path = tmp_path / "train-images-idx3-ubyte"
    images_path.write_bytes(idx_bytes(images, magic=2049))  # a label magic on an image file
    with pytest.raises(DataFormatError, match=r"train-images-idx3-ubyte: bad IDX magic number 2049 .*expected 2051"):
        load_mnist_idx(tmp_path, "train")
    images_path.write_bytes(idx_bytes(images)[:-10])  # truncated
    with pytest.raises(DataFormatError, match=r"train-images-idx3-ubyte: dimensions \(2, 28, 28\) need 1568 bytes"):
        load_mnist_idx(tmp_path, "train")
    images_path.write_bytes(idx_bytes(np.zeros((3, 28, 28), np.uint8)))
    with pytest.raises(DataFormatError, match=r"train-labels-idx1-ubyte: 2 labels for 3 images"):
        load_mnist_idx(tmp_path, "train")
    garbage = tmp_path / "garbage"
    garbage.write_bytes(b"\x1f\x8b\x08\x00junk")
    with pytest.raises(DataFormatError, match=r"garbage: bad IDX magic number .*not an IDX header"):
        read_idx(garbage)
    (tmp_path / "short").write_bytes(b"\x00\x00")
    with pytest.raises(DataFormatError, match="too short"):
        read_idx(tmp_path / "short")
    with pytest.raises(FileNotFoundError, match=r"t10k-images-idx3-ubyte \(nor t10k-images-idx3-ubyte\.gz\)"):
        load_mnist_idx(tmp_path, "test")


# ------------------------------------------------------------------------------------------------- figure


def test_render_grid_writes_a_png(tmp_path: Path) -> None:
    path = render_grid(tmp_path / "figs" / "grid.png", examples=3, corruptions=["identity", "stripe", "spatter"])
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(SystemExit) as done:
        trainer_main(["grid", "--out", str(tmp_path / "cli.png"), "--examples", "2"])
    assert done.value.code == 0
    assert (tmp_path / "cli.png").stat().st_size > 1000
