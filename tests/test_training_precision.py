"""Precision by hardware (``amp: "auto"``): resolution per device and CPU, the emulated-bf16 warning,
the teacher's :class:`Autocast` wrapper, the distillation iteration, and the bundles' configs."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
from torch import nn

import medmamba.resources as resources
import medmamba.training.amp as amp_module
from medmamba.training import Autocast, DistillationIteration, Precision, check_amp, resolve_precision

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted(ROOT.glob("bundles/*/configs/*.json"))
AMP_LOGGER = "medmamba.training.amp"


@pytest.fixture
def native_bf16(monkeypatch: pytest.MonkeyPatch):
    """Set what ``cpu_native_bf16`` reports: ``native_bf16(True)`` / ``native_bf16(False)``."""

    def set_native(native: bool, reason: str | None = None) -> None:
        why = reason or ("AMX" if native else "ATen CPU capability AVX2")
        monkeypatch.setattr(amp_module, "cpu_native_bf16", lambda: (native, why))

    return set_native


@pytest.fixture
def cuda_bf16(monkeypatch: pytest.MonkeyPatch):
    """Set what ``torch.cuda.is_bf16_supported`` reports."""

    def set_supported(supported: bool) -> None:
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: supported)

    return set_supported


# ------------------------------------------------------------------------------------- resolution
@pytest.mark.parametrize(
    ("native", "amp", "expected"),
    [
        (True, "auto", torch.bfloat16),
        (False, "auto", torch.float32),
        (True, "AUTO", torch.bfloat16),
        (True, False, torch.float32),
        (False, False, torch.float32),
        (True, "fp32", torch.float32),
        (True, "float32", torch.float32),
        (True, True, torch.bfloat16),
        (False, True, torch.bfloat16),
        (True, "true", torch.bfloat16),
        (False, "bf16", torch.bfloat16),
        (True, "bfloat16", torch.bfloat16),
        (True, "fp16", torch.bfloat16),  # no float16 autocast on the CPU
        (True, torch.bfloat16, torch.bfloat16),
        (False, torch.float32, torch.float32),
    ],
)
def test_cpu_precision_for_each_setting(native_bf16, native: bool, amp, expected: torch.dtype) -> None:
    native_bf16(native)
    precision = resolve_precision(amp, "cpu")
    assert precision.dtype == expected
    assert precision.device_type == "cpu"
    assert precision.enabled == (expected != torch.float32)
    assert not precision.grad_scaler and not precision.monai_amp  # MONAI's engines autocast on CUDA only


@pytest.mark.parametrize(
    ("supported", "amp", "expected", "scaler"),
    [
        (True, "auto", torch.bfloat16, False),
        (False, "auto", torch.float16, True),
        (True, True, torch.bfloat16, False),
        (False, True, torch.float16, True),
        (True, "fp16", torch.float16, True),
        (True, "bf16", torch.bfloat16, False),
        (False, "bf16", torch.bfloat16, False),
        (True, False, torch.float32, False),
        (False, "fp32", torch.float32, False),
    ],
)
def test_cuda_precision_for_each_setting(cuda_bf16, supported: bool, amp, expected: torch.dtype, scaler: bool) -> None:
    cuda_bf16(supported)
    precision = resolve_precision(amp, torch.device("cuda", 0))
    assert precision.dtype == expected
    assert precision.grad_scaler is scaler
    assert precision.monai_amp is (expected != torch.float32)
    assert precision.monai_amp_kwargs == ({"dtype": expected} if expected != torch.float32 else {})


@pytest.mark.parametrize(("native", "amp", "expected"), [(True, "auto", torch.float32), (False, "auto", torch.float32),
                                                         (True, "bf16", torch.bfloat16), (True, True, torch.bfloat16)])
def test_cpu_bf16_false_keeps_auto_at_fp32_on_the_cpu_only(native_bf16, cuda_bf16, native: bool, amp, expected) -> None:
    native_bf16(native)
    precision = resolve_precision(amp, "cpu", cpu_bf16=False)
    assert precision.dtype == expected
    if native and amp == "auto":
        assert "bf16 does not speed this network up there (cpu_bf16=False)" in precision.reason
    cuda_bf16(True)
    assert resolve_precision("auto", "cuda", cpu_bf16=False).dtype == torch.bfloat16


def test_auto_on_other_devices_and_restricted_device_types_is_fp32(native_bf16) -> None:
    native_bf16(True)
    assert resolve_precision("auto", "meta").dtype == torch.float32
    evaluation = resolve_precision("auto", "cpu", device_types=["cuda"])
    assert evaluation.dtype == torch.float32 and evaluation.reason == "amp off: autocast here on cuda only"
    with pytest.raises(TypeError, match="device_types"):
        resolve_precision("auto", "cpu", device_types="cuda")


def test_precision_names_reason_and_autocast(native_bf16) -> None:
    native_bf16(True, "AVX512-BF16")
    precision = resolve_precision("auto", "cpu")
    assert precision.name == "bf16" and precision.requested == "auto"
    assert str(precision) == "bf16 (auto: CPU has native bf16 (AVX512-BF16))"
    with precision.autocast():
        assert torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
    off = resolve_precision(False, "cpu")
    assert off.name == "fp32"
    with off.autocast():
        assert not torch.is_autocast_enabled("cpu")


def test_resolution_is_logged(native_bf16, caplog: pytest.LogCaptureFixture) -> None:
    native_bf16(False)
    with caplog.at_level(logging.INFO, logger=AMP_LOGGER):
        resolve_precision("auto", "cpu")
    assert "precision on cpu: fp32 (auto: CPU without native bf16 (ATen CPU capability AVX2)) (amp=auto)" in caplog.text


def test_a_precision_passes_through_on_its_own_device_type_only(native_bf16) -> None:
    native_bf16(True)
    precision = resolve_precision("auto", "cpu")
    assert resolve_precision(precision, "cpu") is precision
    with pytest.raises(ValueError, match="Precision for 'cpu'.*'cuda'"):
        resolve_precision(precision, "cuda")


@pytest.mark.parametrize("bad", ["int8", "yes", "", torch.int8])
def test_unknown_settings_are_value_errors_naming_the_value(bad) -> None:
    with pytest.raises(ValueError, match="amp"):
        resolve_precision(bad, "cpu")
    with pytest.raises(ValueError, match="amp"):
        check_amp(bad)


@pytest.mark.parametrize("bad", [None, 1, 0.5, ["bf16"]])
def test_settings_of_other_types_are_type_errors(bad) -> None:
    with pytest.raises(TypeError, match="amp must be one of"):
        resolve_precision(bad, "cpu")


# --------------------------------------------------------------------------- the emulated-bf16 warning
@pytest.mark.parametrize("forced", [True, "true", "bf16", "bfloat16"])
def test_forcing_bf16_without_native_support_warns_with_the_expected_slowdown(
    native_bf16, caplog: pytest.LogCaptureFixture, forced
) -> None:
    native_bf16(False, "ATen CPU capability AVX2")
    with caplog.at_level(logging.WARNING, logger=AMP_LOGGER):
        precision = resolve_precision(forced, "cpu")
    assert precision.dtype == torch.bfloat16 and "emulated" in precision.reason
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    message = warnings[0].getMessage()
    assert "without native bfloat16" in message and "ATen CPU capability AVX2" in message
    assert "about 12x slower than float32" in message
    assert "amp='auto'" in message


@pytest.mark.parametrize("setting", ["auto", False, "fp32"])
def test_no_warning_when_not_forcing_bf16(native_bf16, caplog: pytest.LogCaptureFixture, setting) -> None:
    native_bf16(False)
    with caplog.at_level(logging.WARNING, logger=AMP_LOGGER):
        resolve_precision(setting, "cpu")
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_no_warning_when_forcing_bf16_on_a_native_cpu(native_bf16, caplog: pytest.LogCaptureFixture) -> None:
    native_bf16(True)
    with caplog.at_level(logging.WARNING, logger=AMP_LOGGER):
        assert resolve_precision("bf16", "cpu").dtype == torch.bfloat16
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


# ------------------------------------------------------------------------------------ Autocast wrapper
class _Recorder(nn.Module):
    """A linear layer that records the dtype its output was computed in."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(4, 2)
        self.seen: list[torch.dtype] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.linear(x)
        self.seen.append(out.dtype)
        return out


