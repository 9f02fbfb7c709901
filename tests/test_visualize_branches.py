"""medmamba.visualize.branches: MRFFI branch contributions (hooks), branch switch-off, and their plots."""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pytest
import torch
from matplotlib.container import BarContainer
from torch import nn

from medmamba.networks import MobileMamba
from medmamba.networks.blocks import MRFFI
from medmamba.visualize import fill_zero_norm_weights
from medmamba.visualize.branches import (
    BRANCHES,
    mrffi_blocks,
    mrffi_branch_ablation,
    mrffi_branch_contributions,
    mrffi_stage_groups,
    plot_branch_ablation,
    plot_branch_contributions,
    zero_mrffi_branch,
)


@contextlib.contextmanager
def _fast_cpu() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            with torch.backends.mkldnn.flags(enabled=False):
                yield
    finally:
        torch.set_num_threads(threads)


def _mrffi(global_ratio: float, local_ratio: float, channels: int = 32) -> MRFFI:
    torch.manual_seed(0)
    m = MRFFI(channels, global_ratio, local_ratio, kernel_size=3)
    fill_zero_norm_weights(m)  # the projection's BN starts at zero
    return m.eval()


def _rms(t: torch.Tensor) -> float:
    return float(t.double().pow(2).mean().sqrt())


@pytest.fixture(scope="module")
def tiny() -> nn.Module:
    torch.manual_seed(0)
    model = MobileMamba(
        None,
        in_channels=1,
        num_classes=2,
        embed_dim=(32, 48, 64),
        depth=(1, 2, 1),
        global_ratio=(0.5, 0.4, 0.3),
        local_ratio=(0.25, 0.3, 0.3),
        kernels=(7, 5, 3),
        ssm_ratio=2,
        drop_path=0.0,
    )
    fill_zero_norm_weights(model)
    return model


def test_blocks_and_stage_groups(tiny: nn.Module) -> None:
    labels = [label for label, _ in mrffi_blocks(tiny)]
    assert labels == ["stage 1 block 1", "stage 2 block 1", "stage 2 block 2", "stage 3 block 1"]
    assert mrffi_stage_groups(tiny) == {
        "stage 1": ["stage 1 block 1"],
        "stage 2": ["stage 2 block 1", "stage 2 block 2"],
        "stage 3": ["stage 3 block 1"],
    }
    assert [label for label, _ in mrffi_blocks(_mrffi(0.5, 0.5))] == ["MRFFI"]
    with pytest.raises(ValueError, match="no MRFFI"):
        mrffi_blocks(nn.Conv2d(1, 1, 1))


@pytest.mark.parametrize(
    ("g", "l", "branch"), [(0.0, 1.0, "MK-DeConv"), (0.0, 0.0, "identity"), (1.0, 0.0, "WTE-Mamba")]
)
def test_a_single_branch_carries_the_whole_block_output(g: float, l: float, branch: str) -> None:
    m = _mrffi(g, l)
    x = torch.randn(3, 32, 9, 11)
    with _fast_cpu():
        (stats,) = mrffi_branch_contributions(m, x, batch_size=2)
        with torch.no_grad():
            y = m(x) - m.proj(torch.zeros(1, 32, 9, 11))
    assert stats.channels[branch] == 32 and sum(stats.channels.values()) == 32
    assert stats.output_rms[branch] == pytest.approx(_rms(y), rel=1e-5)
    assert stats.input_rms == pytest.approx(_rms(x), rel=1e-6)
    assert stats.relative_output()[branch] == pytest.approx(_rms(y) / _rms(x), rel=1e-5)
    for other in set(BRANCHES) - {branch}:
        assert np.isnan(stats.output_rms[other]) and np.isnan(stats.feature_rms[other])
    if branch == "identity":
        assert stats.feature_rms[branch] == pytest.approx(_rms(torch.relu(x)), rel=1e-6)


def test_branch_terms_add_up_to_the_block_output() -> None:
    m = _mrffi(0.5, 0.25)  # 16 / 8 / 8 channels
    x = torch.randn(2, 32, 8, 8)
    with torch.no_grad(), _fast_cpu():
        full = m(x)
        base = m.proj(torch.zeros_like(x))
        terms = []
        for b in BRANCHES:
            others = [o for o in BRANCHES if o != b]
            with contextlib.ExitStack() as stack:
                for o in others:
                    stack.enter_context(zero_mrffi_branch(m, o))
                terms.append(m(x) - base)
        with contextlib.ExitStack() as stack:
            for b in BRANCHES:
                assert stack.enter_context(zero_mrffi_branch(m, b)) == 1
            torch.testing.assert_close(m(x), base.expand_as(full))  # every branch off: only the bias left
        stats = mrffi_branch_contributions(m, x)[0]
        torch.testing.assert_close(full, base + sum(terms), rtol=1e-5, atol=1e-5)
        for b, t in zip(BRANCHES, terms):
            assert stats.output_rms[b] == pytest.approx(_rms(t), rel=1e-5)
        torch.testing.assert_close(m(x), full)  # hooks removed


