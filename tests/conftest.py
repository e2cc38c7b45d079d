"""Fixtures shared by every test layer."""

from __future__ import annotations

import io
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FIXTURE_MODELS = ROOT / "tests" / "models"
FIXTURE_CONFIG = FIXTURE_MODELS / "inferq.toml"

# The behaviour-named fixture models import as top-level modules ("echo:Echo").
if str(FIXTURE_MODELS) not in sys.path:
    sys.path.insert(0, str(FIXTURE_MODELS))


def png_bytes(size: tuple[int, int] = (32, 16), color: int = 255) -> bytes:
    """A small real PNG."""
    from PIL import Image

    buf = io.BytesIO()
    Image.new("L", size, color).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture
def png() -> bytes:
    """A 32x16 PNG."""
    return png_bytes()
