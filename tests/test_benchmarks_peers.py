"""The CPU peers of the benchmarks: MobileNetV3-Large as torchvision defines it."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from mobilenet_v3 import MobileNetV3Large  # noqa: E402


def test_mobilenet_v3_large_has_torchvisions_parameter_count_and_shapes() -> None:
    net = MobileNetV3Large(num_classes=1000).eval()
    assert sum(p.numel() for p in net.parameters()) == 5_483_032  # torchvision.models.mobilenet_v3_large
    with torch.no_grad():
        assert net(torch.randn(2, 3, 224, 224)).shape == (2, 1000)
        assert net.features(torch.randn(1, 3, 224, 224)).shape == (1, 960, 7, 7)  # stride 32
    assert MobileNetV3Large(num_classes=2, in_channels=1)(torch.randn(2, 1, 64, 64)).shape == (2, 2)


def test_gpu_benchmark_names_the_missing_device(monkeypatch) -> None:
    import pytest

    import bench_gpu

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit, match="no CUDA device is available"):
        bench_gpu.main([])
