"""The package imports with its core dependencies alone; an optional extra is needed only where it is used.

Found on a GPU machine with PyTorch and MONAI but without the ``dicom`` extra: ``medmamba.transforms``
failed to import because ``medmamba.io.dicom_seg`` imported highdicom at module level, so both bundles'
training and inference configs failed before they started.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

#: the import names of every optional extra of pyproject.toml (visualisation aside: ``medmamba.visualize``
#: is the matplotlib extra's own module)
OPTIONAL = ("highdicom", "pylibjpeg", "nilearn", "onnx", "onnxruntime", "onnxscript", "tensorboard", "sklearn",
            "yaml", "fire", "einops", "mamba_ssm", "SimpleITK")
CORE_MODULES = ("medmamba", "medmamba.networks", "medmamba.transforms", "medmamba.data", "medmamba.io",
                "medmamba.training", "medmamba.apps", "medmamba.bundle", "medmamba.metrics")


def _run(body: str) -> subprocess.CompletedProcess:
    blocker = "import sys\n" + "".join(f"sys.modules[{name!r}] = None\n" for name in OPTIONAL)
    return subprocess.run([sys.executable, "-c", blocker + textwrap.dedent(body)], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)


def test_core_modules_import_without_any_optional_extra() -> None:
    out = _run(f"""
        import importlib
        for name in {CORE_MODULES!r}:
            importlib.import_module(name)
        print("imported", len({CORE_MODULES!r}))
    """)
    assert out.returncode == 0, out.stderr[-2000:]
    assert f"imported {len(CORE_MODULES)}" in out.stdout


def test_dicom_seg_without_highdicom_names_the_extra(tmp_path) -> None:
    pytest.importorskip("pydicom")
    out = _run(f"""
        import numpy as np
        from medmamba.io import write_dicom_seg
        try:
            write_dicom_seg({str(tmp_path / 'seg.dcm')!r}, np.zeros((4, 4, 2), dtype=np.uint8), {str(tmp_path)!r},
                            labels={{1: "tissue"}})
        except ImportError as err:
            print("ImportError:", err)
    """)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "ImportError: write_dicom_seg needs highdicom" in out.stdout
    assert "medmamba[dicom]" in out.stdout
