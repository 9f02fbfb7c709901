"""Robust batch processing: one failing case is recorded with its reason, the others go on.

:func:`run_batch` calls a ``process`` function once per case. A case that raises (corrupt file,
empty folder, wrong modality, NaN voxels, ...) is recorded as ``failed`` with a one-line reason and
the batch continues. Results go to ``<out_dir>/<report_name>.csv`` and ``.json``, rewritten
atomically after every case, so a crash leaves a valid report of the cases done so far.

Inputs are only read. The output folder may not lie inside an input folder. Identifying values
found in a case's DICOM headers (names, IDs, dates of birth, institutions, ...) are redacted from
its failure reason, its log lines and its report row, and so is the inputs' common folder (written
``<inputs>``, so the folders above the cases, often named after a patient, appear nowhere; a case's
file keeps its path relative to that folder);
warnings raised while a case is processed (e.g. a loader skipping a file) are logged the same way.
Case IDs come from the datalist ``id`` or the input's path relative to the inputs' common folder,
and are replaced by ``case-NNNN`` if they contain an identifying value.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import time
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medmamba.io.dicom_scan import read_dicom_file, scan_dicom_folder
from medmamba.data.discovery import scan_stem
from medmamba.data.loading import is_nifti_path
from medmamba.io.privacy import REDACTED, Redactor, identifying_values
from medmamba.io.results import write_results_csv, write_results_json
from medmamba.io.temporaries import remove_stale_temporaries

__all__ = ["BatchCase", "BatchReport", "CaseOutcome", "case_redactor", "run_batch"]

_SAFE_ID = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass(frozen=True)
class BatchCase:
    """One case handed to the ``process`` function.

    Attributes:
        index: Position in the batch.
        case_id: File-name-safe identifier.
        input: The input path (DICOM folder/file or NIfTI file).
        out_dir: Folder for this case's outputs (created before ``process`` is called).
        item: The original datalist item (a dict with at least the input key).
        redact: Redactor holding the identifying values of this case's DICOM headers.
    """

    index: int
    case_id: str
    input: Path
    out_dir: Path
    item: Mapping[str, Any]
    redact: Redactor = field(default_factory=Redactor)


@dataclass
class CaseOutcome:
    """What happened to one case."""

    case_id: str
    status: str
    reason: str = ""
    seconds: float = 0.0
    result: dict[str, Any] = field(default_factory=dict)

    def row(self) -> dict[str, Any]:
        """The report row: ``case_id``, ``status``, ``reason``, ``seconds`` and the result fields."""
        return {"case_id": self.case_id, "status": self.status, "reason": self.reason,
                "seconds": round(self.seconds, 3), **self.result}


@dataclass
class BatchReport:
    """Outcomes of a batch and where the report was written."""

    outcomes: list[CaseOutcome]
    csv_path: Path
    json_path: Path

    @property
    def n_ok(self) -> int:
        """Number of cases that succeeded."""
        return sum(o.status == "ok" for o in self.outcomes)

    @property
    def n_failed(self) -> int:
        """Number of cases that failed."""
        return sum(o.status == "failed" for o in self.outcomes)

    @property
    def failed(self) -> dict[str, str]:
        """Failed case IDs and their reasons."""
        return {o.case_id: o.reason for o in self.outcomes if o.status == "failed"}

    def summary(self, seconds: float) -> dict[str, Any]:
        """``{"n_ok", "n_failed", "report", "failed", "seconds"}``: what a bundle's ``run`` returns."""
        return {
            "n_ok": self.n_ok,
            "n_failed": self.n_failed,
            "report": str(self.csv_path),
            "failed": self.failed,
            "seconds": round(float(seconds), 2),
        }


def case_redactor(path: str | os.PathLike[str], paths: Mapping[str, str] | None = None) -> Redactor:
    """A :class:`Redactor` for the identifying values in the DICOM headers under ``path``.

    NIfTI inputs and unreadable paths give a redactor without values (nothing is raised).

    Args:
        path: The case input.
        paths: Path text -> replacement, also hidden (see :class:`Redactor`).

    Returns:
        The redactor.
    """
    p = Path(path)
    try:
        if p.is_dir():
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                scan = scan_dicom_folder(p)
            headers = [inst.header for s in scan.series for inst in s.instances]
            headers += _skipped_headers(scan.skipped)
        elif p.is_file() and not is_nifti_path(p):
            headers = [read_dicom_file(p, defer=True)]
        else:
            return Redactor(paths=paths)
    except Exception:  # an unreadable case fails later in process(); redaction is best effort here
        return Redactor(paths=paths)
    return Redactor(identifying_values(headers), paths)


def _skipped_headers(skipped: Iterable[tuple[Path, str]]) -> list:
    out = []
    for path, reason in skipped:
        if reason.startswith("non-image") or reason.startswith("no pixel"):
            try:
                out.append(read_dicom_file(path, defer=True))
            except Exception:
                continue
    return out


