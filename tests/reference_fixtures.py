"""Access to the reference implementation's fixtures in shared/reference/."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REFERENCE_DIR = Path(os.environ.get("MEDMAMBA_REFERENCE_DIR", Path(__file__).resolve().parents[1].parent / "shared" / "reference"))


def load_reference(name: str) -> dict:
    """A fixture written by the reference implementation (skips when shared/ is not beside the repo)."""
    path = REFERENCE_DIR / f"{name}.pt"
    if not path.exists():
        pytest.skip(f"reference fixture {path} not found")
    return torch.load(path, weights_only=False)
