"""On a CUDA GPU (skipped without one): the precision ``amp: "auto"`` picks there, a distillation step
in it, the channels-last student, and the bundles' configs choosing CUDA."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from medmamba.training import Autocast, DistillationIteration, resolve_precision

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

ROOT = Path(__file__).resolve().parents[1]


def test_auto_precision_matches_the_gpu() -> None:
    precision = resolve_precision("auto", "cuda")
    if torch.cuda.is_bf16_supported():
        assert precision.dtype == torch.bfloat16 and not precision.grad_scaler
    else:
        assert precision.dtype == torch.float16 and precision.grad_scaler
    assert precision.monai_amp and precision.monai_amp_kwargs == {"dtype": precision.dtype}


def test_distillation_step_on_the_gpu_in_auto_precision() -> None:
    from monai.engines import SupervisedTrainer

    torch.manual_seed(0)
    device = torch.device("cuda")
    student = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3))
    teacher = Autocast(nn.Sequential(nn.Flatten(), nn.Linear(64, 3)), amp="auto").to(device)
    data = [{"image": torch.randn(1, 8, 8), "label": torch.tensor(i % 3)} for i in range(8)]
    precision = resolve_precision("auto", device)
    trainer = SupervisedTrainer(
        device=device, max_epochs=1, train_data_loader=torch.utils.data.DataLoader(data, batch_size=4),
        network=student.to(device), optimizer=torch.optim.AdamW(student.parameters(), lr=1e-3),
        loss_function=nn.CrossEntropyLoss(), amp=precision.monai_amp, decollate=False,
        iteration_update=DistillationIteration(teacher=teacher, amp=precision, weight=1.0, grad_clip_norm=5.0),
    )
    trainer.run()
    out = trainer.state.output
    assert torch.isfinite(out["loss"]) and out["teacher_pred"].dtype == torch.float32
    assert trainer.state.iteration == 2


def test_channels_last_student_forward_and_backward_on_the_gpu() -> None:
    from medmamba.networks import MobileMambaSeg

    device = torch.device("cuda")
    net = MobileMambaSeg("t2", spatial_dims=2, in_channels=3, out_channels=4).to(device, memory_format=torch.channels_last)
    x = torch.randn(4, 3, 128, 128, device=device).contiguous(memory_format=torch.channels_last)
    with resolve_precision("auto", device).autocast():
        out = net(x)
    out = out[0] if isinstance(out, (list, tuple)) else out
    assert out.shape == (4, 4, 128, 128) and torch.isfinite(out.float()).all()
    out.float().mean().backward()
    assert all(torch.isfinite(p.grad).all() for p in net.parameters() if p.grad is not None)


@pytest.mark.parametrize("bundle", ["mobilemamba_classification", "mobilemamba_segmentation"])
@pytest.mark.parametrize(  # the teacher's config is an overlay on train.json
    "config", [("train.json",), ("train.json", "train_teacher.json"), ("evaluate.json",), ("inference.json",)], ids="+".join
)
def test_bundle_configs_choose_cuda_and_channels_last(bundle: str, config: tuple[str, ...]) -> None:
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config([str(ROOT / "bundles" / bundle / "configs" / c) for c in config])
    parser["bundle_root"] = str(ROOT / "bundles" / bundle)
    assert parser.get_parsed_content("device").type == "cuda"
    assert parser.get_parsed_content("channels_last") is True
    if "precision" in parser:
        assert parser.get_parsed_content("precision").monai_amp
