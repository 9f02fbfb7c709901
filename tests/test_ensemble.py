"""Seed ensembles: MeanEnsemble, the ensemble checkpoint, the fused deployable ensemble."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from medmamba.apps.classification import FusedLesionMapClassifier
from medmamba.networks import LesionMapClassifier, MeanEnsemble, MobileMambaSeg
from medmamba.training import ensemble_state_dict, save_ensemble_checkpoint

TINY = {"spatial_dims": 2, "in_channels": 5, "out_channels": 5, "embed_dim": [16, 24, 32], "depth": [1, 1, 1]}


def _member(seed: int) -> LesionMapClassifier:
    torch.manual_seed(seed)
    net = LesionMapClassifier(MobileMambaSeg("t2", **TINY), lesion_channel=4)
    for m in net.modules():  # BatchNorm statistics other than the identity, so that fusion matters
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
    return net.eval()


def test_mean_ensemble_averages_its_members_and_scripts() -> None:
    members = [nn.Linear(3, 2), nn.Linear(3, 2), nn.Linear(3, 2)]
    ens = MeanEnsemble(members)
    x = torch.randn(4, 3)
    with torch.no_grad():
        expected = sum(m(x) for m in members) / 3
        assert torch.allclose(ens(x), expected, atol=1e-6)
        assert torch.equal(torch.jit.script(ens)(x), ens(x))
    assert ens.in_channels == -1  # nn.Linear has no in_channels
    assert MeanEnsemble([_member(0)]).in_channels == 5


def test_mean_ensemble_argument_errors() -> None:
    with pytest.raises(ValueError, match="at least one network"):
        MeanEnsemble([])
    with pytest.raises(TypeError, match=r"networks\[1\] must be an nn.Module, got str"):
        MeanEnsemble([nn.Identity(), "net"])  # type: ignore[list-item]


def test_ensemble_state_dict_prefixes_each_member_and_reads_saver_checkpoints(tmp_path: Path) -> None:
    a, b = _member(0), _member(1)
    torch.save({"model": a.state_dict()}, tmp_path / "a.pt")  # CheckpointSaver layout
    state = ensemble_state_dict([str(tmp_path / "a.pt"), b.state_dict()])
    assert set(state) == {f"networks.{i}.{k}" for i in (0, 1) for k in a.state_dict()}
    key = "network.head.weight"
    assert torch.equal(state[f"networks.0.{key}"], a.state_dict()[key])
    assert torch.equal(state[f"networks.1.{key}"], b.state_dict()[key])
    ens = MeanEnsemble([_member(5), _member(6)])
    ens.load_state_dict(state)  # exactly the keys of a MeanEnsemble of the members' architecture


def test_ensemble_state_dict_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="at least one checkpoint"):
        ensemble_state_dict([])
    small = {"w": torch.zeros(2)}
    with pytest.raises(ValueError, match=r"members\[1\] does not match members\[0\].*\['w'\]"):
        ensemble_state_dict([small, {"w": torch.zeros(3)}])
    with pytest.raises(ValueError, match=r"members\[1\] does not match.*\['v'\]"):
        ensemble_state_dict([small, {"w": torch.zeros(2), "v": torch.zeros(1)}])
    with pytest.raises(FileNotFoundError, match=r"members\[0\]=.*missing.pt' does not exist"):
        save_ensemble_checkpoint([tmp_path / "missing.pt"], tmp_path / "out.pt")


def test_fused_ensemble_equals_the_mean_of_the_unfused_members(tmp_path: Path) -> None:
    members = [_member(0), _member(1)]
    for i, m in enumerate(members):
        torch.save({"model": m.state_dict()}, tmp_path / f"m{i}.pt")
    path = save_ensemble_checkpoint([tmp_path / "m0.pt", tmp_path / "m1.pt"], tmp_path / "sub" / "ens.pt")
    fused = FusedLesionMapClassifier("t2", lesion_channel=4, ensemble_size=2, **TINY)
    fused.load_state_dict(torch.load(path, weights_only=True))
    assert fused.is_fused and fused.in_channels == 5
    assert not any(isinstance(m, nn.BatchNorm2d) for m in fused.modules())
    x = torch.randn(3, 5, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = (members[0](x) + members[1](x)) / 2
        out = fused(x)
        assert float((out - expected).abs().max()) <= 1e-4 * float(expected.abs().max())
        assert torch.equal(out[:, 0], torch.zeros(3))  # [0, mean lesion log-odds]
        assert torch.allclose(torch.jit.script(fused)(x), out, atol=1e-6)


@pytest.mark.parametrize("size", [0, -1, 1.5, True])
def test_fused_classifier_rejects_a_bad_ensemble_size(size: object) -> None:
    with pytest.raises(ValueError, match=f"ensemble_size must be a positive integer, got {size!r}"):
        FusedLesionMapClassifier("t2", lesion_channel=4, ensemble_size=size, **TINY)  # type: ignore[arg-type]
