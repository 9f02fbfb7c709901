"""The bundles' training variants as overlays on ``train.json``, and the functions their configs call.

``train_teacher.json`` (both bundles) and ``train_slice_labels.json`` (classification) hold only the
keys in which they differ from ``train.json``; MONAI merges ``--config_file "['train.json',
'train_teacher.json']"`` key by key (``ConfigParser.load_config_files``). These tests check that an
overlay changes existing keys only (a misspelt key would silently add a new one), that it stays
short, that the merged configs build the variant's network, loss and trainer settings, that the
student's settings an overlay leaves in the merged config are never reached from ``run``, and that
every caller (the main job, the READMEs) passes the base config first. The last part checks
:mod:`medmamba.bundle`, the functions that replaced the configs' long ``$`` expressions.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import re
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning", "ignore::FutureWarning")

ROOT = Path(__file__).resolve().parents[1]
BUNDLES = ROOT / "bundles"
CLS, SEG = BUNDLES / "mobilemamba_classification", BUNDLES / "mobilemamba_segmentation"

#: (bundle, overlay, the keys it adds that train.json does not have)
OVERLAYS = [
    (CLS, "train_teacher.json", set()),
    (CLS, "train_slice_labels.json", {"num_classes"}),  # the slice classifier's 2 classes
    (SEG, "train_teacher.json", set()),
]
IDS = [f"{b.name.split('_')[1]}-{name}" for b, name, _ in OVERLAYS]

#: Settings of the student that an overlay leaves in the merged config, unused by the variant.
UNUSED = {
    (CLS, "train_teacher.json"): {"teacher_kd", "teacher_def", "teacher_file", "teacher_amp", "teacher"},
    (CLS, "train_slice_labels.json"): {
        "teacher_kd", "teacher_def", "teacher_file", "teacher_amp", "teacher", "kd_weight", "dense_loss",
        "train_network", "synthesis", "synthesis_prob", "generation_key", "thread_grant_file", "dense_classes",
        "lesion_class", "lesion_class_weight", "mil_weight", "pooling", "pixel_top_k",
    },
    (SEG, "train_teacher.json"): {"teacher_kd", "teacher_def", "teacher_file", "teacher_amp", "teacher", "ema"},
}


def _merged(bundle: Path, overlay: str) -> dict:
    from monai.bundle import ConfigParser

    configs = bundle / "configs"
    return ConfigParser.load_config_files([str(configs / "train.json"), str(configs / overlay)])


def _parser(bundle: Path, overlay: str, **overrides: Any):
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config([str(bundle / "configs" / "train.json"), str(bundle / "configs" / overlay)])
    parser.update({"bundle_root": str(bundle), "device": "$torch.device('cpu')", **overrides})
    return parser


def _lookup(config: Any, key: str) -> tuple[bool, Any]:
    """Whether ``key`` (a ``#`` path) is in ``config``, and its value."""
    node = config
    for part in key.split("#"):
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return False, None
    return True, node


def _reachable(config: dict, roots: tuple[str, ...] = ("initialize", "run", "finalize")) -> set[str]:
    """The ids a workflow evaluates from ``roots``: each id's subtree, and every ``@``/``%`` reference in it."""
    seen: set[str] = set()
    todo = list(roots)
    while todo:
        key = todo.pop()
        if key in seen:
            continue
        seen.add(key)
        found, node = _lookup(config, key)
        assert found, f"reference to a missing id: {key}"
        for ref in re.findall(r"[@%]([A-Za-z_][\w#]*)", json.dumps(node)):
            todo.append(ref)
    return seen


# ------------------------------------------------------------------------------------ the overlays
@pytest.mark.parametrize(("bundle", "overlay", "added"), OVERLAYS, ids=IDS)
def test_an_overlay_sets_only_existing_keys_that_differ(bundle: Path, overlay: str, added: set) -> None:
    base = json.loads((bundle / "configs" / "train.json").read_text(encoding="utf-8"))
    changes = json.loads((bundle / "configs" / overlay).read_text(encoding="utf-8"))
    new = set()
    for key, value in changes.items():
        assert not key.startswith("+"), key  # a merge would keep the student's entries
        found, before = _lookup(base, key)
        if not found:
            new.add(key)
        assert before != value, f"{overlay} repeats train.json's {key}"
    assert new == added


@pytest.mark.parametrize(("bundle", "overlay", "added"), OVERLAYS, ids=IDS)
def test_an_overlay_is_much_shorter_than_the_config_it_changes(bundle: Path, overlay: str, added: set) -> None:
    lines = {name: len((bundle / "configs" / name).read_text(encoding="utf-8").splitlines()) for name in ("train.json", overlay)}
    assert lines[overlay] < 0.35 * lines["train.json"], lines


@pytest.mark.parametrize(("bundle", "overlay", "added"), OVERLAYS, ids=IDS)
def test_the_students_settings_left_in_a_merged_config_are_never_used(bundle: Path, overlay: str, added: set) -> None:
    merged = _merged(bundle, overlay)
    unused = UNUSED[(bundle, overlay)]
    assert unused <= set(merged)  # they are there (an overlay cannot delete a key) ...
    reached = {key.split("#")[0] for key in _reachable(merged)}
    assert not unused & reached, unused & reached  # ... but nothing the workflow runs refers to them
    # the student itself reaches what the variant replaced (so the check above is not vacuous)
    student = _reachable(json.loads((bundle / "configs" / "train.json").read_text(encoding="utf-8")))
    assert {"network_def", "loss", "distillation"} <= {key.split("#")[0] for key in student}


def test_classification_teacher_merges_to_the_unet_lesion_map_teacher() -> None:
    from monai.networks.nets import UNet

    from medmamba.losses import LesionMILLoss
    from medmamba.networks import LesionMapClassifier

    parser = _parser(CLS, "train_teacher.json")
    net = parser.get_parsed_content("network_def")
    assert isinstance(net, LesionMapClassifier) and isinstance(net.network, UNet)
    x = torch.randn(2, parser.get_parsed_content("in_channels"), 64, 64)
    assert net.network(x).shape == (2, 5, 64, 64)  # the 5 dense classes
    assert isinstance(parser.get_parsed_content("loss"), LesionMILLoss)
    assert parser.get_parsed_content("distillation").teacher is None
    insertion = parser.get_parsed_content("lesion_insertion")
    assert (insertion.prob, insertion.max_lesions) == (0.5, 1)
    assert parser["train#trainer#_target_"] == "SupervisedTrainer" and parser["train#trainer#max_epochs"] == 30
    assert parser.get_parsed_content("model_name") == "teacher"
    assert parser.get_parsed_content("log_dir") == str(CLS) + "/logs/teacher"
    assert parser.get_parsed_content("datalist").endswith("/datalist_segmentation.json")
    assert parser["teacher_precision"] is None


def test_segmentation_teacher_merges_to_the_unet_without_ema() -> None:
    from monai.losses import DiceCELoss
    from monai.networks.nets import UNet

    parser = _parser(SEG, "train_teacher.json")
    net = parser.get_parsed_content("network_def")
    assert isinstance(net, UNet) and net(torch.randn(1, 3, 64, 64)).shape == (1, 4, 64, 64)
    assert parser.get_parsed_content("channels_last") is False  # channels-last on CUDA only
    assert isinstance(parser.get_parsed_content("loss"), DiceCELoss)
    assert parser.get_parsed_content("distillation").teacher is None
    handlers = [h["_target_"] for h in parser["train#handlers"]]
    assert handlers == ["LrScheduleHandler", "ValidationHandler", "medmamba.training.ThreadGrantHandler",
                        "ignite.handlers.ProgressBar", "StatsHandler", "TensorBoardStatsHandler"]
    assert parser["validate#handlers#3#key_metric_filename"] == "teacher.pt"
    assert parser["train#trainer#max_epochs"] == 40 and parser["val_interval"] == 10


def test_slice_label_recipe_merges_to_the_mobilemamba_slice_classifier() -> None:
    from medmamba.networks import MobileMamba
    from medmamba.training import MixupCutmix, SoftTargetCrossEntropy

    parser = _parser(CLS, "train_slice_labels.json", **{"network_def#embed_dim": [16, 24, 32], "network_def#depth": [1, 1, 1]})
    net = parser.get_parsed_content("network_def")
    assert isinstance(net, MobileMamba) and parser.get_parsed_content("in_channels") == 3
    assert net.eval()(torch.randn(1, 3, 64, 64)).shape == (1, 2)
    assert isinstance(parser.get_parsed_content("loss"), SoftTargetCrossEntropy)
    assert isinstance(parser.get_parsed_content("mixup"), MixupCutmix)
    distillation = parser.get_parsed_content("distillation")
    assert distillation.teacher is None and distillation.task == "classification"
    assert parser["train#trainer#network"] == "@network"
    assert parser["train#dataset#copy_cache"] is True
    targets = [t["_target_"] if isinstance(t, dict) else t for t in parser["train#random_transforms"]]
    assert "@synthesis" not in targets and "medmamba.transforms.SampleLesionLabeld" in targets
    assert not any(h["_target_"].endswith("ThreadGrantHandler") for h in parser["train#handlers"])


# ------------------------------------------------------------------------------------ the callers
def _main_job() -> ModuleType:
    spec = importlib.util.spec_from_file_location("medmamba_main_job_overlays", ROOT / "scripts" / "main_job.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name", ["classification", "segmentation"])
def test_main_job_runs_the_teacher_as_train_json_plus_its_overlay(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from fire.parser import DefaultParseValue

    job = _main_job()
    monkeypatch.setattr(job, "uses_teacher", lambda bundle: True)
    monkeypatch.setattr(job, "test_cases", lambda: (Path("dicom"), Path("image.nii.gz")))
    stages = job.bundle_stages(name, job.BUNDLES[name], skip_teacher=False, plan=job.plan_threads(2))
    stages = [s for s in stages if s.name != "real heads"]  # the segmentation chain makes its real heads first
    teacher = stages[0]
    assert teacher.name == "train teacher"
    argument = teacher.argv[teacher.argv.index("--config_file") + 1]
    files = DefaultParseValue(argument)  # as `python -m monai.bundle run` (fire) reads it
    assert files == ast.literal_eval(argument)
    configs = job.BUNDLES[name] / "configs"
    assert files == [str(configs / "train.json"), str(configs / "train_teacher.json")]
    # the other stages still pass one file
    student = stages[1]
    assert student.argv[student.argv.index("--config_file") + 1] == str(configs / "train.json")


@pytest.mark.parametrize("readme", [CLS / "docs" / "README.md", SEG / "docs" / "README.md", ROOT / "README.md"])
def test_documented_commands_put_train_json_before_an_overlay(readme: Path) -> None:
    runs = [line for line in readme.read_text(encoding="utf-8").splitlines() if "--config_file" in line]
    for line in runs:
        for overlay in ("train_teacher.json", "train_slice_labels.json"):
            if overlay in line:
                assert re.search(r"train\.json'\s*,\s*'[^']*" + re.escape(overlay), line), line


# ------------------------------------------------------------------------- the configs' functions
def test_to_device_moves_and_optionally_makes_channels_last() -> None:
    from medmamba.bundle import to_device

    net = torch.nn.Conv2d(3, 4, 3)
    assert to_device(net, "cpu") is net and net.weight.is_contiguous()
    to_device(net, torch.device("cpu"), channels_last=True)
    assert net.weight.is_contiguous(memory_format=torch.channels_last) and not net.weight.is_contiguous()
    with pytest.raises(TypeError, match="channels_last must be a bool, got 1"):
        to_device(net, "cpu", channels_last=1)
    with pytest.raises(TypeError, match="network must be an nn.Module, got str"):
        to_device("net", "cpu")


@pytest.mark.parametrize(
    ("warmup", "epochs", "steps", "expected"),
    [(1, 30, 7, 7), (0.5, 30, 7, 3), (0, 30, 7, 0), (3, 1, 7, 6), (1, 1, 1, 0)],
)
def test_warmup_steps_is_the_warmup_cut_one_short_of_the_run(warmup: float, epochs: int, steps: int, expected: int) -> None:
    from medmamba.bundle import warmup_steps

    assert warmup_steps(warmup, epochs, steps) == expected == min(int(warmup * steps), epochs * steps - 1)


def test_warmup_steps_rejects_bad_lengths() -> None:
    from medmamba.bundle import warmup_steps

    with pytest.raises(ValueError, match="warmup_epochs must be >= 0, got -1"):
        warmup_steps(-1, 3, 4)
    with pytest.raises(ValueError, match="steps_per_epoch must be a positive integer, got 0"):
        warmup_steps(1, 3, 0)
    with pytest.raises(ValueError, match="max_epochs must be a positive integer, got 2.5"):
        warmup_steps(1, 2.5, 4)


def test_class_weights_weight_one_class() -> None:
    from medmamba.bundle import class_weights

    weights = class_weights(5, 4, 10.0)
    assert weights.tolist() == [1.0, 1.0, 1.0, 1.0, 10.0] and weights.dtype == torch.float32
    assert class_weights(3, 0, 2.5, device="cpu").tolist() == [2.5, 1.0, 1.0]
    with pytest.raises(ValueError, match=r"weighted_class must be one of range\(5\), got 5"):
        class_weights(5, 5, 10.0)
    with pytest.raises(ValueError, match="num_classes must be a positive integer, got 0"):
        class_weights(0, 0, 1.0)


def test_network_names_read_through_wrappers() -> None:
    from monai.networks.nets import UNet

    from medmamba.bundle import network_description, network_label, network_variant
    from medmamba.networks import FusedLesionMapClassifier, FusedMobileMambaSeg

    tiny = {"embed_dim": (16, 24, 32), "depth": (1, 1, 1)}
    lesion_map = FusedLesionMapClassifier("t2", in_channels=5, out_channels=5, lesion_channel=4, **tiny)
    assert network_description(lesion_map) == "LesionMapClassifier:MobileMambaSeg"
    assert network_variant(lesion_map) == "t2"
    seg = FusedMobileMambaSeg("t2", in_channels=3, out_channels=4, **tiny)
    assert network_label(seg) == "FusedMobileMambaSeg:t2"
    unet = UNet(2, 3, 4, channels=(4, 8), strides=(2,))
    assert (network_label(unet), network_description(unet), network_variant(unet)) == ("UNet", "UNet", None)


def test_dense_teacher_loads_the_checkpoint_and_returns_the_frozen_dense_network(tmp_path: Path) -> None:
    from monai.networks.nets import UNet

    from medmamba.bundle import dense_teacher
    from medmamba.networks import LesionMapClassifier
    from medmamba.training import Autocast

    torch.manual_seed(0)
    trained = LesionMapClassifier(UNet(2, 5, 5, channels=(8, 16), strides=(2,)), lesion_channel=4)
    torch.save({"model": trained.state_dict()}, tmp_path / "teacher.pt")
    fresh = LesionMapClassifier(UNet(2, 5, 5, channels=(8, 16), strides=(2,)), lesion_channel=4)
    teacher = dense_teacher(fresh, tmp_path / "teacher.pt", "cpu", amp="fp32")
    assert isinstance(teacher, Autocast) and isinstance(teacher.network, UNet)
    assert not any(p.requires_grad for p in teacher.parameters())
    x = torch.randn(2, 5, 32, 32)
    with torch.no_grad():
        assert torch.allclose(teacher(x), trained.eval().network(x))
    with pytest.raises(TypeError, match="network must wrap a dense network in its 'network' attribute, got UNet"):
        dense_teacher(UNet(2, 5, 5, channels=(8, 16), strides=(2,)), tmp_path / "teacher.pt", "cpu")


def test_existing_file_passes_only_files_on(tmp_path: Path) -> None:
    from medmamba.bundle import existing_file

    model = tmp_path / "model.ts"
    assert existing_file(str(model)) is None and existing_file(None) is None
    assert existing_file(str(tmp_path)) is None  # a folder is not a file
    model.write_bytes(b"ts")
    assert existing_file(str(model)) == str(model)


def test_rank_functions_need_a_process_group() -> None:
    import torch.distributed as dist

    from medmamba.bundle import handlers_of_rank

    if dist.is_initialized():
        pytest.skip("a process group is already initialised in this process")
    with pytest.raises(ValueError, match="handlers_of_rank needs an initialised process group"):
        handlers_of_rank([object()], keep=int)


def test_handlers_of_rank_keeps_all_on_rank_zero_and_only_keep_elsewhere(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch.distributed as dist

    from medmamba.bundle import handlers_of_rank

    handlers = [object(), 3, "log", 5]
    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "get_rank", lambda: 0)
    assert handlers_of_rank(handlers, keep=int) == handlers
    monkeypatch.setattr(dist, "get_rank", lambda: 1)
    assert handlers_of_rank(handlers, keep=int) == [3, 5]
    assert handlers_of_rank(handlers, keep=(int, str)) == [3, "log", 5]


def test_no_bundle_config_holds_a_long_expression_with_inline_logic() -> None:
    """``$`` expressions over 100 characters are single calls of a named function (their length is
    their arguments); conditionals, comprehensions and attribute chains live in :mod:`medmamba.bundle`."""

    def expressions(node: Any):
        if isinstance(node, dict):
            for value in node.values():
                yield from expressions(value)
        elif isinstance(node, list):
            for value in node:
                yield from expressions(value)
        elif isinstance(node, str) and node.startswith("$"):
            yield node

    long = {}
    for path in sorted(BUNDLES.glob("*/configs/*.json")):
        for expr in expressions(json.loads(path.read_text(encoding="utf-8"))):
            if len(expr) > 100:
                long[f"{path.parent.parent.name}/{path.name}"] = expr
                tree = ast.parse(re.sub(r"@([A-Za-z_][\w#]*)", lambda m: "REF_" + m.group(1).replace("#", "_"), expr[1:]), mode="eval")
                assert isinstance(tree.body, ast.Call), expr
                inner = [n for arg in [*tree.body.args, *(k.value for k in tree.body.keywords)] for n in ast.walk(arg)]
                assert not any(isinstance(n, (ast.IfExp, ast.ListComp, ast.GeneratorExp, ast.Lambda, ast.BoolOp)) for n in inner), expr
    assert long  # the check sees the long calls that remain (load_network, segment, classify, export_onnx, ...)


@pytest.mark.parametrize(("bundle", "configs"), [
    (CLS, ("train.json",)), (CLS, ("train.json", "train_teacher.json")),
    (SEG, ("train.json",)), (SEG, ("train.json", "train_teacher.json")),
], ids=["cls", "cls-teacher", "seg", "seg-teacher"])
def test_every_tensor_the_loss_holds_follows_the_device(bundle: Path, configs: tuple[str, ...]) -> None:
    """The trainer moves the network and the batches, not the loss: a class-weight tensor built on the CPU
    failed the segmentation training on a GPU ("weight is on cpu, different from other tensors on cuda:0")."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config([str(bundle / "configs" / c) for c in configs])
    parser.update({"bundle_root": str(bundle), "device": "$torch.device('meta')"})
    loss = parser.get_parsed_content("loss")
    tensors = dict(loss.named_buffers()) if isinstance(loss, torch.nn.Module) else {}
    tensors.update({f"{name}.{k}": v for name, module in (loss.named_modules() if isinstance(loss, torch.nn.Module) else [])
                    for k, v in vars(module).items() if isinstance(v, torch.Tensor)})
    assert tensors, "the loss holds no class weights any more: update this test"
    assert {name: t.device.type for name, t in tensors.items() if t.device.type != "meta"} == {}


def test_every_medmamba_module_a_config_calls_is_in_its_imports() -> None:
    """A ``$medmamba.<module>.…`` expression needs ``$import medmamba.<module>`` in the config's own
    imports: ``import medmamba`` does not load the subpackages, and a run that resolves only some
    ids (``export_onnx``) fails with "module 'medmamba' has no attribute …" (found in the 0.6.9 main job)."""
    import re

    root = Path(__file__).resolve().parents[1] / "bundles"
    checked = 0
    for config in sorted(root.glob("*/configs/*.json")):
        if config.name in ("metadata.json",):
            continue
        cfg = json.loads(config.read_text())
        if not isinstance(cfg, dict) or "imports" not in cfg:
            continue
        imports = {i.removeprefix("$import ").strip() for i in cfg["imports"]}
        expressions: list[str] = []

        def collect(node: object) -> None:  # the "$" expressions; "_target_" paths are imported by MONAI itself
            if isinstance(node, str) and node.startswith("$") and not node.startswith("$import"):
                expressions.append(node)
            elif isinstance(node, dict):
                for value in node.values():
                    collect(value)
            elif isinstance(node, list):
                for value in node:
                    collect(value)

        collect(cfg)
        used = {m for e in expressions for m in re.findall(r"medmamba\.([a-z_]+)\.", e)}
        missing = sorted(m for m in used if not any(i == f"medmamba.{m}" or i.startswith(f"medmamba.{m}.") for i in imports))
        assert not missing, f"{config.relative_to(root)} calls medmamba.{missing} without importing it"
        checked += 1
    assert checked >= 6
