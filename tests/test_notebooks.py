"""The notebooks in notebooks/: committed without outputs, and run top to bottom headless (quick mode).

Each notebook is executed with nbclient in a kernel running this interpreter (the project's venv),
with ``MEDMAMBA_NOTEBOOK_QUICK=1``, on the default data set (``data/default``; a tiny one is built in a
temporary folder when it is missing), its figures written to a temporary folder. A cell error fails
the test; every expected PNG must exist and show something; no patient-identifying value of the
data set's DICOM headers may appear in any output.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
QUICK_LINE = 'QUICK = os.environ.get("MEDMAMBA_NOTEBOOK_QUICK", "0") == "1"'

#: The figures each notebook must save (``<prefix>_<name>.png``).
EXPECTED_PNGS: dict[str, list[str]] = {
    "01_explore_scan.ipynb": ["display_ranges", "orthogonal_views", "montage", "label_overlay"],
    "02_bundle_predictions.ipynb": [
        "segmentation_overview",
        "segmentation_errors_per_class",
        "slice_probability_strip",
        "training_curves_segmentation",
        "training_curves_classification",
    ],
    "03_inside_the_model.ipynb": ["erf_maps", "branch_contributions", "branch_ablation", "cpu_speed"],
}


def _notebooks() -> list[Path]:
    return sorted(NOTEBOOKS.glob("*.ipynb"))


def test_every_notebook_is_known_and_present() -> None:
    assert sorted(p.name for p in _notebooks()) == sorted(EXPECTED_PNGS)


@pytest.mark.parametrize("path", _notebooks(), ids=lambda p: p.name)
def test_notebook_is_committed_without_outputs(path: Path) -> None:
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    dirty = [
        i
        for i, cell in enumerate(nb.cells)
        if cell.cell_type == "code" and (cell.get("outputs") or cell.get("execution_count") is not None)
    ]
    assert not dirty, (
        f"{path.name}: cells {dirty} hold outputs or execution counts; strip them before committing "
        f"(python notebooks/nbhelpers.py strip {path.relative_to(ROOT)})"
    )
    assert not any("execution" in cell.get("metadata", {}) for cell in nb.cells), f"{path.name}: execution timing kept"
    assert "widgets" not in nb.metadata
    first = next(c for c in nb.cells if c.cell_type == "code")
    assert QUICK_LINE in first.source, f"{path.name}: the first code cell must read {QUICK_LINE!r}"
    assert "%matplotlib inline" in first.source
    assert any(c.cell_type == "markdown" and c.source.lstrip().startswith("# ") for c in nb.cells), "no title"


# --------------------------------------------------------------------------------------------------
# execution


def _kernel_name(tmp: Path) -> str:
    """``python3`` if that kernel runs this interpreter, else a private kernelspec that does."""
    from jupyter_client.kernelspec import NoSuchKernel
    from jupyter_client.manager import KernelManager

    try:
        cmd = KernelManager(kernel_name="python3").format_kernel_cmd()
        exe = shutil.which(cmd[0]) or cmd[0]
        if os.path.abspath(exe) == os.path.abspath(sys.executable):
            return "python3"
    except NoSuchKernel:
        pass
    spec = tmp / "kernels" / "medmamba-test"
    spec.mkdir(parents=True, exist_ok=True)
    argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    (spec / "kernel.json").write_text(json.dumps({"argv": argv, "display_name": "medmamba venv", "language": "python"}))
    os.environ["JUPYTER_PATH"] = os.pathsep.join(filter(None, [str(tmp), os.environ.get("JUPYTER_PATH")]))
    return "medmamba-test"


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    default = ROOT / "data" / "default"
    if (default / "datalist_segmentation.json").is_file():
        return default
    from medmamba.data.default_dataset import DefaultDatasetConfig, make_default_dataset

    out = tmp_path_factory.mktemp("notebook_data") / "default"
    make_default_dataset(out, DefaultDatasetConfig(seed=3, n_train=3, n_val=1, n_test=2, n_extra_train=0, downsample=3), progress=False)
    return out


@pytest.fixture(scope="module")
def secrets(data_dir: Path) -> set[str]:
    """The identifying values in the DICOM headers of the data set: every patient-group (0010,xxxx)
    and person-name value, institution, accession number (and the components of names), e.g. the
    planted fake ``MMBFAKE^...`` patient names. Read with pydicom alone (no medmamba import here)."""
    import pydicom

    keywords = {"InstitutionName", "InstitutionAddress", "AccessionNumber", "StationName", "DeviceSerialNumber"}
    # the identifying attributes are the same in every file of a series: the first file of each is enough
    files = [min(d.glob("*.dcm")) for d in sorted(data_dir.glob("subjects/*/dicom")) if any(d.glob("*.dcm"))]
    values: set[str] = set()
    for f in files:
        for elem in pydicom.dcmread(f, stop_before_pixels=True).iterall():
            if elem.tag.group == 0x0010 or elem.VR == "PN" or elem.keyword in keywords:
                text = str(elem.value).strip()
                values.add(text)
                values.update(re.split(r"[\\^=]", text))
    values = {v for v in values if len(v) >= 4}
    assert any("MMBFAKE" in v for v in values)
    return values


@pytest.fixture(scope="module")
def kernel_env(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> Iterator[dict[str, str]]:
    tmp = tmp_path_factory.mktemp("notebook_kernel")
    saved = dict(os.environ)
    kernel = _kernel_name(tmp)
    os.environ.update(
        {
            "MEDMAMBA_NOTEBOOK_QUICK": "1",
            "MEDMAMBA_DATA_DIR": str(data_dir),
            "OMP_NUM_THREADS": "1",  # tiny inputs; keeps the kernels from fighting over a busy CPU
        }
    )
    yield {"kernel": kernel, "tmp": str(tmp)}
    os.environ.clear()
    os.environ.update(saved)


def _text_outputs(nb: object) -> str:
    parts = []
    for cell in nb.cells:  # type: ignore[attr-defined]
        for out in cell.get("outputs", []):
            if out.get("output_type") == "stream":
                parts.append(out.get("text", ""))
            for key, value in out.get("data", {}).items():
                if key.startswith("text/"):
                    parts.append(value if isinstance(value, str) else "".join(value))
            parts.extend(out.get("traceback", []))
    return "\n".join(parts)


def _assert_png_shows_something(path: Path) -> None:
    from matplotlib.image import imread

    assert path.is_file(), f"{path.name} was not written"
    assert path.stat().st_size > 8_000, f"{path.name} is suspiciously small ({path.stat().st_size} bytes)"
    img = imread(path)[..., :3]
    assert img.shape[0] >= 150 and img.shape[1] >= 300, f"{path.name} is only {img.shape[:2]} pixels"
    not_white = (img < 0.95).any(axis=-1).mean()
    assert not_white > 0.03, f"{path.name} is almost blank ({100 * not_white:.1f}% non-white pixels)"
    assert float(img.std()) > 0.05, f"{path.name} has almost no contrast"


@pytest.mark.parametrize("name", sorted(EXPECTED_PNGS))
def test_notebook_runs_headless_in_quick_mode(
    name: str, kernel_env: dict[str, str], secrets: set[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = NOTEBOOKS / name
    out_dir = tmp_path / "figures"
    monkeypatch.setenv("MEDMAMBA_NOTEBOOK_OUT", str(out_dir))
    nb = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(
        nb,
        kernel_name=kernel_env["kernel"],
        timeout=300,
        allow_errors=False,
        resources={"metadata": {"path": str(NOTEBOOKS)}},
    )
    client.execute()  # raises CellExecutionError on the first failing cell
    text = _text_outputs(nb)
    leaked = sorted(s for s in secrets if s in text)
    assert not leaked, f"{name}: identifying DICOM values in the outputs: {len(leaked)}"
    shown = sum(1 for c in nb.cells for o in c.get("outputs", []) if "image/png" in o.get("data", {}))
    prefix = name.split("_", 1)[0]
    expected = [out_dir / f"{prefix}_{png}.png" for png in EXPECTED_PNGS[name]]
    assert shown >= len(expected), f"{name}: {shown} inline images for {len(expected)} saved figures"
    for png in expected:
        _assert_png_shows_something(png)
    written = sorted(p.name for p in out_dir.glob("*.png"))
    assert written == sorted(p.name for p in expected), f"{name}: unexpected figures {written}"


def test_strip_outputs_clears_outputs_counts_and_timing(tmp_path: Path) -> None:
    sys.path.insert(0, str(NOTEBOOKS))
    try:
        from nbhelpers import strip_outputs
    finally:
        sys.path.remove(str(NOTEBOOKS))
    nb = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell("print(1)")
    cell.outputs = [nbformat.v4.new_output("stream", name="stdout", text="1\n")]
    cell.execution_count = 3
    cell.metadata["execution"] = {"shell.execute_reply": "2026-01-01T00:00:00Z"}
    nb.cells = [nbformat.v4.new_markdown_cell("# t"), cell]
    path = tmp_path / "x.ipynb"
    nbformat.write(nb, path)
    assert strip_outputs([str(path)]) == [str(path)]
    assert strip_outputs([str(path)]) == []  # already clean: untouched
    (code,) = [c for c in nbformat.read(path, as_version=4).cells if c.cell_type == "code"]
    assert code.outputs == [] and code.execution_count is None and "execution" not in code.metadata


@pytest.mark.parametrize(
    ("bundle", "label_key"), [("mobilemamba_classification", "lesion"), ("mobilemamba_segmentation", "label")]
)
def test_notebook_helpers_load_a_trained_bundle_and_keep_its_label_volume(
    bundle: str, label_key: str, data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What notebook 02 does after the main job: load the deployed weights into the bundle's network
    and preprocess a test case with its label map still a volume on the image's grid."""
    import torch
    from monai.bundle import ConfigParser

    monkeypatch.syspath_prepend(str(NOTEBOOKS))
    nbhelpers = pytest.importorskip("nbhelpers")
    root = tmp_path / "bundles" / bundle
    shutil.copytree(ROOT / "bundles" / bundle / "configs", root / "configs")
    parser = ConfigParser()  # the network as training saves it
    parser.read_config(str(root / "configs" / "train.json"))
    parser["bundle_root"] = str(root)
    torch.manual_seed(0)
    (root / "models").mkdir()
    if bundle == "mobilemamba_classification":  # inference.json's checkpoint: the student's EMA weights
        deployed = "model_ema.pt"
        torch.save(parser.get_parsed_content("network_def", instantiate=True).state_dict(), root / "models" / deployed)
    else:
        deployed = "model.pt"
        torch.save(parser.get_parsed_content("network_def", instantiate=True).state_dict(), root / "models" / deployed)
    monkeypatch.setenv("MEDMAMBA_DATA_DIR", str(data_dir))
    monkeypatch.setenv("MEDMAMBA_BUNDLES_DIR", str(tmp_path / "bundles"))
    monkeypatch.setenv("MEDMAMBA_NOTEBOOK_OUT", str(tmp_path / "out"))
    nb = nbhelpers.Notebook("02")
    loaded = nbhelpers.load_bundle(nb, bundle)
    assert loaded is not None and not loaded.network.training and loaded.weights.name == deployed
    case = nbhelpers.pick_test_case(nb)
    data = nbhelpers.bundle_preprocessing(loaded)({"image": case["image"], label_key: case[label_key]})
    assert data["image"].ndim == 4 and data[label_key].shape[1:] == data["image"].shape[1:]
    assert float(data[label_key].max()) >= 1  # the label map survived preprocessing
