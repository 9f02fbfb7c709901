"""The checks the MONAI model zoo's ``ci/verify_bundle.py`` runs on a bundle, offline, for both bundles.

The model zoo checks (``verify`` in ``ci/verify_bundle.py``): the necessary files
(``configs/metadata.json``, ``LICENSE``) and the preferred ones (``configs/inference.json``,
``models/model.pt``, here listed in ``large_files.yml`` because the weights are not committed),
``version`` and ``changelog``, ``verify_metadata`` against the schema the metadata names (the CI
copies it to ``eval/schema.json``), ``verify_net_in_out`` of ``network_def`` in ``inference.json``,
and a TorchScript export of ``models/model.pt`` with ``ckpt_export``. The same checks run here without
a network: the schema ships in ``bundles/schema``, and the checkpoint is the bundle's own training
network (``train.json``'s ``network_def``) with random weights, saved as the training saves it.
The model zoo's documentation asks for ``docs/README.md`` and ``docs/data_license.txt`` too.
"""

from __future__ import annotations

import inspect
import json
import re
import shutil
from pathlib import Path

import pytest
import torch

pytestmark = [
    pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning", "ignore::FutureWarning"),
    pytest.mark.usefixtures("one_torch_thread"),
]

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = ROOT / "bundles" / "schema" / "meta_schema_20240725.json"
BUNDLES = [ROOT / "bundles" / "mobilemamba_classification", ROOT / "bundles" / "mobilemamba_segmentation"]
IDS = ["classification", "segmentation"]

#: The metadata keys the model zoo's bundles carry (the schema requires only some of them).
METADATA_KEYS = {
    "schema", "version", "changelog", "monai_version", "pytorch_version", "numpy_version",
    "required_packages_version", "supported_apps", "name", "task",
    "description", "authors", "copyright", "data_source", "data_type", "image_classes", "label_classes",
    "pred_classes", "eval_metrics", "intended_use", "references", "network_data_format",
}
#: The entries of a tensor in ``network_data_format`` the schema requires.
TENSOR_KEYS = {"type", "format", "num_channels", "spatial_shape", "dtype", "value_range"}
SEMVER = re.compile(r"^\d+\.\d+\.\d+$")


