"""Where are planted lesions missed? The classification bundle on real scans, by lesion placement.

The registry-scan checks (``benchmarks/shift_suite.py --settings real_*``) plant two to four lesions per
set; on them some hypointense lesions at native resolution scored at the lesion-free level, and those
lay nearer the CSF than the lesions found. Four against six lesions is a tendency, not a finding. This
probe asks the question with enough lesions, on the real whole-head scans of
:mod:`medmamba.data.registry_scans` (validation data: never used for training):

1. per scan and resolution (``native``: 1-1.5 mm; ``2mm``), the lesion-free whole head and copies with
   one ellipsoid lesion each (:func:`medmamba.data.shift_suite.plant_ellipsoid_lesions`, factor
   0.45 of the white-matter median with ``--kind hypo``, 1.45 with ``hyper``, semi-axes 4.5-6 mm,
   centre at least 4.5 mm deep in the white matter of the intensity-mixture reference); or, with
   ``--kind default-data``, one lesion made as the default data set makes them
   (:func:`medmamba.data.synthetic.insert_lesions`: a noise-distorted blob of radius 4.5-9 mm centred
   anywhere in the mixture's white matter, hypo- or hyperintense at random; placement ``any`` only);
2. the centres of a third of the copies lie at most ``--near-mm`` from the mixture's CSF (``near``),
   of a third at least ``--far-mm`` (``far``), of the rest anywhere (``any``: as the checks plant
   them). With the depth rule, ``near`` centres fall mostly in the brainstem, the thalamus and the
   white matter around the ventricles (the mixture calls the bright brainstem and thalamus white
   matter), ``far`` ones in the hemispheres' white matter (seen on bb1 at 2 mm);
3. each lesion is clipped to the white matter and its one-voxel rim (as the default data and the
   training insertion place lesions), so a lesion next to CSF borders it without filling it;
4. the bundle's ``inference.json`` classifies every image; the table gives, per scan, resolution and
   placement, the lesion log-odds (median and range), the share at or above the
   bundle's threshold (``models/threshold.json``) and the median distance from the lesion's voxels
   to the nearest CSF voxel;
5. with ``--explain``, why a lesion is missed: the bundle's network is run in this process on every
   image (:class:`LesionMapReader`: the bundle's preprocessing, brain extraction and slice stacks, the
   dense five-class output before the pooling), and per lesion the table gives the largest lesion
   log-odds inside it (a lesion whose own pixels stay below the threshold cannot raise the volume
   above it) and which class the network gives its voxels (background, CSF, grey matter, white
   matter, lesion). The lesion's voxels on the network's grid are those whose input value changed by
   more than ``--explain-change`` (z units of the bundle's normalisation) from the lesion-free image;
   and per lesion-free image where its own largest lesion log-odds lies (:func:`lesion_free_peak`: the
   spot that sets the floor every lesion must rise above; on real heads the trigone's surroundings and
   the fourth ventricle, depending on the training run).

Usage::

    python benchmarks/lesion_placement_probe.py --registry-cache runs/shift_suite/registry_cache \\
        --out runs/lesion_placement --per-bin 5 --seed 1
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

from shift_suite import BUNDLES, run_inference  # noqa: E402

BINS = ("near", "far", "any")
#: the classification bundle's dense classes (``LesionTissueLabeld``: tissue labels, lesion on top)
DENSE_CLASSES = ("background", "csf", "gm", "wm", "lesion")


KINDS = {"hypo": 0.45, "hyper": 1.45, "default-data": None}


def probe_scan(cache: Path, name: str, resolution: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A real scan of the probes: ``(volume, brain mask, affine)`` at ``resolution``.

    ``name`` is a registry scan (:data:`medmamba.data.registry_scans.REGISTRY_SCANS`, ``native`` or
    ``2mm``) or one of the segmentation bundle's real training heads
    (:data:`medmamba.data.real_heads.REAL_HEADS`, ``2mm`` only: their committed ROBEX masks are on the
    2 mm grid).

    Raises:
        ValueError: an unknown scan (:func:`medmamba.data.registry_scans.fetch_registry_scans`), or a real
            training head at another resolution than ``2mm``.
    """
    from medmamba.data.real_heads import REAL_HEADS, load_real_head_with_mask
    from medmamba.data.registry_scans import load_registry_scan_with_mask, to_isotropic_2mm

    if name in REAL_HEADS:
        if resolution != "2mm":
            raise ValueError(f"resolution {resolution!r} of real head {name!r}: its ROBEX mask is on the 2 mm grid; expected '2mm'")
        return load_real_head_with_mask(name, cache)
    volume, mask, affine = load_registry_scan_with_mask(cache, name)  # an unknown name: fetch_registry_scans' error
    if resolution == "2mm":
        volume, mask, affine = to_isotropic_2mm(volume, mask, affine)
    return volume, mask, affine


