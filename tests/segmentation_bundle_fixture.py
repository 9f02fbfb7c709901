"""A segmentation bundle with random weights, for tests of what runs it as its brain extraction."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch

SEG_BUNDLE = Path(__file__).resolve().parents[1] / "bundles" / "mobilemamba_segmentation"


def make_segmentation_bundle(folder: Path, weights: bool = True, **config: Any) -> Path:
    """``folder/mobilemamba_segmentation``: the segmentation bundle's configs (``inference.json`` items
    replaced by ``config``) and, with ``weights``, ``models/model.pt`` of its network, seeded randomly."""
    from monai.bundle import ConfigParser

    root = folder / "mobilemamba_segmentation"
    shutil.copytree(SEG_BUNDLE / "configs", root / "configs")
    inference = json.loads((root / "configs" / "inference.json").read_text())
    inference.update(config)
    (root / "configs" / "inference.json").write_text(json.dumps(inference))
    if weights:
        parser = ConfigParser()
        parser.read_config(str(root / "configs" / "inference.json"))
        torch.manual_seed(0)
        template = parser.get_parsed_content("network_def").template
        (root / "models").mkdir()
        torch.save(template.state_dict(), root / "models" / "model.pt")
    return root