def _case_input(item: Any, input_key: str) -> tuple[Path, Mapping[str, Any]]:
    if isinstance(item, (str, os.PathLike)):
        return Path(item), {input_key: os.fspath(item)}
    if isinstance(item, Mapping) and input_key in item:
        return Path(item[input_key]), item
    raise TypeError(f"each case must be a path or a mapping with key {input_key!r}, got {item!r:.80}")


def _base_id(item: Mapping[str, Any], path: Path, id_key: str, index: int, common: Path | None) -> str:
    raw = item.get(id_key)
    if raw is None:
        rel = path.parts
        if common is not None:
            try:
                rel = path.absolute().relative_to(common).parts
            except ValueError:
                rel = path.parts
        raw = "_".join([*rel[:-1], scan_stem(rel[-1])]) if rel else scan_stem(path.name)
    safe = _SAFE_ID.sub("_", str(raw)).strip("._")
    return safe or f"case-{index:04d}"


def _root_cause(exc: BaseException) -> BaseException:
    """The innermost cause of an exception (MONAI's Compose wraps errors in RuntimeError)."""
    seen = {id(exc)}
    while True:
        nxt = exc.__cause__ or (None if exc.__suppress_context__ else exc.__context__)
        if nxt is None or id(nxt) in seen:
            return exc
        seen.add(id(nxt))
        exc = nxt


def _common_parent(paths: list[Path]) -> Path | None:
    if len(paths) < 2:
        return None
    try:
        return Path(os.path.commonpath([str(p.absolute()) for p in paths]))
    except ValueError:
        return None


def _inside(child: Path, parent: Path) -> bool:
    try:
        child.resolve().relative_to(parent.resolve())
        return True
    except ValueError:
        return False


def run_batch(
    cases: Iterable[str | os.PathLike[str] | Mapping[str, Any]],
    process: Callable[[BatchCase], Mapping[str, Any] | None],
    out_dir: str | os.PathLike[str],
    *,
    input_key: str = "image",
    id_key: str = "id",
    report_name: str = "results",
    logger: logging.Logger | None = None,
    case_ids: Sequence[str] | None = None,
    positions: Sequence[int] | None = None,
) -> BatchReport:
    """Run ``process`` on every case, recording failures and going on.

    Args:
        cases: Input paths or datalist items (mappings with ``input_key`` and optionally ``id_key``).
        process: Called with a :class:`BatchCase`; returns result fields for the report (simple
            values, lists or dicts) or ``None``. Any ``Exception`` it raises marks the case failed.
        out_dir: Output folder (per-case sub-folders and the report); not inside an input folder.
        input_key: Key of the input path in mapping cases.
        id_key: Key of the case ID in mapping cases.
        report_name: Base name of the CSV/JSON report.
        logger: Logger for progress lines (default: this module's).
        case_ids: Case IDs to use as given, one per case, distinct plain names (default: derived as
            described in the module doc); for a shard of a larger batch whose IDs were assigned over
            the whole batch (:func:`medmamba.data.distributed_batch.run_batch_distributed`).
        positions: ``BatchCase.index`` of each case (default: its position in ``cases``).

    Returns:
        The report.

    Raises:
        TypeError: If a case is neither a path nor a mapping with ``input_key``.
        ValueError: If ``out_dir`` lies inside an input folder, ``report_name`` is not a plain name,
            or ``case_ids`` / ``positions`` do not give one distinct plain ID / index per case.
    """
    log = logger or logging.getLogger(__name__)
    out = Path(out_dir)
    if not report_name or _SAFE_ID.sub("_", report_name) != report_name:
        raise ValueError(f"report_name={report_name!r} must be a plain file name (letters, digits, . _ -)")
    items = [_case_input(c, input_key) for c in cases]
    _check_assigned(case_ids, positions, len(items))
    for path, _ in items:
        if path.is_dir() and _inside(out, path):
            raise ValueError(f"out_dir={str(out)!r} lies inside input folder {str(path)!r}; inputs must stay untouched")
    out.mkdir(parents=True, exist_ok=True)
    removed = remove_stale_temporaries(out, recursive=True)  # left by a killed earlier run
    if removed:
        log.info("removed %d temporaries left by a killed earlier run in the output folder", len(removed))
    csv_path, json_path = out / f"{report_name}.csv", out / f"{report_name}.json"
    outcomes: list[CaseOutcome] = []
    used: set[str] = set()
    common = _common_parent([p for p, _ in items])
    # the folder the inputs share (one input: the folder holding it), written as <inputs> in messages
    root_forms = _input_path_forms(common if common is not None else (items[0][0].absolute().parent if items else None))
    for index, (path, item) in enumerate(items):
        start = time.perf_counter()
        redact = case_redactor(path, root_forms)
        case_id = _base_id(item, path, id_key, index, common) if case_ids is None else case_ids[index]
        if case_ids is None and redact(case_id) != case_id:
            case_id = f"case-{index:04d}"
        while case_id in used:
            case_id = f"{case_id}-{index:04d}"
        used.add(case_id)
        position = index if positions is None else int(positions[index])
        case = BatchCase(index=position, case_id=case_id, input=path, out_dir=out / case_id, item=item, redact=redact)
        existed = case.out_dir.exists()
        started_ns = time.time_ns()
        try:
            case.out_dir.mkdir(parents=True, exist_ok=True)
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                try:
                    result = process(case) or {}
                finally:
                    # a loader's warning names the input's path: logged with it hidden, not printed as is
                    seen: dict[str, int] = {}
                    for w in caught:
                        line = f"{w.category.__name__}: {redact(str(w.message))}"
                        seen[line] = seen.get(line, 0) + 1
                    for line, count in seen.items():
                        log.warning("case %s: %s%s", case_id, line, f" ({count} times)" if count > 1 else "")
            if not isinstance(result, Mapping):
                raise TypeError(f"process must return a mapping or None, got {type(result).__name__}")
            outcome = CaseOutcome(case_id, "ok", "", time.perf_counter() - start, dict(result))
            log.info("case %s: ok (%.1f s)", case_id, outcome.seconds)
        except Exception as exc:  # one bad case must not stop the batch
            root = _root_cause(exc)
            message = " ".join(str(root).split()) or "no message"
            reason = redact(f"{type(root).__name__}: {message}")
            outcome = CaseOutcome(case_id, "failed", reason, time.perf_counter() - start)
            _remove_partial_outputs(case.out_dir, existed, started_ns)
            log.warning("case %s: failed: %s", case_id, reason)
            log.debug("case %s: failure type %s", case_id, type(exc).__name__)
        outcome.result = _redacted(outcome.result, redact)
        outcomes.append(outcome)
        rows = [o.row() for o in outcomes]
        write_results_csv(csv_path, rows)
        write_results_json(json_path, rows, extra={"n_ok": sum(o.status == "ok" for o in outcomes),
                                                   "n_failed": sum(o.status == "failed" for o in outcomes)})
    if not outcomes:
        write_results_csv(csv_path, [], columns=["case_id", "status", "reason", "seconds"])
        write_results_json(json_path, [], extra={"n_ok": 0, "n_failed": 0})
    report = BatchReport(outcomes, csv_path, json_path)
    log.info("batch: %d ok, %d failed; report %s", report.n_ok, report.n_failed, csv_path)
    return report