def test_contributions_of_a_network_leave_it_unchanged(tiny: nn.Module) -> None:
    x = torch.randn(3, 1, 64, 64)
    tiny.train()
    with _fast_cpu():
        stats = mrffi_branch_contributions(tiny, x, batch_size=2)
        assert tiny.training  # mode restored
        tiny.eval()
        with torch.no_grad():
            before = tiny(x)
            mrffi_branch_contributions(tiny, [x[:2], x[2:]], forward=tiny.forward_features)
            torch.testing.assert_close(tiny(x), before)
    assert [s.block for s in stats] == [label for label, _ in mrffi_blocks(tiny)]
    for s in stats:
        for b in BRANCHES:
            assert np.isfinite(s.feature_rms[b]) and s.feature_rms[b] > 0
            assert np.isfinite(s.output_rms[b]) and s.output_rms[b] > 0
    assert not any(p.grad is not None for p in tiny.parameters())
    with pytest.raises(ValueError, match="no input images"):
        mrffi_branch_contributions(tiny, [])
    with pytest.raises(ValueError, match="batch_size"):
        mrffi_branch_contributions(tiny, x, batch_size=0)


def test_ablation(tiny: nn.Module) -> None:
    x = torch.randn(4, 1, 64, 64)
    with _fast_cpu():
        res = mrffi_branch_ablation(tiny, x, batch_size=3)
        per_stage = mrffi_branch_ablation(tiny, x, branches=["WTE-Mamba"], groups=mrffi_stage_groups(tiny))
        with torch.no_grad():
            ref = tiny(x)
            with zero_mrffi_branch(tiny, "WTE-Mamba", ["stage 2 block 2"]) as n:
                assert n == 1
                assert not torch.allclose(tiny(x), ref)
            torch.testing.assert_close(tiny(x), ref)
    assert set(res) == set(BRANCHES) and all(set(v) == {"all blocks"} for v in res.values())
    assert all(v["all blocks"] > 0 for v in res.values())
    assert list(per_stage) == ["WTE-Mamba"] and list(per_stage["WTE-Mamba"]) == ["stage 1", "stage 2", "stage 3"]
    with pytest.raises(ValueError, match="branch"):
        mrffi_branch_ablation(tiny, x, branches=["global"])
    with pytest.raises(ValueError, match="not MRFFI blocks"), zero_mrffi_branch(tiny, "identity", ["stage 9 block 1"]):
        pass


def test_plots(tiny: nn.Module) -> None:
    x = torch.randn(2, 1, 64, 64)
    with _fast_cpu():
        stats = mrffi_branch_contributions(tiny, x)
        res = mrffi_branch_ablation(tiny, x, groups=mrffi_stage_groups(tiny))
    fig = plot_branch_contributions(stats, title="branches")
    assert len(fig.axes) == 2
    for ax in fig.axes:
        bars = [c for c in ax.containers if isinstance(c, BarContainer)]
        assert len(bars) == 3 and all(len(c) == len(stats) for c in bars)
        assert len(ax.get_xticklabels()) == len(stats)
    assert [t.get_text() for t in fig.axes[1].get_legend().get_texts()] == list(BRANCHES)
    fig = plot_branch_ablation(res)
    (ax,) = fig.axes
    bars = [c for c in ax.containers if isinstance(c, BarContainer)]
    assert len(bars) == 3 and all(len(c) == 3 for c in bars)
    assert [t.get_text() for t in ax.get_xticklabels()] == ["stage 1", "stage 2", "stage 3"]
    with pytest.raises(ValueError, match="empty"):
        plot_branch_contributions([])
    with pytest.raises(ValueError, match="empty"):
        plot_branch_ablation({})


def test_ablation_of_a_branch_without_channels_is_nan() -> None:
    m = _mrffi(0.5, 0.5)  # 16 / 16 / 0 channels
    x = torch.randn(2, 32, 6, 6)
    with _fast_cpu():
        res = mrffi_branch_ablation(m, x)
        with zero_mrffi_branch(m, "identity") as n:
            assert n == 0
    assert np.isnan(res["identity"]["all blocks"])
    assert res["WTE-Mamba"]["all blocks"] > 0 and res["MK-DeConv"]["all blocks"] > 0
    fig = plot_branch_ablation(res)
    labels = [t.get_text() for t in fig.axes[0].texts]  # the bar labels
    assert len(labels) == 3 and labels[2] == "" and "nan" not in " ".join(labels)
