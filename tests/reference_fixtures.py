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


def model_from_fixture(fx: dict):
    """Our MobileMamba built with a fixture's configuration, holding its converted weights, in eval mode."""
    from medmamba.networks import MobileMamba, convert_official_state_dict

    cfg = fx["config"]
    model = MobileMamba(
        None,
        num_classes=fx["num_classes"],
        distillation=fx["distillation"],
        embed_dim=cfg["embed_dim"],
        depth=cfg["depth"],
        global_ratio=cfg["global_ratio"],
        local_ratio=cfg["local_ratio"],
        kernels=cfg["kernels"],
        ssm_ratio=cfg["ssm_ratio"],
        drop_path=cfg["drop_path"],
    )
    model.load_state_dict(convert_official_state_dict(fx["state_dict"]), strict=True)
    return model.eval()
