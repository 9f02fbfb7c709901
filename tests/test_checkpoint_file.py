"""Unreadable checkpoints get an error naming the file and the cause (``read_checkpoint``)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from medmamba.networks.checkpoint_file import read_checkpoint
from medmamba.training import load_weights


class Opaque:
    """A class a pickle could construct (and a malicious one could abuse)."""


def test_a_good_checkpoint_reads_back(tmp_path: Path) -> None:
    torch.save({"model": {"w": torch.arange(3.0)}}, tmp_path / "ok.pt")
    assert read_checkpoint(tmp_path / "ok.pt")["model"]["w"].tolist() == [0.0, 1.0, 2.0]


def test_bad_checkpoints_are_named_with_their_cause(tmp_path: Path) -> None:
    (tmp_path / "empty.pt").write_bytes(b"")
    with pytest.raises(ValueError, match=r"empty\.pt' is empty \(0 bytes\)"):
        read_checkpoint(tmp_path / "empty.pt")
    (tmp_path / "text.pt").write_text("not a checkpoint at all\n")
    with pytest.raises(ValueError, match=r"text\.pt' (cannot be read|was refused)"):
        read_checkpoint(tmp_path / "text.pt")
    torch.save({"model": {"w": torch.zeros(1000)}}, tmp_path / "full.pt")
    data = (tmp_path / "full.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"cut\.pt' cannot be read: truncated, corrupt"):
        read_checkpoint(tmp_path / "cut.pt")
    torch.save({"model": Opaque()}, tmp_path / "object.pt")  # an arbitrary class: refused by weights_only
    with pytest.raises(ValueError, match=r"object\.pt' was refused"):
        read_checkpoint(tmp_path / "object.pt")
    with pytest.raises(ValueError, match="is a folder"):
        read_checkpoint(tmp_path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_checkpoint(tmp_path / "missing.pt")


def test_loading_weights_from_an_empty_file_names_it(tmp_path: Path) -> None:
    (tmp_path / "model.pt").write_bytes(b"")
    with pytest.raises(ValueError, match=r"model\.pt' is empty"):
        load_weights(torch.nn.Linear(2, 2), str(tmp_path / "model.pt"))
