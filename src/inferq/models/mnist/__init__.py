"""The bundled MNIST model: which digit (0-9) a handwritten-digit image shows.

Importing this module is cheap -- no torch, numpy or Pillow -- because the API imports
it to read the schemas. ``setup()`` checks the weights' sha256 and loads the network;
``predict()`` runs a whole batch in one forward pass. See README.md for the model card.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from inferq.errors import ConfigError
from inferq.model import Model
from inferq.schemas import Image

__all__ = ["MnistModel", "WEIGHTS_PATH", "verify_weights"]

#: The committed weights; their hex sha256 sits beside them in ``mnist_cnn.pt.sha256``.
WEIGHTS_PATH = Path(__file__).resolve().parent / "weights" / "mnist_cnn.pt"


def verify_weights(path: Path) -> None:
    """Raise ConfigError unless ``path`` hashes to the sha256 in ``<path>.sha256``.

    A truncated download or a stray edit would otherwise load as a model that answers
    confidently and wrongly.
    """
    digest_file = path.with_name(path.name + ".sha256")
    try:
        expected = digest_file.read_text().split()[0].lower()
        actual = hashlib.sha256(path.read_bytes()).hexdigest()
    except (OSError, IndexError) as exc:
        raise ConfigError(f"cannot check the MNIST weights {path}: {exc}") from exc
    if actual != expected:
        raise ConfigError(
            f"MNIST weights {path} have sha256 {actual}, but {digest_file.name} says "
            f"{expected}: the file is corrupt or was replaced; retrain with "
            "scripts/train_mnist.py or restore it"
        )


#: Batches up to this size run on one CPU thread (see ``predict``).
SMALL_BATCH = 4


class MnistModel(Model):
    """A small CNN that reads one handwritten digit per image (MNIST-trained)."""

    name = "mnist"
    description = "Handwritten digit recognition (0-9): a small CNN trained on MNIST"
    max_batch_size = 64
    batch_timeout_s = 0.005

    class Input(BaseModel):
        """One image of a single handwritten digit."""

        image: Image = Field(
            description="A single handwritten digit, any size: dark ink on a light or "
            "transparent canvas, or light on dark like MNIST. PNG, JPEG, WebP or GIF."
        )

    class Output(BaseModel):
        """The digit read, and the probability of each of 0-9."""

        digit: int = Field(ge=0, le=9, description="The most probable digit.")
        probabilities: list[float] = Field(
            min_length=10,
            max_length=10,
            description="Probability of each digit 0-9, in order; they sum to 1.",
        )

    def __init__(self, weights_path: Path | None = None) -> None:
        super().__init__()
        #: The state_dict to load; another path is for tests and for retrained weights.
        self.weights_path: Path = weights_path if weights_path is not None else WEIGHTS_PATH
        self._net: Any = None
        self._threads = 1

    def setup(self) -> None:
        """Verify the weights' sha256, build the network, load it onto ``self.device``."""
        import torch

        from inferq.models.mnist.net import MnistNet

        verify_weights(self.weights_path)
        net = MnistNet()
        state = torch.load(self.weights_path, map_location="cpu", weights_only=True)
        net.load_state_dict(state)
        self._net = net.eval().to(self.device)
        self._threads = torch.get_num_threads()

    def predict(self, batch: list[Any]) -> list[Any]:
        """Read the digit in each image; one forward pass for the whole batch."""
        import numpy as np
        import torch

        from inferq.models.mnist.preprocess import normalize, to_mnist

        if self._net is None:
            raise RuntimeError("MnistModel.setup() must run before predict()")
        if not batch:
            return []
        arrays = normalize(np.stack([to_mnist(item.image.open()) for item in batch]))
        # A small batch runs faster on one thread: after an idle gap, waking OpenMP's other
        # threads costs more (~10 ms measured on 2 vCPUs) than the whole forward pass.
        torch.set_num_threads(1 if len(batch) <= SMALL_BATCH else self._threads)
        with torch.inference_mode():
            tensor = torch.from_numpy(arrays).unsqueeze(1).to(self.device)
            # float64 softmax on the CPU so ten floats sum to 1 well within 1e-6.
            probs = torch.softmax(self._net(tensor).double(), dim=1).cpu().numpy()
        outputs = []
        for row in probs:
            row = row / row.sum()
            outputs.append(
                self.Output(digit=int(row.argmax()), probabilities=[float(p) for p in row])
            )
        return outputs