def probe_tissue(name: str, volume: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The tissue reference of a probe scan: the intensity mixture inside ``mask`` (for a
    white-matter-normalised real head split as its training labels are,
    :func:`medmamba.data.real_heads.head_tissue_labels`)."""
    from medmamba.data.fsl_template import intensity_mixture_labels
    from medmamba.data.real_heads import REAL_HEADS, head_tissue_labels

    if name in REAL_HEADS:
        return head_tissue_labels(volume, mask, REAL_HEADS[name].white_matter_normalised)
    return intensity_mixture_labels(volume, mask)


def make_probe_set(
    out: Path, name: str, resolution: str, cache: Path, *, per_bin: int, seed: int, near_mm: float, far_mm: float,
    kind: str = "hypo",
) -> list[dict]:
    """Write the probe images of one scan and resolution under ``out/images``; returns the case records."""
    from scipy import ndimage

    from medmamba.data.shift_suite import plant_ellipsoid_lesions
    from medmamba.data.synthetic import insert_lesions, white_matter_rim
    from medmamba.io.nifti import write_nifti

    volume, mask, affine = probe_scan(cache, name, resolution)
    tissue = probe_tissue(name, volume, mask)
    voxel = np.sqrt((np.asarray(affine)[:3, :3] ** 2).sum(0))
    if not np.allclose(voxel, voxel.mean(), rtol=0.02):  # to_isotropic_2mm keeps the field of view: 2.00-2.01 mm
        raise ValueError(f"{name} {resolution}: voxels {voxel} are not isotropic")
    voxel_mm = float(voxel.mean())
    csf_dist = ndimage.distance_transform_edt(tissue != 1) * voxel_mm
    rim = white_matter_rim(tissue)
    where = {"near": csf_dist <= near_mm, "far": csf_dist >= far_mm, "any": None}
    images = out / "images"
    records = [{"id": "lesion_free", "placement": "-", "csf_mm": None}]
    write_nifti(images / "lesion_free.nii.gz", volume, affine, dtype=np.float32, xform_code=1)
    name_seed = sum(ord(c) for c in name)
    # the hypointense probe's streams are those of its first release (no kind in the seed)
    extra = [list(KINDS).index(kind)] if kind != "hypo" else []
    for placement in bins_of(kind):
        rng = np.random.default_rng(np.random.SeedSequence([seed, 7_100_003, name_seed, BINS.index(placement), *extra]))
        for k in range(per_bin):
            factor = KINDS[kind]
            if factor is None:
                img, les, info = insert_lesions(volume, tissue, rng, voxel_mm, n_lesions=1, radius_mm=(4.5, 9.0))
                factor = info[0]["intensity_factor"] if info else None
            else:
                img, les = plant_ellipsoid_lesions(
                    volume, tissue, rng, voxel_mm, n_lesions=1, radius_mm=(4.5, 6.0), factor=factor,
                    where=where[placement], clip_to=rim,
                )
            if not les.any():
                continue
            case = f"{placement}{k}"
            write_nifti(images / f"{case}.nii.gz", img, affine, dtype=np.float32, xform_code=1)
            centre = np.asarray(affine) @ np.append(ndimage.center_of_mass(les), 1.0)
            records.append({"id": case, "placement": placement, "factor": factor, "centre_mm": [round(float(c), 1) for c in centre[:3]],
                            "csf_mm": float(np.median(csf_dist[les > 0])), "voxels": int(les.sum())})
    return records


class LesionMapReader:
    """The classification bundle's dense lesion map of an image, computed in this process.

    Reads the bundle's ``inference.json``: its preprocessing, its network (the fused lesion-map
    classifier) and its inferer (brain extraction around slice stacks), and runs the classifier's
    segmentation network (the five-class output before the pooling) through that inferer.

    Args:
        bundle: the classification bundle's root.
        threads: torch threads.

    Raises:
        ValueError: the bundle's network is not a single lesion-map classifier (e.g. an ensemble).
    """

    def __init__(self, bundle: Path, threads: int) -> None:
        import torch
        from monai.bundle import ConfigParser

        from medmamba.resources import configure_threads

        configs = bundle / "configs"
        parser = ConfigParser()
        parser.read_meta(str(configs / "metadata.json"))
        parser.read_config(str(configs / "inference.json"))
        parser["bundle_root"] = str(bundle)
        configure_threads(threads)  # what the bundle's own `initialize` does with --num_threads
        self.parser = parser  # the parsed inference.json, for other readers of the same bundle
        self.preprocessing = parser.get_parsed_content("preprocessing")
        self.inferer = parser.get_parsed_content("inferer")
        network = parser.get_parsed_content("network")
        classifier = getattr(network, "network", network)  # FuseOnLoad holds the classifier
        if not hasattr(classifier, "lesion_channel") or not isinstance(getattr(classifier, "network", None), torch.nn.Module):
            raise ValueError(f"bundle {bundle}: --explain needs a single lesion-map classifier, got {type(classifier).__name__}.")
        self.segmenter = classifier.network
        self.lesion_channel = int(classifier.lesion_channel)

    def dense(self, path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(input, classes, lesion_log_odds)``: the preprocessed image, the network's class per voxel
        and its lesion log-odds per voxel, each ``(H, W, D)`` on the classifier's grid."""
        import torch

        from medmamba.networks.nets.lesion_map import lesion_log_odds_map

        x = torch.as_tensor(self.preprocessing({"image": str(path)})["image"])[None].float()
        with torch.no_grad():
            logits = torch.as_tensor(self.inferer(x, self.segmenter)).float()  # (1, C, H, W, D)
        lesion = lesion_log_odds_map(logits, self.lesion_channel)[0]
        return x[0, 0].numpy(), logits[0].argmax(0).numpy(), lesion.numpy()