def _metadata(bundle: Path) -> dict:
    return json.loads((bundle / "configs" / "metadata.json").read_text(encoding="utf-8"))


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make any download MONAI would start fail."""
    import monai.apps.utils

    def refuse(*args, **kwargs):
        raise AssertionError(f"a download was started: {args} {kwargs}")

    monkeypatch.setattr(monai.apps.utils, "_download_with_progress", refuse)


# --------------------------------------------------------------------------- files and versions
@pytest.mark.parametrize("bundle", BUNDLES, ids=IDS)
def test_bundle_has_the_files_the_model_zoo_requires(bundle: Path) -> None:
    for name in ("configs/metadata.json", "configs/inference.json", "docs/README.md", "docs/data_license.txt",
                 "large_files.yml", "LICENSE"):
        assert (bundle / name).is_file(), name
    assert "Apache License" in (bundle / "LICENSE").read_text(encoding="utf-8")[:200]
    licence = (bundle / "docs" / "data_license.txt").read_text(encoding="utf-8")
    # the default data set's one real source, its notice, and the package it ships in
    assert "MNI ICBM152 2009a nonlinear symmetric" in licence and "McConnell Brain Imaging Centre" in licence
    assert "nilearn" in licence and "BSD 3-Clause" in licence


@pytest.mark.parametrize("bundle", BUNDLES, ids=IDS)
def test_large_files_list_the_weights_and_say_they_are_not_published(bundle: Path) -> None:
    from monai.apps.utils import download_url
    from monai.bundle import ConfigParser

    text = (bundle / "large_files.yml").read_text(encoding="utf-8")
    entries = ConfigParser.load_config_file(str(bundle / "large_files.yml"))["large_files"]  # as the model zoo reads it
    paths = [entry["path"] for entry in entries]
    assert len(set(paths)) == len(paths) and all(p.startswith("models/") for p in paths), paths
    # the preferred file of the model zoo, the TorchScript model, and the deployed checkpoint
    parser = ConfigParser()
    parser.read_config(str(bundle / "configs" / "inference.json"))
    parser["bundle_root"] = "."
    deployed = parser.get_parsed_content("ckpt_file" if "ckpt_file" in parser else "ckpt_path")
    assert {"models/model.pt", "models/model.ts", str(Path(deployed))} <= set(paths), (paths, deployed)
    parameters = inspect.signature(download_url).parameters
    for entry in entries:
        assert set(entry) == {"path", "url", "hash_val", "hash_type"}, entry
        assert entry["hash_type"] in ("md5", "sha1", "sha256", "sha512")
        # each entry becomes download_url(url=..., filepath=..., hash_val=..., hash_type=...) in the model zoo
        assert {"url", "filepath", "hash_val", "hash_type"} <= set(parameters)
        if entry["url"] == "":
            assert entry["hash_val"] == "", entry  # no hash of a file nobody can download
        else:
            assert entry["url"].startswith("https://") and len(entry["hash_val"]) >= 32, entry
    if any(entry["url"] == "" for entry in entries):
        assert "NOT YET PUBLISHED" in text


@pytest.mark.parametrize("bundle", BUNDLES, ids=IDS)
def test_version_is_the_newest_changelog_entry(bundle: Path) -> None:
    meta = _metadata(bundle)
    versions = list(meta["changelog"])
    assert all(SEMVER.match(v) for v in versions), versions
    newest = max(versions, key=lambda v: tuple(int(x) for x in v.split(".")))
    assert meta["version"] == newest == versions[0]


# ------------------------------------------------------------------------------------- metadata
@pytest.mark.parametrize("bundle", BUNDLES, ids=IDS)
def test_metadata_verifies_offline_against_the_schema_it_names(bundle: Path, tmp_path: Path, offline: None) -> None:
    from monai.bundle import verify_metadata

    meta = _metadata(bundle)
    assert meta["schema"].rsplit("/", 1)[-1] == SCHEMA.name  # the shipped schema is the one named
    schema = tmp_path / "eval" / "schema.json"  # where the model zoo's CI puts it
    schema.parent.mkdir()
    shutil.copyfile(SCHEMA, schema)
    verify_metadata(meta_file=str(bundle / "configs" / "metadata.json"), filepath=str(schema))
    bad = dict(meta, network_data_format={"inputs": {}})  # no outputs
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    with pytest.raises(ValueError, match="outputs"):
        verify_metadata(meta_file=str(tmp_path / "bad.json"), filepath=str(schema))


@pytest.mark.parametrize("bundle", BUNDLES, ids=IDS)
def test_metadata_has_the_model_zoo_keys_and_matches_the_configs(bundle: Path) -> None:
    from monai.bundle import ConfigParser
    from packaging.version import Version

    meta = _metadata(bundle)
    assert METADATA_KEYS <= set(meta), METADATA_KEYS - set(meta)
    for key in ("monai_version", "pytorch_version", "numpy_version"):
        Version(meta[key])
    assert all(Version(v) for v in meta["required_packages_version"].values())
    # MONAI reads "optional_packages_version" as the deprecated name of "required_packages_version"
    # and replaces the required packages with it
    assert "optional_packages_version" not in meta
    assert isinstance(meta["references"], list) and meta["references"]
    assert "not for clinical use" in meta["intended_use"]
    image = meta["network_data_format"]["inputs"]["image"]
    pred = meta["network_data_format"]["outputs"]["pred"]
    for tensor in (image, pred):
        assert TENSOR_KEYS <= set(tensor) and tensor["dtype"] == "float32"
        assert tensor["num_channels"] == len(tensor["channel_def"])
    parser = ConfigParser()
    parser.read_config(str(bundle / "configs" / "inference.json"))
    assert image["num_channels"] == parser.get_parsed_content("in_channels")
    classes = parser.get_parsed_content("num_classes") if "num_classes" in parser else 2  # classification: 2 logits
    assert pred["num_channels"] == classes


# ------------------------------------------------------------------------- network and export
def _training_checkpoint(bundle: Path, path: Path) -> torch.nn.Module:
    """Save a checkpoint as ``train.json``'s ``CheckpointSaver`` writes it (the unfused training
    network, random weights, BatchNorm statistics away from their defaults so that fusing them
    matters) to ``path``; returns that network."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(bundle / "configs" / "train.json"))
    torch.manual_seed(0)
    network = parser.get_parsed_content("network_def")
    with torch.no_grad():
        for module in network.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.2, 0.2)
                module.running_var.uniform_(0.5, 1.5)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": network.state_dict()}, path)
    return network


