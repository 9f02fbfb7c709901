"""Why a skull-stripped brain scores higher than the same brain with its head: the normalisation.

FSL's MNI152 template (:mod:`medmamba.data.fsl_template`) is one brain, given once as a whole head
and once skull-stripped by its own mask. The lesion classifier scores the stripped brain higher
(validation, 2026-12-04: 9.96 against 8.27 log-odds at 2 mm, 11.58 against 6.45 at 1 mm). Both go
through the bundle's preprocessing; the last step, ``MRNormalize``, clips at the 0.5th percentile and
z-scores over the foreground, whose statistics differ with and without the head. This script runs
the bundle's own preprocessing and predictor (``inference.json``) and scores:

- the whole head and the stripped brain as deployed (each normalised by its own statistics);
- the stripped brain normalised by the *whole head's* clip level, mean and standard deviation
  (``MRNormalize.statistics`` of the head, passed to ``MRNormalize(brain, statistics=...)``).

If the third score falls to the first, the gap is the normalisation, not the anatomy.

    python benchmarks/normalisation_probe.py [--bundle-root bundles/mobilemamba_classification]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from common import machine_line  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle-root", type=Path, default=ROOT / "bundles" / "mobilemamba_classification")
    parser.add_argument("--resolutions", type=int, nargs="*", default=[2, 1])
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    from monai.bundle import ConfigParser
    from monai.transforms import Compose

    from medmamba.data.fsl_template import load_fsl_template
    from medmamba.io.nifti import write_nifti

    torch.set_num_threads(args.threads)
    cp = ConfigParser()
    cp.read_config(str(args.bundle_root / "configs" / "inference.json"))
    cp["bundle_root"] = str(args.bundle_root)
    steps = list(cp.get_parsed_content("preprocessing").transforms)
    if type(steps[-1]).__name__ != "MRNormalized":
        raise ValueError(f"the preprocessing's last step is {type(steps[-1]).__name__}, expected MRNormalized")
    normalise, before = steps[-1].normalizer, Compose(steps[:-1])
    predictor = cp.get_parsed_content("predictor")

    def score(image: torch.Tensor) -> float:
        with torch.no_grad():
            return float(predictor(image[None])["lesion_log_odds"][0])

    print(f"# normalisation probe\n\nCPU: {machine_line()}\nbundle: {args.bundle_root}\n")
    print("| FSL template | whole head (own statistics) | stripped (own statistics) | stripped (the head's statistics) | head / brain clip, mean, std |")
    print("|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for mm in args.resolutions:
            tpl = load_fsl_template(mm)
            paths = {}
            for kind, head in (("head", True), ("brain", False)):
                paths[kind] = Path(tmp) / f"{kind}_{mm}mm.nii.gz"
                write_nifti(paths[kind], tpl.image(head), tpl.affine, dtype=np.float32, xform_code=1)
            head, brain = (before({"image": str(paths[k])})["image"] for k in ("head", "brain"))
            s_head, s_brain = score(normalise(head)), score(normalise(brain))
            head_stats, brain_stats = normalise.statistics(head[0]), normalise.statistics(brain[0])
            s_swapped = score(normalise(brain, statistics=[head_stats]))

            def cells(st: tuple) -> str:
                return ", ".join("-" if v is None else f"{float(v):.0f}" for v in (st[0], st[2], st[3]))

            print(f"| {mm} mm | {s_head:.2f} | {s_brain:.2f} | {s_swapped:.2f} | {cells(head_stats)} / {cells(brain_stats)} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
