"""``benchmarks/test_split_intervals.py``: intervals from the files the evaluate configs write."""

from __future__ import annotations

import csv
import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _script():  # noqa: ANN202
    spec = importlib.util.spec_from_file_location("test_split_intervals_script", ROOT / "benchmarks" / "test_split_intervals.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _write(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def test_auc_ranks_by_log_odds_and_rates_use_the_bundles_decisions(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    # every rounded probability is 1.0 (a tie: AUC 0.5 from them), the log-odds rank all lesions first
    rows = [{"id": f"p{i}", "label": 1, "lesion_probability": 1.0, "lesion_log_odds": 20.0 + i, "predicted": int(i > 0)} for i in range(4)]
    rows += [{"id": f"n{i}", "label": 0, "lesion_probability": 1.0, "lesion_log_odds": 10.0 + i, "predicted": 0} for i in range(4)]
    _write(tmp_path / "bundles" / "mobilemamba_classification" / "eval" / "predictions.csv", rows)
    assert _script().main(["--root", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "| classification | volume AUC | 1.000 [1.000, 1.000] | 8 |" in out
    assert "| classification | lesion-free called lesion (the bundle's threshold) | 0.000 [0.000, 0.000] | 4 |" in out
    assert "| classification | lesion cases missed (the bundle's threshold) | 0.250 [" in out


def test_without_log_odds_or_decisions_it_falls_back_to_probabilities(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    rows = [{"id": "p", "label": 1, "lesion_probability": 0.9}, {"id": "n", "label": 0, "lesion_probability": 0.6}]
    _write(tmp_path / "bundles" / "mobilemamba_classification" / "eval" / "predictions.csv", rows)
    assert _script().main(["--root", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "| classification | volume AUC | 1.000 [1.000, 1.000] | 2 |" in out
    assert "| classification | lesion-free called lesion (p >= 0.5) | 1.000 [1.000, 1.000] | 1 |" in out