def explain_cases(reader: LesionMapReader, images: Path, records: list[dict], change: float = 0.5) -> None:
    """Add to each planted case of ``records`` what the network makes of its lesion (in place).

    Adds ``lesion_max_log_odds`` (the largest lesion log-odds inside the lesion) and ``called`` (the share
    of the lesion's voxels per dense class, :data:`DENSE_CLASSES`); the lesion's voxels on the network's
    grid are those whose preprocessed input differs from the lesion-free image's by more than ``change``.
    A case whose preprocessed grid differs from the lesion-free one's, or whose lesion leaves no voxel
    above ``change``, gets ``None`` for both.
    """
    # the lesion-free image once: its preprocessed input is what each lesion is measured against
    free, free_classes, free_map = reader.dense(images / "lesion_free.nii.gz")
    for rec in records:
        if rec["id"] == "lesion_free":
            rec["peak"] = lesion_free_peak(free_classes, free_map)
            continue
        x, classes, lesion_map = reader.dense(images / f"{rec['id']}.nii.gz")
        lesion = np.abs(x - free) > change if x.shape == free.shape else np.zeros(x.shape, dtype=bool)
        if not lesion.any():
            rec.update(lesion_max_log_odds=None, called=None)
            continue
        called = np.bincount(classes[lesion].ravel(), minlength=len(DENSE_CLASSES)) / lesion.sum()
        rec.update(lesion_max_log_odds=round(float(lesion_map[lesion].max()), 2),
                   called={name: round(float(v), 3) for name, v in zip(DENSE_CLASSES, called)})


