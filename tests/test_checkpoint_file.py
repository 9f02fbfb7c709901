"""Checkpoint files: unreadable ones get an error naming the file and the cause (``read_checkpoint``),
the state dict is found in every layout the package reads (``find_state_dict``), and a state dict
that does not fit is refused with every differing key listed (``check_state_dict_keys``)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from medmamba.networks.checkpoint_file import check_state_dict_keys, find_state_dict, read_checkpoint
from medmamba.networks.convert import official_state_dict
from medmamba.training import extract_state_dict, load_weights


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


def _weights(scale: float = 1.0) -> dict[str, torch.Tensor]:
    return {"conv.weight": torch.full((2, 1, 3, 3), scale), "conv.bias": torch.zeros(2)}


def test_the_state_dict_is_found_in_every_layout() -> None:
    flat, ema = _weights(1.0), _weights(2.0)
    assert find_state_dict(flat).keys() == flat.keys()
    saver = {"model": flat, "ema": {**{f"module.{k}": v for k, v in ema.items()}, "num_updates": torch.tensor(9)}}
    assert torch.equal(find_state_dict(saver)["conv.weight"], flat["conv.weight"])
    from_ema = find_state_dict(saver, key="ema")  # ModelEMA: prefix and counter removed
    assert from_ema.keys() == ema.keys() and torch.equal(from_ema["conv.weight"], ema["conv.weight"])
    ddp = {f"module.{k}": v for k, v in flat.items()}
    assert find_state_dict({"state_dict": ddp}).keys() == flat.keys()
    released = {"net": flat, "net_E": ema, "epoch": 3}  # the reference implementation's layout
    assert torch.equal(official_state_dict(released, False, "x.pth")["conv.weight"], flat["conv.weight"])
    assert torch.equal(official_state_dict(released, True, "x.pth")["conv.weight"], ema["conv.weight"])
    assert torch.equal(extract_state_dict(released)["conv.weight"], flat["conv.weight"])


def test_state_dict_errors_name_the_file_the_keys_and_what_was_expected(tmp_path: Path) -> None:
    torch.save({"epoch": 3, "optimizer": {}}, tmp_path / "no_weights.pt")
    with pytest.raises(ValueError, match=r"no_weights\.pt' holds no state dict.*'model' / 'network'.*\['epoch', 'optimizer'\]"):
        extract_state_dict(tmp_path / "no_weights.pt")
    with pytest.raises(ValueError, match=r"checkpoint 'x\.pth' holds no state dict.*'net' / 'net_E'"):
        official_state_dict({"epoch": 3}, False, "x.pth")
    with pytest.raises(ValueError, match=r"key='ema' is not in the checkpoint; available keys: \['model'\]"):
        extract_state_dict({"model": _weights()}, key="ema")
    with pytest.raises(ValueError, match=r"entry 'model' of the checkpoint is not a state dict.*got int"):
        find_state_dict({"model": 3})
    with pytest.raises(ValueError, match="holds no state dict.*got list"):
        find_state_dict([torch.zeros(1)], source="checkpoint 'l.pt'")
    with pytest.raises(TypeError, match="checkpoint must be a path or a mapping, got int"):
        extract_state_dict(3)  # type: ignore[arg-type]


def test_key_check_lists_every_missing_unexpected_and_misshaped_key() -> None:
    expected = torch.nn.Conv2d(1, 2, 3).state_dict()
    given = {"weight": torch.zeros(2, 1, 5, 5), "bias": torch.zeros(2), "extra": torch.zeros(1)}
    check_state_dict_keys(dict(expected), expected, source="s", target="t")  # fits: no error
    with pytest.raises(ValueError) as err:
        check_state_dict_keys(given, expected, source="checkpoint 'a.pt'", target="the network")
    assert str(err.value) == (
        "checkpoint 'a.pt' does not fit the network: missing keys []; unexpected keys ['extra']; "
        "shape mismatches ['weight: checkpoint (2, 1, 5, 5) vs network (2, 1, 3, 3)']."
    )
    partial = {"weight": torch.zeros(2, 1, 3, 3)}
    check_state_dict_keys(partial, expected, source="s", target="t", strict=False)  # missing bias allowed
    with pytest.raises(ValueError, match=r"missing keys \['bias'\]"):
        check_state_dict_keys(partial, expected, source="s", target="t")
    with pytest.raises(ValueError, match=r"weight: given \(2, 1, 5, 5\) vs encoder \(2, 1, 3, 3\)"):
        check_state_dict_keys(given, expected, source="s", target="t", strict=False, labels=("given", "encoder"))