def _input_path_forms(root: Path | None) -> dict[str, str]:
    """The spellings of the inputs' common folder that may appear in messages -> ``<inputs>``: the
    folders above the cases, often named after a patient, never reach a log line or a report, and a
    case's file stays recognisable by its path relative to that folder (``<inputs>/head/scan.nii.gz``)."""
    if root is None:
        return {}
    forms = {str(root), os.fspath(root.absolute())}
    try:
        forms.add(os.fspath(root.resolve()))
    except OSError:
        pass
    return dict.fromkeys(forms, "<inputs>")  # the Redactor drops "", "." and the file-system root


def _check_assigned(case_ids: Sequence[str] | None, positions: Sequence[int] | None, n: int) -> None:
    if case_ids is not None:
        ids = list(case_ids)
        if len(ids) != n or len(set(ids)) != n:
            raise ValueError(f"case_ids must hold {n} distinct IDs (one per case), got {len(ids)} with {len(set(ids))} distinct")
        bad = [i for i in ids if not isinstance(i, str) or not i.strip(".") or _SAFE_ID.sub("_", i) != i.strip(".")]
        if bad:
            raise ValueError(f"case_ids must be plain file names (letters, digits, . _ -, no leading or trailing dot), got {bad[0]!r}")
    if positions is not None and len(positions) != n:
        raise ValueError(f"positions must hold {n} indices (one per case), got {len(positions)}")


def _remove_partial_outputs(folder: Path, existed: bool, since_ns: int) -> None:
    """Remove what a failed case wrote: its whole folder if this run created it, else the entries
    written since ``since_ns`` (a failed re-run leaves the earlier run's files, never half of its own)."""
    if not folder.is_dir():
        return
    if not existed:
        shutil.rmtree(folder, ignore_errors=True)
        return
    for entry in folder.iterdir():
        try:
            if entry.lstat().st_mtime_ns < since_ns:
                continue
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink()
        except OSError:
            pass


def _redacted(value: Any, redact: Redactor) -> Any:
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        # a number can be an identifier too (a patient ID 12345 read as an int): hidden whole
        return REDACTED if redact(str(value)) != str(value) else value
    if isinstance(value, Mapping):
        return {k: _redacted(v, redact) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_redacted(v, redact) for v in value]
    return value