def lesion_free_peak(classes: np.ndarray, lesion_map: np.ndarray) -> dict:
    """Where a lesion-free image's largest lesion log-odds lies (what sets its volume score's floor).

    Args:
        classes: The network's class per voxel ``(H, W, D)`` on the classifier's grid (RAS).
        lesion_map: Its lesion log-odds per voxel, same shape.

    Returns:
        ``log_odds`` (the largest), ``voxel`` (its index), ``box_fraction`` (its position inside the
        bounding box of the voxels not called background, 0-1 per axis: left-right, posterior-anterior,
        inferior-superior; 0.5 on the first axis is the midline of a centred head), ``called`` (its
        class, :data:`DENSE_CLASSES`) and ``csf_voxels`` (distance in voxels to the nearest voxel
        called CSF; ``None`` without one).

    Raises:
        ValueError: ``classes`` and ``lesion_map`` differ in shape or are not 3D.
    """
    from scipy import ndimage

    if classes.shape != lesion_map.shape or lesion_map.ndim != 3:
        raise ValueError(f"classes {classes.shape} and lesion_map {lesion_map.shape} must be the same 3D grid.")
    peak = np.unravel_index(int(np.argmax(lesion_map)), lesion_map.shape)
    brain = np.argwhere(classes > 0)
    low, high = (brain.min(0), brain.max(0)) if brain.size else (np.zeros(3), np.array(classes.shape) - 1)
    fraction = [round(float((p - lo) / max(hi - lo, 1)), 2) for p, lo, hi in zip(peak, low, high)]
    csf = classes == DENSE_CLASSES.index("csf")
    distance = float(ndimage.distance_transform_edt(~csf)[peak]) if csf.any() else None
    return {"log_odds": round(float(lesion_map[peak]), 2), "voxel": [int(p) for p in peak], "box_fraction": fraction,
            "called": DENSE_CLASSES[int(classes[peak])], "csf_voxels": None if distance is None else round(distance, 1)}


