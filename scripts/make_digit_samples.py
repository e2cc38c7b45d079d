"""Write the sample digit images that tests and demos submit to the bundled MNIST model.

    python scripts/make_digit_samples.py

Writes ``tests/data/digits/*.png|jpg`` and ``manifest.json`` (file name → expected digit):

- ``mnist_<d>.png``: held-out MNIST test images (white on black, 28x28), never trained on;
- ``drawn_<d>.png``: what a person draws with a mouse -- thick black round-pen strokes on a
  280x280 white canvas; one off-centre and small;
- ``drawn_<d>_transparent.png``: black strokes on a transparent (RGBA) canvas;
- ``drawn_<d>.jpg``: a drawn digit saved as JPEG.

Only images the committed model reads right with probability ≥ MIN_CONFIDENCE are kept,
so the samples are a stable fixture, not a benchmark. Re-runnable: output is the same
for the same weights.
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path

from PIL import Image, ImageDraw

from inferq.models.mnist import MnistModel
from inferq.models.mnist.data import load_split
from inferq.schemas import Image as InputImage

OUT_DIR = Path(__file__).resolve().parent.parent / "tests/data/digits"
CANVAS = 280
PEN = 22
MIN_CONFIDENCE = 0.9
MNIST_DIGITS = (2, 3, 5, 6)

Point = tuple[float, float]
Stroke = Sequence[Point]


def arc(cx: float, cy: float, r: float, start: float, end: float, n: int = 24) -> list[Point]:
    """Points along a circular arc; angles in degrees, clockwise on screen (y points down)."""
    return [
        (cx + r * math.cos(math.radians(a)), cy + r * math.sin(math.radians(a)))
        for a in (start + (end - start) * i / n for i in range(n + 1))
    ]


def ellipse(cx: float, cy: float, rx: float, ry: float, n: int = 48) -> list[Point]:
    """Points around a closed ellipse."""
    return [
        (cx + rx * math.cos(2 * math.pi * i / n), cy + ry * math.sin(2 * math.pi * i / n))
        for i in range(n + 1)
    ]


#: Each drawn digit as pen strokes on a 280x280 canvas, roughly as a mouse would draw it.
STROKES: dict[int, list[Stroke]] = {
    0: [ellipse(140, 140, 62, 100)],  # taller than wide, as people draw it
    1: [[(150, 40), (132, 242)]],
    2: [arc(140, 100, 58, 200, 400)[:-4] + [(75, 238), (215, 238)]],
    3: [arc(135, 95, 52, -160, 90), arc(135, 190, 55, -90, 150)],
    4: [[(105, 40), (80, 165), (215, 165)], [(175, 70), (170, 245)]],
    5: [[(200, 45), (95, 45), (88, 125)], arc(130, 180, 62, -125, 145)],
    7: [[(65, 50), (210, 50)], [(210, 50), (115, 245)]],
    8: [arc(140, 88, 48, 0, 360), arc(140, 190, 56, 0, 360)],
}


def draw(
    strokes: Sequence[Stroke],
    size: int = CANVAS,
    pen: int = PEN,
    offset: Point = (0, 0),
    scale: float = 1.0,
    mode: str = "L",
) -> Image.Image:
    """Draw ``strokes`` with a round pen: black on white ("L") or on transparent ("RGBA")."""
    background: int | tuple[int, int, int, int] = 255 if mode == "L" else (0, 0, 0, 0)
    ink: int | tuple[int, int, int, int] = 0 if mode == "L" else (0, 0, 0, 255)
    img = Image.new(mode, (size, size), background)
    pen_draw = ImageDraw.Draw(img)
    for stroke in strokes:
        points = [(offset[0] + x * scale, offset[1] + y * scale) for x, y in stroke]
        pen_draw.line(points, fill=ink, width=pen, joint="curve")
        # Round caps: PIL lines end square; a mouse pen is a disc.
        for x, y in (points[0], points[-1]):
            pen_draw.ellipse((x - pen / 2, y - pen / 2, x + pen / 2, y + pen / 2), fill=ink)
    return img


def encode(img: Image.Image, fmt: str) -> bytes:
    """The image file's bytes in ``fmt`` (PNG or JPEG)."""
    buf = io.BytesIO()
    img.save(buf, format=fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    return buf.getvalue()


def candidates() -> dict[str, tuple[int, Callable[[], bytes]]]:
    """File name → (expected digit, a function making its bytes)."""
    split = load_split()
    out: dict[str, tuple[int, Callable[[], bytes]]] = {}
    for digit in MNIST_DIGITS:
        index = int((split.test_labels == digit).nonzero()[0][0])
        image = Image.fromarray(split.test_images[index])
        out[f"mnist_{digit}.png"] = (digit, lambda image=image: encode(image, "PNG"))
    for digit in (0, 1, 4, 7, 3, 8):
        out[f"drawn_{digit}.png"] = (digit, lambda d=digit: encode(draw(STROKES[d]), "PNG"))
    # Small, in the bottom-right corner: the model must find and centre it.
    out["drawn_7_off_centre.png"] = (
        7,
        lambda: encode(draw(STROKES[7], offset=(150, 160), scale=0.4, pen=10), "PNG"),
    )
    out["drawn_2_transparent.png"] = (2, lambda: encode(draw(STROKES[2], mode="RGBA"), "PNG"))
    out["drawn_5.jpg"] = (5, lambda: encode(draw(STROKES[5]), "JPEG"))
    return out


def main() -> None:
    """Make the candidates, keep those the model reads right with a margin, write them."""
    model = MnistModel()
    model.setup()
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    manifest: dict[str, int] = {}
    for name, (digit, make) in candidates().items():
        data = make()
        (result,) = model.predict([MnistModel.Input(image=InputImage(data))])
        confidence = result.probabilities[digit]
        kept = result.digit == digit and confidence >= MIN_CONFIDENCE
        print(
            f"{'kept   ' if kept else 'DROPPED'} {name:28s} read {result.digit} "
            f"p({digit})={confidence:.3f}"
        )
        path = OUT_DIR / name
        if kept:
            path.write_bytes(data)
            manifest[name] = digit
        else:
            path.unlink(missing_ok=True)
    drawn = [name for name in manifest if name.startswith("drawn_")]
    if len(drawn) < 3:
        raise SystemExit(f"only {len(drawn)} drawn samples are read right; need 3")
    text = json.dumps(dict(sorted(manifest.items())), indent=2) + "\n"
    (OUT_DIR / "manifest.json").write_text(text)
    print(f"wrote {len(manifest)} samples to {OUT_DIR}")


if __name__ == "__main__":
    main()
