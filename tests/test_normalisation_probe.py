"""benchmarks/normalisation_probe.py reproduces MRNormalize's statistics (so its swapped score is a fair probe)."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from medmamba.transforms.mr_normalize import MRNormalize


def test_probe_statistics_reproduce_the_deployed_normalisation() -> None:
    from normalisation_probe import foreground_statistics

    g = torch.Generator().manual_seed(0)
    image = torch.zeros(1, 24, 20, 16)
    image[0, 4:20, 4:16, 3:13] = 500.0 + 200.0 * torch.rand(16, 12, 10, generator=g)
    image[0, 8:12, 8:12, 6:9] = 60.0  # dark voxels below the foreground threshold: clipped up to its 0.5th percentile
    norm = MRNormalize(upper=None)
    lo, mean, std = foreground_statistics(image, norm.lower, norm.foreground_fraction)
    expected = norm(image)
    torch.testing.assert_close((image.clamp(min=lo) - mean) / std, torch.as_tensor(expected), atol=1e-4, rtol=1e-4)
    assert lo > 60.0 and float(torch.as_tensor(expected)[0, 9, 9, 7]) == float(torch.as_tensor(expected)[0, 0, 0, 0])
