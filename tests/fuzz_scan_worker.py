"""Child process of ``tests/test_fuzz_inputs.py``: loads every mutant under a memory cap and a per-file alarm.

Usage: ``python fuzz_scan_worker.py MUTANT_FOLDER MEMORY_LIMIT_BYTES SECONDS_PER_FILE``. Prints one JSON line
per mutant: ``{"name", "outcome": "ok" | "ScanLoadError" | "<other exception type>", "message", "seconds"}``.
"""

from __future__ import annotations

import json
import resource
import signal
import sys
import time
from pathlib import Path


class FileTimeout(Exception):
    """A single load took longer than its alarm."""


def _alarm(signum: int, frame: object) -> None:
    raise FileTimeout("load did not return in time")


def main() -> None:
    folder, limit, seconds = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    import warnings

    warnings.simplefilter("ignore")
    from medmamba.data import ScanLoadError, load_scan

    # the cap applies to what loading allocates from here on (heap and anonymous mappings)
    resource.setrlimit(resource.RLIMIT_DATA, (limit, limit))
    signal.signal(signal.SIGALRM, _alarm)
    for path in sorted(folder.iterdir()):
        start = time.perf_counter()
        signal.alarm(seconds)
        try:
            img = load_scan(path)
            outcome, message = "ok", f"shape {tuple(img.shape)}"
        except ScanLoadError as exc:
            outcome, message = "ScanLoadError", str(exc)[:200]
        except BaseException as exc:  # noqa: BLE001 - reported to the parent, which fails the test
            outcome, message = type(exc).__name__, str(exc)[:300]
        finally:
            signal.alarm(0)
        print(json.dumps({"name": path.name, "outcome": outcome, "message": message,
                          "seconds": round(time.perf_counter() - start, 3)}), flush=True)


if __name__ == "__main__":
    main()
