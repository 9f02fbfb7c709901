"""Batch inference throughput (scans/min) of the segmentation bundle: 1 process vs N processes.

Runs the ``mobilemamba_segmentation`` bundle's ``inference.json`` as a user would, on the same
folder of volumes, side by side in one run:

* one process with ``T`` torch threads (``python -m monai.bundle run … --num_threads T``), with
  OpenMP's default wait policy (idle threads spin for a while before sleeping) and with
  ``OMP_WAIT_POLICY=PASSIVE`` (they sleep at once): on a machine shared with other jobs, threads
  spinning at every barrier for a descheduled sibling can make the multi-threaded process several
  times slower, so the table shows both;
* ``N`` processes with ``T / N`` threads each (``torchrun --standalone --nproc_per_node N -m
  monai.bundle run`` with ``configs/multi_gpu_inference.json``: cases split by rank, rank 0 merges).

Settings alternate for ``--repeats`` rounds; the table gives medians. Two figures
per setting: end to end (the command's wall time: process start, imports, network loading and the
batch) and the batch alone (the ``seconds`` the bundle's ``run`` reports: from the start of
``segment`` to the merged report, i.e. the slowest rank).

The volumes are 2 mm semi-synthetic subjects on the MNI152 2 mm grid (99×117×95) made with
:mod:`medmamba.data.synthetic` (the embedded data set's own generator), or the subjects of
``--dataset-dir`` (e.g. ``data/default``). The network is the bundle's real MobileMamba-T2
segmenter with **randomly initialised weights** (no trained checkpoint needed: throughput does not
depend on the weights); the masks of the two settings are compared voxel by voxel.

Usage::

    python benchmarks/bench_batch_inference.py                       # 8 volumes, 1x2 vs 2x1, 2 rounds
    python benchmarks/bench_batch_inference.py --volumes 16 --processes 4 --threads 4
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
BUNDLE = REPO / "bundles" / "mobilemamba_segmentation"
CONFIGS = BUNDLE / "configs"

__all__ = ["cpu_model", "main", "make_volumes", "run_setting"]


def cpu_model() -> str:
    """``lscpu``'s ``Model name`` (``/proc/cpuinfo`` where ``lscpu`` is missing)."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def make_volumes(out: Path, n: int, dataset_dir: Path | None, seed: int = 0) -> tuple[list[Path], str]:
    """``n`` NIfTI volumes in ``out``: the default data set's subjects if there, else synthetic ones.

    Args:
        out: Folder for the volumes.
        n: Number of volumes (``>= 1``).
        dataset_dir: The default data set (``data/default``); used when it holds ``n`` subjects.
        seed: Seed of the synthetic subjects.

    Returns:
        The volume paths and where they come from.

    Raises:
        ValueError: If ``n < 1``.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n!r}")
    import nibabel as nib

    out.mkdir(parents=True, exist_ok=True)
    existing = sorted(Path(dataset_dir).glob("subjects/sub-*/image.nii.gz")) if dataset_dir else []
    paths = []
    if len(existing) >= n:
        for src in existing[:n]:
            dst = out / f"{src.parent.name}.nii.gz"
            dst.write_bytes(src.read_bytes())
            paths.append(dst)
        return paths, f"the first {n} subjects of {dataset_dir}"
    from medmamba.data.synthetic import load_mni_template, make_subject

    template = load_mni_template(resolution=2)
    for i in range(n):
        subject = make_subject(template, np.random.default_rng(np.random.SeedSequence([seed, i])))
        path = out / f"sub-{i:03d}.nii.gz"
        nib.save(nib.Nifti1Image(subject.image.astype(np.float32), template.affine), path)
        paths.append(path)
    return paths, f"{n} synthetic subjects (medmamba.data.synthetic, seed {seed})"


def _random_checkpoint(bundle_root: Path) -> Path:
    """The bundle's MobileMamba-T2 segmenter, randomly initialised, saved where inference.json looks."""
    from medmamba.networks import MobileMambaSeg

    torch.manual_seed(0)
    net = MobileMambaSeg("t2", spatial_dims=2, in_channels=3, out_channels=4)
    path = bundle_root / "models" / "model.pt"
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(net.state_dict(), path)
    return path


def run_setting(
    processes: int, threads: int, inputs: Path, bundle_root: Path, out: Path, wait_policy: str | None = None
) -> dict[str, Any]:
    """Run the bundle's inference once with ``processes`` × ``threads``.

    ``wait_policy``: ``OMP_WAIT_POLICY`` of the run (``None``: OpenMP's default, the variable unset).

    Returns:
        ``{"wall_s", "batch_s", "n_ok", "n_failed"}``.

    Raises:
        RuntimeError: If the run fails.
    """
    args = [
        "--meta_file", str(CONFIGS / "metadata.json"), "--logging_file", str(CONFIGS / "logging.conf"),
        "--bundle_root", str(bundle_root), "--input_path", str(inputs), "--output_dir", str(out),
        "--num_threads", str(threads), "--inferer#inferer#progress", "false",
    ]
    if processes == 1:
        cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", str(CONFIGS / "inference.json"), *args]
    else:
        configs = str([str(CONFIGS / "inference.json"), str(CONFIGS / "multi_gpu_inference.json")])
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes),
               "-m", "monai.bundle", "run", "--config_file", configs, *args]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONWARNINGS": "ignore"}
    env.pop("OMP_WAIT_POLICY", None)
    if wait_policy is not None:
        env["OMP_WAIT_POLICY"] = wait_policy
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    log = proc.stdout + proc.stderr
    if proc.returncode != 0:
        raise RuntimeError(f"{processes} x {threads} run failed (rc {proc.returncode}):\n{log[-3000:]}")
    found = re.findall(r"segmentation: (\d+) ok, (\d+) failed \(([\d.]+) s\)", log)
    if not found:
        raise RuntimeError(f"no 'segmentation: … ok' line in the log of the {processes} x {threads} run:\n{log[-3000:]}")
    n_ok, n_failed, seconds = found[0]
    return {"wall_s": wall, "batch_s": float(seconds), "n_ok": int(n_ok), "n_failed": int(n_failed)}