@pytest.mark.parametrize(("native", "inner"), [(True, torch.bfloat16), (False, torch.float32)])
def test_autocast_auto_runs_the_network_in_the_resolved_precision_and_returns_float32(
    native_bf16, native: bool, inner: torch.dtype
) -> None:
    native_bf16(native)
    net = _Recorder()
    wrapped = Autocast(net, amp="auto")
    out = wrapped(torch.randn(3, 4))
    assert net.seen == [inner] and out.dtype == torch.float32
    assert wrapped.precision("cpu").dtype == inner
    # its own precision wins over the caller's autocast (a teacher beside a bf16 student)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        wrapped(torch.randn(3, 4))
    assert net.seen[-1] == inner


def test_autocast_takes_a_resolved_precision_and_the_old_arguments(native_bf16) -> None:
    native_bf16(False)
    net = _Recorder()
    Autocast(net, amp=Precision("cpu", torch.float32, "auto", "test"))(torch.randn(1, 4))
    assert net.seen == [torch.float32]
    Autocast(net, dtype="bf16", enabled=False)(torch.randn(1, 4))  # the old disabled wrapper
    assert net.seen[-1] == torch.float32
    old = Autocast(net, dtype="bf16")  # the old default: bf16 forced
    old(torch.randn(1, 4))
    assert net.seen[-1] == torch.bfloat16 and old.precision("cpu").requested == "bf16"
    assert set(old.state_dict()) == {"linear.weight", "linear.bias"}  # the wrapped network's keys


