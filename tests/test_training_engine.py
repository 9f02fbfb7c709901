"""The distillation iteration inside MONAI's SupervisedTrainer, with EMA, mixup and AMP."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from medmamba.training import (
    DistillationIteration,
    DistillationLoss,
    EMAHandler,
    FusedExportHandler,
    MixupCutmix,
    ModelEMA,
    SegmentationCutMix,
    SegmentationDistillationLoss,
    Teacher,
    TeacherLogitCache,
    create_optimizer,
    resolve_amp_dtype,
)

monai = pytest.importorskip("monai")
from monai.engines import SupervisedEvaluator, SupervisedTrainer  # noqa: E402
from monai.handlers import CheckpointSaver  # noqa: E402
from monai.networks.nets import DenseNet  # noqa: E402


class TwoHead(nn.Module):
    """A tiny student with a class head and a distillation head, like MobileMamba(distillation=True)."""

    def __init__(self, classes: int = 3) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(4, classes)
        self.head_dist = nn.Linear(4, classes)

    def forward(self, x):
        f = self.body(x)
        if self.training:
            return self.head(f), self.head_dist(f)
        return (self.head(f) + self.head_dist(f)) / 2


def _data(n: int = 8, size: int = 16, seed: int = 0) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    return [{"image": torch.randn(1, size, size, generator=g), "label": torch.tensor(i % 3), "id": f"s{i}"} for i in range(n)]


def _loader(data, batch_size=4):
    from monai.data import DataLoader

    return DataLoader(data, batch_size=batch_size, shuffle=False, num_workers=0)


def test_supervised_trainer_with_distillation_ema_mixup_and_checkpoint(tmp_path):
    torch.manual_seed(0)
    student = TwoHead()
    teacher_net = DenseNet(spatial_dims=2, in_channels=1, out_channels=3, init_features=4, growth_rate=4, block_config=(1, 1))
    teacher = Teacher(teacher_net, input_size=12)
    teacher_before = {k: v.clone() for k, v in teacher.state_dict().items()}
    ema = ModelEMA(student, decay=0.9998)
    optimizer = create_optimizer(student, lr=1e-2)
    iteration = DistillationIteration(
        teacher=teacher,
        mixup=MixupCutmix(num_classes=3, seed=0),
        grad_clip_norm=5.0,
    )
    losses = []
    trainer = SupervisedTrainer(
        device=torch.device("cpu"),
        max_epochs=1,
        train_data_loader=_loader(_data()),
        network=student,
        optimizer=optimizer,
        loss_function=nn.CrossEntropyLoss(),  # the bundle's loss is the base loss
        iteration_update=iteration,
        train_handlers=[EMAHandler(ema=ema)],
    )
    from ignite.engine import Events

    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: losses.append(e.state.output))
    saver = CheckpointSaver(save_dir=str(tmp_path), save_dict={"model": student, "ema": ema}, save_final=True)
    saver.attach(trainer)
    exporter = FusedExportHandler(
        network=TwoHead(), input_shape=(2, 1, 16, 16), checkpoint_saver=saver, checkpoint_key="ema",
        export_kwargs={"fuse_strict": False, "formats": ("onnx",), "onnx_exporter": "legacy"},
    )
    exporter.attach(trainer)  # after the saver: exports the final checkpoint's EMA weights
    trainer.run()

    assert trainer.state.iteration == 2 and len(losses) == 2
    for batch_out in losses:  # decollated by the trainer (MONAI's default): one dict per sample
        assert isinstance(batch_out, list) and len(batch_out) == 4
        out = batch_out[0]
        assert torch.isfinite(torch.as_tensor(out["loss"])) and float(out["loss_kd"]) > 0
        assert out["pred"].shape == (3,) and out["label"].shape == (3,)  # soft targets from mixup
        assert out["teacher_pred"].shape == (3,)
        assert float(out["loss"]) == pytest.approx(float(out["loss_base"]) + 5.0 * float(out["loss_kd"]), rel=1e-5)
    assert int(ema.num_updates) == 2
    diffs = [not torch.allclose(p, q) for p, q in zip(ema.module.parameters(), student.parameters())]
    assert any(diffs)
    assert all(torch.equal(v, teacher.state_dict()[k]) for k, v in teacher_before.items())
    assert not teacher.training
    ckpt = next(tmp_path.glob("*.pt"))
    state = torch.load(ckpt, weights_only=True)
    assert set(state) == {"model", "ema"} and "num_updates" in state["ema"]
    assert exporter.result is not None and exporter.result.onnx_path.startswith(str(tmp_path))
    assert exporter.result.max_abs_error["onnx"] < 1e-4

    # the EMA model is evaluated by a standard evaluator
    evaluator = SupervisedEvaluator(device=torch.device("cpu"), val_data_loader=_loader(_data(4, seed=1)), network=ema)
    evaluator.run()
    assert evaluator.state.output[0]["pred"].shape == (3,)


def test_bf16_autocast_step_on_cpu_gives_finite_loss_and_teacher_cache():
    torch.manual_seed(0)
    data = _data()
    teacher = Teacher(TwoHead())
    cache = TeacherLogitCache.build(teacher, _loader(data))
    student = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))
    outputs = []
    trainer = SupervisedTrainer(
        device=torch.device("cpu"),
        max_epochs=1,
        train_data_loader=_loader(data),
        network=student,
        optimizer=torch.optim.AdamW(student.parameters(), lr=1e-3),
        loss_function=nn.CrossEntropyLoss(),
        decollate=False,
        iteration_update=DistillationIteration(
            teacher_cache=cache, loss=DistillationLoss(kind="soft", tau=2.0, weight=1.0), amp=True, amp_dtype="bf16"
        ),
    )
    from ignite.engine import Events

    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: outputs.append(e.state.output))
    trainer.run()
    assert len(outputs) == 2
    for out in outputs:
        assert out["pred"].dtype == torch.bfloat16  # the forward ran under autocast
        assert out["loss"].dtype == torch.float32 and torch.isfinite(out["loss"])
        assert not out["skipped"]
    assert torch.allclose(outputs[0]["teacher_pred"], cache.get(["s0", "s1", "s2", "s3"]))
    assert all(torch.isfinite(p).all() for p in student.parameters())
    assert resolve_amp_dtype("cpu", "fp16") == torch.bfloat16
    with pytest.raises(ValueError, match="amp dtype"):
        resolve_amp_dtype("cpu", "int8")
    with pytest.raises(ValueError, match="mixup"):
        DistillationIteration(teacher_cache=cache, mixup=MixupCutmix(num_classes=3))


def test_segmentation_distillation_iteration_with_cutmix():
    from monai.networks.nets import UNet

    torch.manual_seed(0)

    def unet():
        return UNet(spatial_dims=2, in_channels=1, out_channels=2, channels=(4, 8), strides=(2,), num_res_units=0)

    g = torch.Generator().manual_seed(0)
    data = [
        {"image": torch.randn(1, 16, 16, generator=g), "label": (torch.rand(1, 16, 16, generator=g) > 0.5).float()}
        for _ in range(4)
    ]
    student = unet()
    teacher = Teacher(unet())  # built before the MONAI DataLoader, which re-seeds torch's generator
    outputs = []
    trainer = SupervisedTrainer(
        device=torch.device("cpu"),
        max_epochs=1,
        train_data_loader=_loader(data),
        network=student,
        optimizer=torch.optim.AdamW(student.parameters(), lr=1e-3),
        loss_function=None,
        decollate=False,
        iteration_update=DistillationIteration(
            teacher=teacher,
            loss=SegmentationDistillationLoss(tau=2.0, weight=0.5, region="foreground"),
            mixup=SegmentationCutMix(prob=1.0, seed=0),
            grad_clip_norm=1.0,
        ),
    )
    from ignite.engine import Events

    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: outputs.append(e.state.output))
    trainer.run()
    out = outputs[0]
    assert torch.isfinite(out["loss"]) and out["loss_kd"].item() > 0
    assert out["grad_norm"] is not None and torch.isfinite(out["grad_norm"])


def test_bundle_config_builds_the_recipe_components():
    from monai.bundle import ConfigParser

    config = {
        "network": {
            "_target_": "monai.networks.nets.DenseNet",
            "spatial_dims": 2, "in_channels": 1, "out_channels": 3,
            "init_features": 4, "growth_rate": 4, "block_config": [1, 1],
        },
        "teacher": {
            "_target_": "medmamba.training.Teacher",
            "network": {
                "_target_": "monai.networks.nets.DenseNet",
                "spatial_dims": 2, "in_channels": 1, "out_channels": 3,
                "init_features": 8, "growth_rate": 4, "block_config": [1, 1],
            },
            "input_size": 24,
        },
        "distillation": {
            "_target_": "medmamba.training.DistillationIteration",
            "teacher": "@teacher", "kind": "soft", "tau": 1.0, "weight": 5.0, "grad_clip_norm": 5.0,
            "mixup": {"_target_": "medmamba.training.MixupCutmix", "num_classes": 3, "label_smoothing": 0.1},
        },
        "ema": {"_target_": "medmamba.training.ModelEMA", "model": "@network", "decay": 0.9998},
        "ema_handler": {"_target_": "medmamba.training.EMAHandler", "ema": "@ema"},
        "optimizer": {"_target_": "medmamba.training.create_optimizer", "model": "@network", "lr": 0.001},
        "lr_scheduler": {
            "_target_": "medmamba.training.WarmupCosineLR",
            "optimizer": "@optimizer", "warmup_steps": 2, "total_steps": 10,
        },
        "export": {
            "_target_": "medmamba.training.FusedExportHandler",
            "network": "@network", "input_shape": [1, 1, 16, 16], "export_kwargs": {"fuse_strict": False},
        },
    }
    parser = ConfigParser(config)
    iteration = parser.get_parsed_content("distillation")
    assert isinstance(iteration, DistillationIteration) and isinstance(iteration.teacher, Teacher)
    assert isinstance(parser.get_parsed_content("ema_handler").ema, ModelEMA)
    sched = parser.get_parsed_content("lr_scheduler")
    assert [g["weight_decay"] for g in sched.optimizer.param_groups] == [0.05, 0.0]
    assert parser.get_parsed_content("export").sample_input.shape == (1, 1, 16, 16)


def test_with_mobilemamba_two_head_student(tmp_path):
    networks = pytest.importorskip("medmamba.networks")
    if not hasattr(networks, "MobileMamba"):
        pytest.skip("medmamba.networks.MobileMamba not available")
    from medmamba.training import export_fused, param_groups

    torch.manual_seed(0)
    kw = {"in_channels": 1, "num_classes": 3, "embed_dim": (32, 48, 64), "depth": (1, 1, 1)}
    student = networks.MobileMamba("t2", distillation=True, **kw)
    teacher = Teacher(networks.MobileMamba("t2", **{**kw, "embed_dim": (48, 64, 80)}))
    no_decay = param_groups(student)[1]["param_names"]
    for last in ("A_log", "D", "dt_proj_bias"):
        assert any(n.endswith("." + last) for n in no_decay)
    ema = ModelEMA(student)
    data = [{"image": torch.randn(1, 64, 64), "label": torch.tensor(i % 3)} for i in range(4)]
    outputs = []
    trainer = SupervisedTrainer(
        device=torch.device("cpu"),
        max_epochs=1,
        train_data_loader=_loader(data),
        network=student,
        optimizer=create_optimizer(student, lr=1e-3),
        loss_function=nn.CrossEntropyLoss(),
        decollate=False,
        iteration_update=DistillationIteration(teacher=teacher, grad_clip_norm=5.0, amp=True),
        train_handlers=[EMAHandler(ema=ema)],
    )
    from ignite.engine import Events

    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: outputs.append(e.state.output))
    trainer.run()
    out = outputs[0]
    assert torch.isfinite(out["loss"]) and out["loss_kd"].item() > 0
    assert out["pred"].shape == (4, 3)  # mean of the two heads
    result = export_fused(ema, out_dir=tmp_path, sample_input=torch.randn(2, 1, 64, 64), formats=("onnx",),
                          onnx_exporter="legacy")
    assert result.max_abs_error["onnx@batch=3"] < 1e-4


def test_non_finite_input_is_an_error_before_batchnorm_statistics_change():
    torch.manual_seed(0)
    data = _data()
    data[5]["image"][0, 3, 3] = float("nan")  # second batch
    student = TwoHead()
    bn = student.body[1]
    trainer = SupervisedTrainer(
        device=torch.device("cpu"),
        max_epochs=1,
        train_data_loader=_loader(data),
        network=student,
        optimizer=torch.optim.SGD(student.parameters(), lr=0.1),
        loss_function=nn.CrossEntropyLoss(),
        decollate=False,
        iteration_update=DistillationIteration(loss=DistillationLoss(weight=0.0)),
    )
    stats = {}
    from ignite.engine import Events

    trainer.add_event_handler(Events.ITERATION_COMPLETED(once=1), lambda e: stats.update(mean=bn.running_mean.clone()))
    with pytest.raises(ValueError, match=r"inputs of iteration 2 hold 1 non-finite value"):
        trainer.run()
    assert torch.isfinite(bn.running_mean).all() and torch.equal(bn.running_mean, stats["mean"])
    assert all(torch.isfinite(p).all() for p in student.parameters())
