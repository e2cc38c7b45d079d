"""tests/data/digits: the sample images other tests and demos submit are read right."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from inferq.models.mnist import MnistModel
from inferq.schemas import Image as InputImage

DIGITS_DIR = Path(__file__).resolve().parent.parent / "data" / "digits"
MANIFEST: dict[str, int] = json.loads((DIGITS_DIR / "manifest.json").read_text())


@pytest.fixture(scope="module")
def model() -> MnistModel:
    """The bundled model, set up from the committed weights on the CPU."""
    m = MnistModel()
    m.setup()
    return m


def test_manifest_covers_every_kind_of_sample() -> None:
    names = set(MANIFEST)
    assert names == {p.name for p in DIGITS_DIR.iterdir() if p.name != "manifest.json"}
    assert len(names) >= 10
    assert sum(n.startswith("drawn_") for n in names) >= 3
    assert any(n.startswith("mnist_") for n in names)
    assert any(n.endswith(".jpg") for n in names)
    assert any("transparent" in n for n in names)
    assert all(0 <= digit <= 9 for digit in MANIFEST.values())


def test_transparent_sample_really_has_a_transparent_background() -> None:
    (name,) = [n for n in MANIFEST if "transparent" in n]
    img = InputImage((DIGITS_DIR / name).read_bytes()).open()
    assert img.mode == "RGBA" and img.getpixel((0, 0))[3] == 0


@pytest.mark.parametrize("name", sorted(MANIFEST))
def test_sample_is_read_as_its_manifest_digit(model: MnistModel, name: str) -> None:
    image = InputImage((DIGITS_DIR / name).read_bytes())
    (out,) = model.predict([MnistModel.Input(image=image)])
    assert out.digit == MANIFEST[name]
    assert out.probabilities[MANIFEST[name]] > 0.8