def print_explanations(rows: list[dict], threshold: float) -> None:
    """Per lesion: found or not, the volume's and the lesion's own log-odds, the classes of its voxels;
    then, for the found and the missed lesions, the median share of their voxels called each class."""
    print()
    print("| scan | resolution | lesion-free image's largest lesion log-odds | voxel | position in the brain's box (L-R, P-A, I-S) "
          "| called | voxels to CSF |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        if r["placement"] == "-" and r.get("peak"):
            pk = r["peak"]
            print(f"| {r['scan']} | {r['resolution']} | {pk['log_odds']:.2f} | {tuple(pk['voxel'])} | {tuple(pk['box_fraction'])} "
                  f"| {pk['called']} | {pk['csf_voxels']} |")
    print()
    print("| scan | resolution | case | factor | found | volume log-odds | lesion's own largest log-odds | voxels called "
          + " / ".join(DENSE_CLASSES) + " (%) |")
    print("|---|---|---|---|---|---|---|---|")
    cases = [r for r in rows if r["placement"] != "-" and r.get("called")]
    for r in cases:
        shares = " / ".join(f"{100 * r['called'][c]:.0f}" for c in DENSE_CLASSES)
        print(f"| {r['scan']} | {r['resolution']} | {r['id']} | {r['factor']:.2f} | {'yes' if r['log_odds'] >= threshold else 'no'} "
              f"| {r['log_odds']:.2f} | {r['lesion_max_log_odds']:.2f} | {shares} |")
    for label, sel in (("found", lambda r: r["log_odds"] >= threshold), ("missed", lambda r: r["log_odds"] < threshold)):
        group = [r for r in cases if sel(r)]
        if not group:
            continue
        medians = " / ".join(f"{100 * np.median([r['called'][c] for r in group]):.0f}" for c in DENSE_CLASSES)
        own = np.array([r["lesion_max_log_odds"] for r in group])
        print(f"{label}: {len(group)} lesions, median share of voxels called {' / '.join(DENSE_CLASSES)}: {medians} %; "
              f"lesion's own largest log-odds at or above the threshold: {int((own >= threshold).sum())} of {len(group)}")


def bins_of(kind: str) -> tuple[str, ...]:
    """The placements a lesion kind is probed at (the default data's generator places anywhere)."""
    return ("any",) if KINDS[kind] is None else BINS


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--registry-cache", type=Path, required=True)
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "lesion_placement")
    parser.add_argument("--scans", nargs="*", default=["bb1", "bb2", "robex"])
    parser.add_argument("--resolutions", nargs="*", default=["native", "2mm"], choices=["native", "2mm"])
    parser.add_argument("--per-bin", type=int, default=5, help="lesion copies per placement")
    parser.add_argument("--seed", type=int, default=1, help="lesion placement seed (1: validation; 0 is the held-out suite's)")
    parser.add_argument("--kind", choices=list(KINDS), default="hypo", help="which lesions to plant (see above)")
    parser.add_argument("--near-mm", type=float, default=7.0)
    parser.add_argument("--far-mm", type=float, default=11.0)
    parser.add_argument("--bundle-root", type=Path, default=BUNDLES["classification"])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path, default=None, help="also write every case's record here")
    parser.add_argument("--explain", action="store_true",
                        help="also run the network in this process and give, per lesion, its own largest lesion "
                             "log-odds and the classes the network gives its voxels (step 5 above)")
    parser.add_argument("--explain-change", type=float, default=0.5,
                        help="a voxel belongs to the lesion on the network's grid when the planted image differs from "
                             "the lesion-free one by more than this (z units of the bundle's normalisation)")
    args = parser.parse_args(argv)
    if args.per_bin < 1:
        parser.error(f"--per-bin must be >= 1, got {args.per_bin}")
    if not args.explain_change > 0:
        parser.error(f"--explain-change must be > 0, got {args.explain_change}")
    reader = LesionMapReader(args.bundle_root, args.threads) if args.explain else None
    threshold = json.loads((args.bundle_root / "models" / "threshold.json").read_text())["threshold_log_odds"]
    rows = []
    for name in args.scans:
        for res in args.resolutions:
            folder = args.out / f"{name}_{res}"
            records = make_probe_set(folder, name, res, args.registry_cache, per_bin=args.per_bin, seed=args.seed,
                                     near_mm=args.near_mm, far_mm=args.far_mm, kind=args.kind)
            seconds = run_inference(args.bundle_root, folder / "images", folder / "pred", args.threads)
            with open(folder / "pred" / "probabilities.csv", newline="") as fh:
                scores = {r["case_id"]: float(r["lesion_log_odds"]) for r in csv.DictReader(fh) if r["status"] == "ok"}
            for rec in records:
                rec.update(scan=name, resolution=res, log_odds=scores[rec["id"]])
            if reader is not None:
                explain_cases(reader, folder / "images", records, args.explain_change)
            rows += records
            print(f"{name} {res}: {len(records)} images classified in {seconds:.0f} s", file=sys.stderr, flush=True)
    print(f"threshold {threshold:.3f} log-odds ({args.bundle_root / 'models' / 'threshold.json'})")
    print("| scan | resolution | placement | lesions | log-odds median [min, max] | found | lesion-CSF distance (median, mm) |")
    print("|---|---|---|---|---|---|---|")
    for name in args.scans:
        for res in args.resolutions:
            sel = [r for r in rows if r["scan"] == name and r["resolution"] == res]
            free = [r["log_odds"] for r in sel if r["placement"] == "-"]
            print(f"| {name} | {res} | lesion-free | - | {free[0]:.2f} | {'called lesion' if free[0] >= threshold else 'below'} | - |")
            for placement in bins_of(args.kind):
                s = [r for r in sel if r["placement"] == placement]
                lo = np.array([r["log_odds"] for r in s])
                print(f"| {name} | {res} | {placement} | {len(s)} | {np.median(lo):.2f} [{lo.min():.2f}, {lo.max():.2f}] "
                      f"| {int((lo >= threshold).sum())} of {len(s)} | {np.median([r['csf_mm'] for r in s]):.1f} |")
    for placement in bins_of(args.kind):
        lo = np.array([r["log_odds"] for r in rows if r["placement"] == placement])
        print(f"all {placement}: {int((lo >= threshold).sum())} of {len(lo)} found")
    if KINDS[args.kind] is None:
        for label, sel in (("hypointense", lambda f: f < 1), ("hyperintense", lambda f: f > 1)):
            lo = np.array([r["log_odds"] for r in rows if r.get("factor") is not None and sel(r["factor"])])
            print(f"all {label}: {int((lo >= threshold).sum())} of {len(lo)} found")
    if reader is not None:
        print_explanations(rows, threshold)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"threshold_log_odds": threshold, "cases": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