def test_autocast_rejects_bad_arguments() -> None:
    with pytest.raises(TypeError, match="network"):
        Autocast("not a module")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="amp"):
        Autocast(nn.Linear(2, 2), amp="int8")
    with pytest.raises(ValueError, match="dtype"):
        Autocast(nn.Linear(2, 2), dtype="int8")


def test_segmentation_app_still_exports_the_one_autocast_wrapper() -> None:
    from medmamba.apps import segmentation

    assert segmentation.Autocast is Autocast


# ---------------------------------------------------------------------------------- distillation iteration
def _engine(amp: bool = False):
    class _Engine:
        pass

    engine = _Engine()
    engine.amp = amp
    return engine


@pytest.mark.parametrize(
    ("setting", "amp_dtype", "trainer_amp", "native", "expected"),
    [
        ("auto", None, False, True, torch.bfloat16),
        ("auto", None, False, False, torch.float32),
        (False, None, True, True, torch.float32),
        (True, "bf16", False, False, torch.bfloat16),
        (None, None, True, False, torch.bfloat16),  # follows the trainer's flag: on -> True's choice
        (None, None, False, True, torch.float32),
    ],
)
def test_distillation_iteration_resolves_its_amp(native_bf16, setting, amp_dtype, trainer_amp, native, expected) -> None:
    native_bf16(native)
    iteration = DistillationIteration(amp=setting, amp_dtype=amp_dtype)
    assert iteration.precision("cpu", _engine(trainer_amp)).dtype == expected


def test_distillation_iteration_rejects_an_unknown_amp() -> None:
    with pytest.raises(ValueError, match="amp"):
        DistillationIteration(amp="half-ish")
    with pytest.raises(ValueError, match="amp_dtype"):
        DistillationIteration(amp=True, amp_dtype="int8")


def test_distillation_step_with_auto_trains_in_the_resolved_precision(native_bf16) -> None:
    pytest.importorskip("monai")
    from monai.engines import SupervisedTrainer

    native_bf16(False)
    torch.manual_seed(0)
    student = _Recorder()
    teacher_net = _Recorder()
    teacher = Autocast(teacher_net, amp="bf16")
    data = [{"image": torch.randn(4), "label": torch.tensor(i % 2)} for i in range(4)]
    trainer = SupervisedTrainer(
        device=torch.device("cpu"), max_epochs=1, train_data_loader=torch.utils.data.DataLoader(data, batch_size=2),
        network=student, optimizer=torch.optim.SGD(student.parameters(), lr=0.1), loss_function=nn.CrossEntropyLoss(),
        iteration_update=DistillationIteration(teacher=teacher, amp="auto", weight=1.0), decollate=False,
    )
    trainer.run()
    assert student.seen == [torch.float32, torch.float32]  # no native bf16: the student in fp32
    assert teacher_net.seen == [torch.bfloat16, torch.bfloat16]  # the teacher in its own (forced) bf16
    assert torch.isfinite(trainer.state.output["loss"])


# ------------------------------------------------------------------------------------------ CPU detection
def _patch_cpu(monkeypatch: pytest.MonkeyPatch, *, mkldnn=True, capability="AVX512", amx=False, avx512_bf16=True,
               machine="x86_64", cap=None) -> None:
    monkeypatch.setattr(resources, "_mkldnn_bf16", lambda: mkldnn)
    monkeypatch.setattr(resources, "cpu_capability", lambda: capability)
    flags = {"_is_amx_tile_supported": amx, "_is_avx512_bf16_supported": avx512_bf16}
    monkeypatch.setattr(resources, "_cpu_flag", lambda name: flags[name])
    monkeypatch.setattr(resources.platform, "machine", lambda: machine)
    for name in resources.ISA_CAP_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    if cap is not None:
        monkeypatch.setenv(cap[0], cap[1])