def _masks_equal(a: Path, b: Path) -> tuple[int, float]:
    """Cases whose masks are identical, and the fraction of equal voxels over all cases."""
    import nibabel as nib

    same, equal, total = 0, 0, 0
    for ma in sorted(a.glob("*/*_seg.nii.gz")):
        x = np.asarray(nib.load(ma).dataobj)
        y = np.asarray(nib.load(b / ma.relative_to(a)).dataobj)
        same += int(np.array_equal(x, y))
        equal += int((x == y).sum())
        total += x.size
    return same, equal / max(total, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--volumes", type=int, default=8, help="number of volumes")
    parser.add_argument("--threads", type=int, default=2, help="threads of the one-process run (the cores used)")
    parser.add_argument("--processes", type=int, default=2, help="processes of the distributed run (threads/processes each)")
    parser.add_argument("--repeats", type=int, default=2, help="rounds (each runs both settings)")
    parser.add_argument("--dataset-dir", type=Path, default=None,
                        help="use this data set's subjects (e.g. data/default) instead of synthetic volumes")
    parser.add_argument("--work-dir", type=Path, default=None, help="keep volumes and outputs here (default: a temp folder)")
    parser.add_argument("--json", type=Path, default=None, help="also write the results as JSON")
    args = parser.parse_args()
    if args.threads % args.processes:
        raise SystemExit(f"--threads {args.threads} must be a multiple of --processes {args.processes}")
    per_rank = args.threads // args.processes
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work_dir or Path(tmp)
        inputs, source = make_volumes(work / "inputs", args.volumes, args.dataset_dir)
        shape = tuple(int(s) for s in __import__("nibabel").load(inputs[0]).shape)
        _random_checkpoint(work / "bundle")
        settings: list[tuple[int, int, str | None]] = [(1, args.threads, None), (1, args.threads, "PASSIVE"),
                                                       (args.processes, per_rank, None)]
        results: dict[tuple[int, int, str | None], list[dict[str, Any]]] = {s: [] for s in settings}
        load_start = os.getloadavg()
        for r in range(args.repeats):
            for procs, threads, policy in settings:
                out = work / f"out_{procs}x{threads}_{policy or 'default'}"
                if out.exists():
                    import shutil

                    shutil.rmtree(out)
                res = run_setting(procs, threads, work / "inputs", work / "bundle", out, policy)
                res["load_1min"] = os.getloadavg()[0]
                results[(procs, threads, policy)].append(res)
                print(f"round {r + 1}: {procs} x {threads} ({policy or 'default wait policy'}): wall {res['wall_s']:.1f} s, "
                      f"batch {res['batch_s']:.1f} s, load {res['load_1min']:.2f}", flush=True)
        load_end = os.getloadavg()
        same, frac = _masks_equal(work / f"out_1x{args.threads}_default", work / f"out_{args.processes}x{per_rank}_default")

    n = args.volumes
    print()
    print(f"CPU: {cpu_model()} ({os.cpu_count()} logical CPUs, {len(os.sched_getaffinity(0))} usable), "
          f"torch {torch.__version__}, cpu capability {torch.backends.cpu.get_cpu_capability()}, Python {platform.python_version()}")
    print(f"{n} volumes {shape}: {source}; MobileMamba-T2 segmenter with random weights, "
          f"flip TTA as configured; {args.repeats} round(s), medians; load average {load_start[0]:.2f} at start, {load_end[0]:.2f} at end")
    print()
    print("| setting | processes × threads | end to end (s) | scans/min end to end | batch (s) | scans/min batch |")
    print("|---|---|---|---|---|---|")
    table = []
    for (procs, threads, policy), runs in results.items():
        wall = statistics.median(r["wall_s"] for r in runs)
        batch = statistics.median(r["batch_s"] for r in runs)
        label = f"one process, {'OMP_WAIT_POLICY=' + policy if policy else 'default OpenMP wait policy'}" if procs == 1 \
            else f"torchrun, {procs} processes"
        print(f"| {label} | {procs} × {threads} | {wall:.1f} | {60 * n / wall:.1f} | {batch:.1f} | {60 * n / batch:.1f} |")
        table.append({"processes": procs, "threads": threads, "wait_policy": policy, "wall_s": wall, "batch_s": batch, "runs": runs})
    multi = table[-1]
    for row in table[:-1]:
        print(f"{args.processes} processes vs one process ({row['wait_policy'] or 'default wait policy'}): "
              f"{row['batch_s'] / multi['batch_s']:.2f}x batch, {row['wall_s'] / multi['wall_s']:.2f}x end to end")
    print()
    print(f"masks identical in {same} of {n} cases; {100 * frac:.4f} % of voxels equal")
    if args.json:
        args.json.write_text(json.dumps({
            "cpu": cpu_model(), "cpu_capability": torch.backends.cpu.get_cpu_capability(), "volumes": n, "shape": shape,
            "load_start": load_start, "load_end": load_end, "results": table, "identical_cases": same, "equal_voxels": frac,
        }, indent=1))


if __name__ == "__main__":
    main()
