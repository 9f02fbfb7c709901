"""Per-case classification results as CSV and JSON, written atomically, without patient data.

Rows are mappings of simple values. Keys that name identifying DICOM attributes are dropped
(:func:`medmamba.io.privacy.is_identifying_key`), and an optional :class:`~medmamba.io.privacy.Redactor`
blanks known identifying values inside strings (e.g. failure reasons).
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medmamba.io.privacy import Redactor, is_identifying_key
from medmamba.io.atomic import atomic_write_text

__all__ = ["clean_rows", "write_results_csv", "write_results_json"]


def _simple(value: Any, redact: Redactor | None) -> Any:
    if isinstance(value, (np.generic,)):
        value = value.item()
    if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):
        value = value.tolist()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, (list, tuple)):
        return [_simple(v, redact) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _simple(v, redact) for k, v in value.items() if not is_identifying_key(k)}
    if isinstance(value, (os.PathLike,)):
        value = os.fspath(value)
    if isinstance(value, str):
        return redact(value) if redact is not None else value
    if value is None or isinstance(value, (bool, int, float)):
        return value
    text = str(value)
    return redact(text) if redact is not None else text


def clean_rows(rows: Sequence[Mapping[str, Any]], redact: Redactor | None = None) -> list[dict[str, Any]]:
    """JSON-able copies of ``rows`` without identifying keys, strings redacted.

    Args:
        rows: One mapping per case.
        redact: Optional redactor for string values.

    Returns:
        The cleaned rows.

    Raises:
        TypeError: If a row is not a mapping.
    """
    out = []
    for i, row in enumerate(rows):
        if not isinstance(row, Mapping):
            raise TypeError(f"rows[{i}] must be a mapping, got {type(row).__name__}")
        out.append({str(k): _simple(v, redact) for k, v in row.items() if not is_identifying_key(k)})
    return out


def _flatten(row: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for k, v in row.items():
        name = f"{prefix}{k}"
        if isinstance(v, Mapping):
            flat.update(_flatten(v, f"{name}."))
        else:
            flat[name] = v
    return flat


def write_results_csv(
    path: str | os.PathLike[str],
    rows: Sequence[Mapping[str, Any]],
    columns: Sequence[str] | None = None,
    redact: Redactor | None = None,
) -> Path:
    """Write rows as CSV, atomically: nested dicts become ``key.sub`` columns, lists ``;``-joined.

    Args:
        path: Destination.
        rows: One mapping per case.
        columns: Column order (default: keys in first-seen order).
        redact: Optional redactor for string values.

    Returns:
        The destination path.
    """
    clean = [_flatten(r) for r in clean_rows(rows, redact)]
    if columns is None:
        cols: list[str] = []
        for row in clean:
            cols.extend(k for k in row if k not in cols)
    else:
        cols = [c for c in columns if not is_identifying_key(c)]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=cols, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in clean:
        writer.writerow(
            {k: ";".join("" if x is None else str(x) for x in v) if isinstance(v, list) else ("" if v is None else v)
             for k, v in row.items()}
        )
    return atomic_write_text(path, buf.getvalue())


def write_results_json(
    path: str | os.PathLike[str],
    rows: Sequence[Mapping[str, Any]],
    extra: Mapping[str, Any] | None = None,
    redact: Redactor | None = None,
) -> Path:
    """Write ``{"cases": rows, **extra}`` as JSON, atomically.

    Args:
        path: Destination.
        rows: One mapping per case.
        extra: Additional top-level entries (e.g. a summary).
        redact: Optional redactor for string values.

    Returns:
        The destination path.
    """
    doc = {"cases": clean_rows(rows, redact)}
    if extra:
        doc.update({str(k): _simple(v, redact) for k, v in extra.items() if not is_identifying_key(k)})
    return atomic_write_text(path, json.dumps(doc, indent=1, sort_keys=False) + "\n")
