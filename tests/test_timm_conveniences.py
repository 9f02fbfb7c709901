"""timm's model conveniences on MobileMamba: forward_intermediates, reset_classifier, no_weight_decay."""

from __future__ import annotations

import pytest
import torch

from medmamba.networks import MobileMamba, convert_official_state_dict, emulate_reference_cpu_merge
from medmamba.training.optim import param_groups

from reference_fixtures import load_reference

#: The reference fixtures' small configuration (embed_dim 32/48/64, one block per stage).
TINY = {
    "embed_dim": (32, 48, 64),
    "depth": (1, 1, 1),
    "global_ratio": (0.8, 0.7, 0.6),
    "local_ratio": (0.2, 0.2, 0.3),
    "kernels": (7, 5, 3),
    "ssm_ratio": 2.0,
    "drop_path": 0.0,
}


def _relerr(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max()).item()


def _reference_model(fx: dict) -> MobileMamba:
    cfg = {k: v for k, v in fx["config"].items() if k != "img_size"}
    model = MobileMamba(None, num_classes=fx["num_classes"], distillation=fx["distillation"], **cfg)
    model.load_state_dict(convert_official_state_dict(fx["state_dict"]), strict=True)
    return emulate_reference_cpu_merge(model.eval())


@pytest.mark.parametrize("name", ["mobilemamba_tiny", "mobilemamba_tiny_dist"])
def test_forward_intermediates_are_the_reference_stage_features(name: str) -> None:
    fx = load_reference(name)
    model = _reference_model(fx)
    with torch.no_grad():
        final, stages = model.forward_intermediates(fx["input"])
        logits = model.forward_head(final)
    assert len(stages) == 3
    for ours, ref in zip(stages, fx["features"][1:]):
        assert ours.shape == ref.shape
        assert _relerr(ours, ref) <= 1e-4
    assert torch.equal(final, stages[-1])
    assert _relerr(logits, fx["output"]) <= 1e-4


def test_forward_intermediates_selects_stages_like_timm() -> None:
    torch.manual_seed(0)
    model = MobileMamba(None, num_classes=3, **TINY).eval()
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        everything = model.forward_features(x)
        last_two = model.forward_intermediates(x, indices=2, intermediates_only=True)
        picked = model.forward_intermediates(x, indices=[-1, 0], intermediates_only=True)
        final, early = model.forward_intermediates(x, indices=[0], stop_early=True)
        _, normed = model.forward_intermediates(x, norm=True)
    assert [t.shape[1] for t in last_two] == [48, 64]
    assert all(torch.equal(a, b) for a, b in zip(last_two, everything[1:]))
    assert len(picked) == 2 and torch.equal(picked[0], everything[0]) and torch.equal(picked[1], everything[2])
    # stop_early: the final output is the last stage run, stage 1 at stride 16
    assert len(early) == 1 and torch.equal(final, everything[0]) and final.shape == (2, 32, 4, 6)
    assert all(torch.equal(a, b) for a, b in zip(normed, everything))


def test_forward_intermediates_errors_name_the_argument() -> None:
    model = MobileMamba(None, num_classes=3, **TINY).eval()
    x = torch.randn(1, 3, 64, 64)
    with pytest.raises(ValueError, match="output_fmt='NHWC'"):
        model.forward_intermediates(x, output_fmt="NHWC")
    with pytest.raises(ValueError, match=r"indices=4 is out of range.*1 to 3"):
        model.forward_intermediates(x, indices=4)
    with pytest.raises(ValueError, match=r"indices=\[0, 3\] holds 3, out of range.*-3 to 2"):
        model.forward_intermediates(x, indices=[0, 3])
    with pytest.raises(ValueError, match="indices='all'"):
        model.forward_intermediates(x, indices="all")
    with pytest.raises(ValueError, match="built with in_channels=3"):
        model.forward_intermediates(torch.randn(1, 1, 64, 64))


@pytest.mark.parametrize("distillation", [False, True])
def test_reset_classifier_changes_the_head_width_and_keeps_the_rest(distillation: bool) -> None:
    torch.manual_seed(0)
    model = MobileMamba(None, num_classes=5, distillation=distillation, **TINY).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(2, 3, 64, 64)
    model.reset_classifier(7)
    after = model.state_dict()
    body = [k for k in before if not k.startswith(("head.", "head_dist."))]
    assert body and all(torch.equal(before[k], after[k]) for k in body)
    assert model.num_classes == 7 and model.get_classifier() is model.head
    assert after["head.linear.weight"].shape == (7, 64)
    assert ("head_dist.linear.weight" in after) == distillation
    with torch.no_grad():
        assert model(x).shape == (2, 7)
    model.reset_classifier(0)
    assert not any(k.startswith(("head.", "head_dist.")) for k in model.state_dict())
    with torch.no_grad():
        assert model(x).shape == (2, 64)  # pooled features


def test_reset_classifier_errors_name_the_argument() -> None:
    model = MobileMamba(None, num_classes=5, **TINY)
    with pytest.raises(ValueError, match="num_classes=-1"):
        model.reset_classifier(-1)
    with pytest.raises(ValueError, match="num_classes=2.5"):
        model.reset_classifier(2.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="global_pool='max'"):
        model.reset_classifier(3, global_pool="max")
    assert model.num_classes == 5 and model.head.linear.out_features == 5


def test_no_weight_decay_names_the_scan_parameters_and_keeps_the_optimiser_groups() -> None:
    model = MobileMamba(None, num_classes=5, **TINY)
    names = model.no_weight_decay()
    scan = {n for n, _ in model.named_parameters() if n.rsplit(".", 1)[-1] in ("A_log", "D", "dt_proj_bias")}
    assert names == scan and len(names) == 3 * 3  # three parameters in each stage's selective scan
    with_hook = param_groups(model, 0.05)
    assert names <= set(with_hook[1]["param_names"])
    # the optimiser's own rules already exempt these names: the hook changes no group
    plain = torch.nn.Module()
    plain.add_module("net", model)
    without_hook = param_groups(plain, 0.05)
    assert [{n.removeprefix("net.") for n in g["param_names"]} for g in without_hook] == [
        set(g["param_names"]) for g in with_hook
    ]
