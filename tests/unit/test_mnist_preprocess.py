"""inferq.models.mnist.preprocess: any digit image becomes an MNIST-style 28x28 array."""

from __future__ import annotations

import io
import time

import numpy as np
import pytest
from PIL import Image, ImageDraw

from inferq.models.mnist.data import load_split
from inferq.models.mnist.preprocess import MNIST_MEAN, MNIST_STD, normalize, to_mnist


def draw_seven(
    size: int = 280,
    box: tuple[float, float, float, float] = (60, 40, 220, 250),
    mode: str = "L",
    pen: int = 22,
) -> Image.Image:
    """A "7" drawn with a thick black pen on a white canvas (or a transparent one for RGBA)."""
    img = Image.new(mode, (size, size), 255 if mode == "L" else (0, 0, 0, 0))
    ink = 0 if mode == "L" else (0, 0, 0, 255)
    x0, y0, x1, y1 = box
    ImageDraw.Draw(img).line(
        [(x0, y0), (x1, y0), (x0 + (x1 - x0) * 0.4, y1)], fill=ink, width=pen, joint="curve"
    )
    return img


def reencode(img: Image.Image, fmt: str, **options: object) -> Image.Image:
    """Round-trip ``img`` through a file format, as an upload would arrive."""
    buf = io.BytesIO()
    img.save(buf, format=fmt, **options)
    out = Image.open(io.BytesIO(buf.getvalue()))
    out.load()
    return out


def center_of_mass(arr: np.ndarray) -> tuple[float, float]:
    """(row, column) centre of mass of a 2-D array."""
    ys, xs = np.indices(arr.shape)
    return float((ys * arr).sum() / arr.sum()), float((xs * arr).sum() / arr.sum())


@pytest.fixture(scope="module")
def mnist_images() -> np.ndarray:
    """Fifty held-out MNIST images, uint8 (50, 28, 28)."""
    return load_split().test_images[:50]


@pytest.fixture(scope="module")
def reference_seven() -> np.ndarray:
    """The preprocessed plain drawn "7" that other renderings must match."""
    return to_mnist(draw_seven())


def test_output_is_28x28_float32_in_unit_range(reference_seven: np.ndarray) -> None:
    assert reference_seven.shape == (28, 28)
    assert reference_seven.dtype == np.float32
    assert reference_seven.min() >= 0.0 and reference_seven.max() == pytest.approx(1.0)


def test_mnist_style_input_comes_out_essentially_unchanged(mnist_images: np.ndarray) -> None:
    for image in mnist_images:
        out = to_mnist(Image.fromarray(image))
        original = image / 255.0
        # Relative L1 change of the ink: tiny, as the digit is already boxed and centred.
        assert np.abs(out - original).sum() / original.sum() < 0.05


def test_dark_digit_on_light_background_gives_the_same_array_as_light_on_dark(
    mnist_images: np.ndarray,
) -> None:
    for image in mnist_images[:10]:
        light_on_dark = to_mnist(Image.fromarray(image))
        dark_on_light = to_mnist(Image.fromarray(255 - image))
        np.testing.assert_allclose(dark_on_light, light_on_dark, atol=1e-4)


def test_drawn_dark_digit_is_inverted_to_light_on_dark(reference_seven: np.ndarray) -> None:
    inverted_input = Image.eval(draw_seven(), lambda v: 255 - v)
    np.testing.assert_allclose(to_mnist(inverted_input), reference_seven, atol=1e-4)
    # MNIST's background is 0: the corners hold no ink.
    assert reference_seven[:3, :3].max() == 0.0 and reference_seven[-3:, -3:].max() == 0.0


