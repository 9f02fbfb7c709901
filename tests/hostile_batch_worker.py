"""Child process of ``tests/test_data_hostile_folders.py``: a batch over a hostile folder under a memory cap.

Usage: ``python hostile_batch_worker.py INPUT_FOLDER OUTPUT_FOLDER MEMORY_LIMIT_BYTES``. Finds the cases,
loads each (``load_scan``) inside :func:`medmamba.data.run_batch`, and prints the report's rows as JSON.
"""

from __future__ import annotations

import json
import resource
import sys
import warnings


def main() -> None:
    folder, out, limit = sys.argv[1], sys.argv[2], int(sys.argv[3])
    warnings.simplefilter("ignore")
    from medmamba.data import find_scans, load_scan, run_batch

    resource.setrlimit(resource.RLIMIT_DATA, (limit, limit))
    cases = find_scans(folder)
    report = run_batch(cases, lambda case: {"shape": list(load_scan(case.input).shape)}, out)
    print(json.dumps({"n_ok": report.n_ok, "failed": report.failed, "ids": [c["id"] for c in cases]}))


if __name__ == "__main__":
    main()