@pytest.mark.parametrize(
    ("kwargs", "native", "reason"),
    [
        ({}, True, "AVX512-BF16"),
        ({"amx": True}, True, "AMX"),
        ({"capability": "AVX2"}, False, "ATen CPU capability AVX2"),  # e.g. ATEN_CPU_CAPABILITY=avx2
        ({"mkldnn": False, "capability": "AVX2", "avx512_bf16": False}, False, "oneDNN reports no bfloat16"),
        ({"avx512_bf16": False}, False, "no AMX or AVX512-BF16"),  # AVX-512 without BF16 (Skylake-X)
        ({"cap": ("ONEDNN_MAX_CPU_ISA", "AVX2")}, False, "oneDNN capped at AVX2 by ONEDNN_MAX_CPU_ISA"),
        ({"cap": ("DNNL_MAX_CPU_ISA", "avx512_core")}, False, "oneDNN capped at AVX512_CORE by DNNL_MAX_CPU_ISA"),
        ({"cap": ("ONEDNN_MAX_CPU_ISA", "AVX512_CORE_BF16")}, True, "AVX512-BF16"),
        ({"cap": ("ONEDNN_MAX_CPU_ISA", "AVX512_CORE_AMX"), "amx": True}, True, "AMX"),
        ({"machine": "aarch64", "capability": "DEFAULT", "avx512_bf16": False}, True, "aarch64"),
        ({"machine": "aarch64", "mkldnn": False}, False, "oneDNN reports no bfloat16"),
    ],
)
def test_cpu_native_bf16_needs_every_layer_to_have_it(monkeypatch: pytest.MonkeyPatch, kwargs, native, reason) -> None:
    _patch_cpu(monkeypatch, **kwargs)
    got, why = resources.cpu_native_bf16()
    assert got is native and reason in why


def test_cpu_detection_feeds_auto(monkeypatch: pytest.MonkeyPatch) -> None:
    _patch_cpu(monkeypatch, cap=("ONEDNN_MAX_CPU_ISA", "AVX2"))
    precision = resolve_precision("auto", "cpu")
    assert precision.dtype == torch.float32 and "oneDNN capped at AVX2" in precision.reason


# ------------------------------------------------------------------------------------------- the bundles
def _amp_keys(node, path: str = ""):
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("amp", "teacher_amp") and path == "":
                yield key, value
            yield from _amp_keys(value, f"{path}/{key}")


def test_every_bundle_config_with_an_amp_setting_says_auto() -> None:
    found = {}
    for path in CONFIGS:
        config = json.loads(path.read_text(encoding="utf-8"))
        for key, value in _amp_keys(config):
            found[f"{path.parent.parent.name}/{path.name}#{key}"] = value
    assert found and set(found.values()) == {"auto"}, found
    for bundle in ("mobilemamba_classification", "mobilemamba_segmentation"):
        for config in ("train.json", "evaluate.json"):  # train_teacher.json, an overlay, inherits train.json's
            assert found[f"{bundle}/{config}#amp"] == "auto"
        assert found[f"{bundle}/train.json#teacher_amp"] == "auto"


def test_no_bundle_config_hard_codes_an_engine_amp_flag() -> None:
    """The engines' ``amp`` flags come from the resolved precision, never a literal true/false."""
    for path in CONFIGS:
        text = path.read_text(encoding="utf-8")
        assert '"amp": true' not in text and '"amp": false' not in text, path
        assert '"enabled": "@teacher_amp"' not in text, path


def test_training_configs_resolve_precision_and_threads_through_medmamba() -> None:
    pytest.importorskip("monai")
    from monai.bundle import ConfigParser

    for bundle in ("mobilemamba_classification", "mobilemamba_segmentation"):
        for name in ("train.json", "train_teacher.json", "evaluate.json", "inference.json"):
            parser = ConfigParser()
            files = ("train.json", name) if name == "train_teacher.json" else (name,)  # the teacher's: an overlay
            parser.read_config([str(ROOT / "bundles" / bundle / "configs" / f) for f in files])
            assert parser["num_threads"] == "auto"
            init = parser["initialize"]
            assert "$medmamba.resources.configure_threads(@num_threads)" in init
            assert any(str(i).startswith("$medmamba.resources.log_run_setup(@device") for i in init)
            if name != "inference.json":
                parser["device"] = "$torch.device('cpu')"
                assert isinstance(parser.get_parsed_content("precision"), Precision)
            # the MobileMamba students keep fp32 on CPUs (bf16 measured no faster there), the UNet
            # teachers use native bf16; evaluation autocasts on CUDA only (MONAI's evaluator)
            expected = {"train.json": "cpu_bf16=False", "evaluate.json": "device_types=['cuda']"}.get(name)
            if expected is not None:
                assert expected in parser["precision"]
            elif name == "train_teacher.json":
                assert parser["precision"] == "$medmamba.training.resolve_precision(@amp, @device)"
            if name == "train.json":
                assert parser["distillation"]["amp"] == "@precision"
                assert isinstance(parser.get_parsed_content("teacher_precision"), Precision)