@pytest.mark.parametrize("bundle", BUNDLES, ids=IDS)
def test_verify_net_in_out_with_the_bundle_network(bundle: Path, tmp_path: Path) -> None:
    from monai.bundle import verify_net_in_out

    configs = bundle / "configs"
    # the full-size network of inference.json, random weights, at the smallest metadata shape
    verify_net_in_out(net_id="network_def", meta_file=str(configs / "metadata.json"),
                      config_file=str(configs / "inference.json"), device="cpu", n=1, any=1)
    meta = _metadata(bundle)
    meta["network_data_format"]["outputs"]["pred"]["num_channels"] += 1
    (tmp_path / "metadata.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="output channel number"):  # the check is a real one
        verify_net_in_out(net_id="network_def", meta_file=str(tmp_path / "metadata.json"),
                          config_file=str(configs / "inference.json"), device="cpu", n=1, any=1)


@pytest.mark.parametrize("bundle", BUNDLES, ids=IDS)
def test_ckpt_export_of_a_training_checkpoint_runs_like_the_network(bundle: Path, tmp_path: Path) -> None:
    from monai.bundle import ckpt_export

    configs = bundle / "configs"
    meta = _metadata(bundle)
    network = _training_checkpoint(bundle, tmp_path / "models" / "model.pt")
    exported = tmp_path / "models" / "verify_model.ts"
    ckpt_export(net_id="network_def", filepath=str(exported), ckpt_file=str(tmp_path / "models" / "model.pt"),
                meta_file=str(configs / "metadata.json"), config_file=str(configs / "inference.json"),
                bundle_root=str(tmp_path))
    extra = {"metadata.json": ""}
    scripted = torch.jit.load(str(exported), _extra_files=extra)
    assert json.loads(extra["metadata.json"])["version"] == meta["version"]
    shape = meta["network_data_format"]["inputs"]["image"]
    x = torch.randn(1, shape["num_channels"], 128, 128)
    with torch.no_grad():
        got, expected = scripted(x), network.eval()(x)
    assert got.shape == expected.shape and got.shape[1] == meta["network_data_format"]["outputs"]["pred"]["num_channels"]
    assert torch.allclose(got, expected, atol=1e-4, rtol=1e-3), (got - expected).abs().max()


@pytest.mark.parametrize("bundle", BUNDLES, ids=IDS)
def test_evaluation_config_has_monai_inference_properties(bundle: Path, tmp_path: Path) -> None:
    """MONAI's inference properties (dataset, evaluator, network_def, inferer...) are evaluate.json's;
    inference.json runs the bundle's own predictor on files and folders instead of an evaluator. The
    model zoo checks the properties of inference.json only for the apps in ``supported_apps`` (none)."""
    from monai.bundle import ConfigWorkflow

    configs = bundle / "configs"
    assert _metadata(bundle)["supported_apps"] == {}
    deployed = {"mobilemamba_classification": "model_ema.pt", "mobilemamba_segmentation": "model.pt"}[bundle.name]
    _training_checkpoint(bundle, tmp_path / "models" / deployed)
    case = {"image": "sub-000/image.nii.gz", "label": "sub-000/tissue.nii.gz", "lesion": "sub-000/lesion.nii.gz", "id": "sub-000"}
    for name in ("datalist_segmentation.json", "datalist_lesion_detection.json"):  # one case, never loaded
        (tmp_path / name).write_text(json.dumps({"training": [case], "validation": [case], "test": [case]}))
    # init_id: parse without running the config's "initialize" (it sets this process's threads);
    # the classification bundle's brain extraction would read a trained segmentation bundle beside it
    # (tests/test_brain_extraction.py), and so would its contrast-polarity check
    extra = ({"brain_extraction": False, "contrast_polarity": "given"} if bundle.name == "mobilemamba_classification"
             else {})
    workflow = ConfigWorkflow(config_file=str(configs / "evaluate.json"), meta_file=str(configs / "metadata.json"),
                              logging_file=False, workflow_type="inference", init_id="parse_only",
                              bundle_root=str(tmp_path), dataset_dir=str(tmp_path), **extra)
    assert "parse_only" not in workflow.parser
    workflow.initialize()
    assert workflow.check_properties() == []
    assert workflow.bundle_root == str(tmp_path) and isinstance(workflow.network_def, torch.nn.Module)
    assert len(workflow.dataset) == 1 and workflow.evaluator.network is not None