def test_polarity_holds_on_grey_paper() -> None:
    img = Image.eval(draw_seven(), lambda v: 40 + v * 150 // 255)  # ink 40 on paper 190
    out = to_mnist(img)
    assert out[:3, :3].max() == 0.0
    assert out.max() == pytest.approx(1.0)


def test_transparent_background_counts_as_background(reference_seven: np.ndarray) -> None:
    rgba = draw_seven(mode="RGBA")
    np.testing.assert_allclose(to_mnist(rgba), reference_seven, atol=0.02)
    # The colour under transparent pixels is arbitrary: white there must change nothing.
    white_under = np.asarray(rgba).copy()
    white_under[white_under[..., 3] == 0, :3] = 255
    np.testing.assert_allclose(to_mnist(Image.fromarray(white_under)), reference_seven, atol=0.02)


def test_white_strokes_on_transparent_background_work_too(reference_seven: np.ndarray) -> None:
    rgba = np.asarray(draw_seven(mode="RGBA")).copy()
    rgba[..., :3] = 255
    np.testing.assert_allclose(to_mnist(Image.fromarray(rgba)), reference_seven, atol=0.02)


@pytest.mark.parametrize("mode", ["RGB", "L", "LA", "P", "1", "RGBA"])
def test_every_image_mode_gives_the_same_digit(mode: str, reference_seven: np.ndarray) -> None:
    out = to_mnist(draw_seven().convert(mode))
    # Mode "1" dithers nothing here (pure black and white) but loses anti-aliasing.
    assert np.abs(out - reference_seven).mean() < 0.02


@pytest.mark.parametrize(
    ("fmt", "options"),
    [("PNG", {}), ("JPEG", {"quality": 75}), ("WEBP", {"quality": 80}), ("GIF", {})],
)
def test_every_upload_format_gives_the_same_digit(
    fmt: str, options: dict[str, object], reference_seven: np.ndarray
) -> None:
    out = to_mnist(reencode(draw_seven().convert("RGB"), fmt, **options))
    assert np.abs(out - reference_seven).mean() < 0.02


def test_animated_gif_uses_the_first_frame(reference_seven: np.ndarray) -> None:
    frames = [draw_seven().convert("P"), Image.new("P", (280, 280), 0)]
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:])
    gif = Image.open(io.BytesIO(buf.getvalue()))
    gif.seek(1)  # even if something moved past it
    assert np.abs(to_mnist(gif) - reference_seven).mean() < 0.02


def test_off_centre_digit_is_boxed_to_20_px_and_centred() -> None:
    img = draw_seven(size=200, box=(130, 120, 185, 190), pen=8)
    out = to_mnist(img)
    row, col = center_of_mass(out)
    assert abs(row - 14) <= 1 and abs(col - 14) <= 1
    rows, cols = np.flatnonzero(out.max(axis=1) > 0.1), np.flatnonzero(out.max(axis=0) > 0.1)
    assert max(rows[-1] - rows[0], cols[-1] - cols[0]) + 1 in (19, 20, 21)


def test_tiny_input_is_scaled_up() -> None:
    tiny = draw_seven().resize((9, 9), Image.Resampling.BOX)
    out = to_mnist(tiny)
    assert out.shape == (28, 28) and out.max() == pytest.approx(1.0)
    row, col = center_of_mass(out)
    assert abs(row - 14) <= 1 and abs(col - 14) <= 1
    assert to_mnist(Image.new("L", (1, 1), 0)).sum() == 0.0


def test_huge_input_is_handled_quickly(reference_seven: np.ndarray) -> None:
    huge = draw_seven().resize((4000, 4000), Image.Resampling.NEAREST).convert("RGB")
    started = time.perf_counter()
    out = to_mnist(huge)
    assert time.perf_counter() - started < 3.0
    assert np.abs(out - reference_seven).mean() < 0.03


@pytest.mark.parametrize(
    "blank",
    [
        Image.new("L", (280, 280), 255),
        Image.new("L", (28, 28), 0),
        Image.new("RGBA", (280, 280), (0, 0, 0, 0)),
        Image.new("RGB", (100, 60), (128, 128, 128)),
        Image.new("1", (50, 50), 1),
    ],
    ids=["white", "black", "transparent", "grey", "bilevel"],
)
def test_blank_image_gives_zeros(blank: Image.Image) -> None:
    out = to_mnist(blank)
    assert out.shape == (28, 28) and not out.any()


def test_faint_noise_alone_counts_as_blank() -> None:
    rng = np.random.default_rng(0)
    noise = (250 + rng.integers(0, 6, (280, 280))).astype(np.uint8)
    assert not to_mnist(Image.fromarray(noise)).any()


def test_normalize_uses_mnist_mean_and_std() -> None:
    out = normalize(np.array([[MNIST_MEAN, MNIST_MEAN + MNIST_STD]]))
    np.testing.assert_allclose(out, [[0.0, 1.0]], atol=1e-6)
    assert out.dtype == np.float32
