"""The README's main job (``scripts/main_job.py``): which weights each bundle evaluates, exports and deploys."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _main_job() -> ModuleType:
    spec = importlib.util.spec_from_file_location("medmamba_main_job", ROOT / "scripts" / "main_job.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("bundle", ["classification", "segmentation"])
@pytest.mark.parametrize("config", ["evaluate.json", "inference.json"])
def test_deployed_checkpoint_is_the_default_of_the_bundle_configs(bundle: str, config: str) -> None:
    from monai.bundle import ConfigParser

    job = _main_job()
    root = job.BUNDLES[bundle]
    parser = ConfigParser()
    parser.read_config(str(root / "configs" / config))
    parser["bundle_root"] = str(root)
    key = "ckpt_file" if "ckpt_file" in parser else "ckpt_path"  # the segmentation bundle's name for it
    assert Path(parser.get_parsed_content(key)).name == job.DEPLOY_CHECKPOINT[bundle]


def test_classification_stages_export_the_deployed_weights_and_evaluate_the_best_checkpoint_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    job = _main_job()
    test = [{"id": "sub-a", "image": "a/image.nii.gz", "dicom": "a/dicom"}, {"id": "sub-b", "image": "b/image.nii.gz"}]
    (tmp_path / "datalist_segmentation.json").write_text(json.dumps({"test": test}))
    monkeypatch.setattr(job, "DATA", tmp_path)
    bundle = job.BUNDLES["classification"]
    stages = job.bundle_stages("classification", bundle, skip_teacher=False)
    names = [s.name for s in stages]
    assert names[:4] == ["train teacher", "train student (KD)", "evaluate (test)", "evaluate (test), best-val checkpoint"]

    def arg(stage, flag: str) -> str:  # noqa: ANN001
        return stage.argv[stage.argv.index(flag) + 1]

    best = stages[3]
    assert arg(best, "--ckpt_file") == str(bundle / "models" / "model.pt")
    assert arg(best, "--output_dir") == str(bundle / "eval" / "best_checkpoint")
    assert "--ckpt_file" not in stages[2].argv  # the deployed weights: the config's default (model_ema.pt)
    export = next(s for s in stages if s.name == "export TorchScript")
    assert arg(export, "--ckpt_file") == str(bundle / "models" / "model_ema.pt")
    seg = job.bundle_stages("segmentation", job.BUNDLES["segmentation"], skip_teacher=True)
    assert [s.name for s in seg][:2] == ["train student (KD)", "evaluate (test)"]
    seg_export = next(s for s in seg if s.name == "export TorchScript")
    assert arg(seg_export, "--ckpt_file").endswith("model.pt")
    assert str(tmp_path / "a" / "dicom") in next(s for s in stages if s.name == "inference, DICOM series").argv
