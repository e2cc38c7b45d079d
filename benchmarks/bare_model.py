"""The ceiling: the MNIST model called in-process, no HTTP, no queue, no store.

    python benchmarks/bare_model.py [--reps 5] [--json out.json]

For batches of 1, 8, 32, 64 and 256 images (the sample digits in tests/data/digits,
cycled), it times ``MnistModel.predict`` -- the same call a worker makes, decoding and
preprocessing included -- and reports images per second (median of ``--reps`` timed
repetitions after a warmup), plus the latency of one single-image predict (p50 over
``--single`` calls).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path
from typing import Any

from inferq.bench import percentile
from inferq.models.mnist import MnistModel

ROOT = Path(__file__).resolve().parent.parent
DIGITS = ROOT / "tests" / "data" / "digits"
BATCH_SIZES = (1, 8, 32, 64, 256)


def sample_images() -> list[bytes]:
    """The sample digit PNGs, as bytes."""
    images = [p.read_bytes() for p in sorted(DIGITS.glob("*.png"))]
    if not images:
        raise SystemExit(f"no sample digits in {DIGITS}")
    return images


def measure(reps: int = 5, single: int = 100, rep_images: int = 64) -> dict[str, Any]:
    """Images/s per batch size and single-image latency, with the model set up once.

    Every repetition runs the same mix of sample images (at least ``rep_images`` of
    them, cycled), cut into batches of the size measured, so that sizes are compared on
    the same work: the samples differ in size and preprocessing cost.
    """
    import torch

    model = MnistModel()
    model.setup()
    images = sample_images()
    pool = [MnistModel.Input(image=images[i % len(images)]) for i in range(max(BATCH_SIZES))]

    # Warmup: first calls pay for allocator growth and lazy initialisation.
    for size in BATCH_SIZES:
        model.predict(pool[:size])

    batches: dict[str, Any] = {}
    for size in BATCH_SIZES:
        count = max(rep_images, size)
        work = [pool[i % len(pool)] for i in range(count)]
        chunks = [work[i : i + size] for i in range(0, count, size)]
        rates = []
        for _ in range(reps):
            t0 = time.perf_counter()
            for chunk in chunks:
                model.predict(chunk)
            rates.append(count / (time.perf_counter() - t0))
        batches[str(size)] = {
            "images_per_s": round(statistics.median(rates), 1),
            "reps": reps,
            "images_per_rep": count,
        }

    latencies = []
    for i in range(single):
        t0 = time.perf_counter()
        model.predict([pool[i % len(pool)]])
        latencies.append((time.perf_counter() - t0) * 1000)
    return {
        "batches": batches,
        "single_image_ms": {
            "p50": round(percentile(latencies, 50), 3),
            "p90": round(percentile(latencies, 90), 3),
            "calls": single,
        },
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reps", type=int, default=5, help="timed repetitions (>= 5)")
    parser.add_argument("--single", type=int, default=100, help="single-image calls")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    if args.reps < 5:
        parser.error("--reps must be >= 5: the figure is a median")
    result = measure(reps=args.reps, single=args.single)
    for size, row in result["batches"].items():
        print(f"batch {size:>4}: {row['images_per_s']:>9.1f} images/s")
    print(f"single image: p50 {result['single_image_ms']['p50']:.2f} ms")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
