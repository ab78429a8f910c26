"""Every learner on the shared real data, then the README's Results section regenerated.

    python benchmarks/evaluate_all.py --shared ../shared/data --out docs/results

Runs ``pakit-stream evaluate`` for each learner and data set below, three seeds each (25
minutes to an hour on two cores; run it on an otherwise idle machine: the codec figures are CPU
timings), writes ``OUT/<run>/results.json`` and ``report.md`` with plots, and rewrites the
section between the results markers of README.md (``pakit-stream results``). Every trace of
``traces/`` is its own run, and so is every CPU price of the codec evaluation. Near-duplicate
data beyond the shared corpora: successive releases of PyPI packages, downloaded with pip
into ``--near-duplicates`` (skipped with ``--no-download`` when the folder is empty).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
import zipfile
from pathlib import Path

from pakit_stream.evaluation import evaluate, readme_section, update_readme
from pakit_stream.evaluation.compression import PRICES

ROOT = Path(__file__).resolve().parent.parent
# successive releases: most files unchanged (exact duplicates), edited ones near-duplicates
RELEASES = ["certifi==2023.7.22", "certifi==2024.2.2", "certifi==2024.8.30", "certifi==2025.1.31",
            "idna==3.4", "idna==3.6", "idna==3.7", "idna==3.10",
            "requests==2.31.0", "requests==2.32.0", "requests==2.32.3",
            "urllib3==2.0.7", "urllib3==2.1.0", "urllib3==2.2.3",
            "packaging==23.2", "packaging==24.0", "packaging==24.2"]


def releases(folder: Path, download: bool) -> Path | None:
    """Unpacked wheels of successive releases: real near-duplicate files."""
    for spec in RELEASES if download else ():
        name, version = spec.split("==")
        if any(folder.glob(f"{name}-{version}-*")):
            continue
        wheels = folder / ".wheels"
        wheels.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", spec,
                        "-d", str(wheels)], check=True)
        for whl in wheels.glob("*.whl"):
            with zipfile.ZipFile(whl) as z:
                z.extractall(folder / whl.stem)
            whl.unlink()
    return folder if any(folder.glob("*-*/")) else None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shared", type=Path, default=ROOT.parent / "shared" / "data")
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "results")
    ap.add_argument("--near-duplicates", type=Path, default=ROOT / "benchmarks" / "results" / "releases")
    ap.add_argument("--no-download", action="store_true")
    ap.add_argument("--only", nargs="*", help="run names to (re)run; the rest are kept")
    args = ap.parse_args()
    d = args.shared
    rtt = d / "latency" / "seattle_rtt_99x99x688.tar.xz"
    traces = d / "traces"
    runs = {f"compression-cpu{lam:g}": ("compression", [d / "corpora"], {"cpu_bytes_per_us": lam})
            for lam in PRICES}
    for trace in sorted((traces / "lirs").glob("*.trace.gz")):
        runs[f"prefetch-lirs-{trace.name.split('.')[0]}"] = ("prefetch", [trace], {"fmt": "lines"})
    runs["prefetch-cloudphysics"] = ("prefetch", [traces / "cloudphysics_io.oracleGeneral.bin"],
                                     {"fmt": "oracle-general"})
    # (cloudphysics_io.csv is the same trace as the .bin: not run twice)
    runs["prefetch-w106"] = ("prefetch", [traces / "cloudphysics_w106.trace.xz"], {"fmt": "u32le"})
    runs["peers"] = ("peers", [rtt], {"unit": "s", "nodes": 16})
    runs["gossip"] = ("gossip", [rtt], {"unit": "s"})
    runs["dedup-corpora"] = ("dedup", [d / "corpora"], {})
    near = releases(args.near_duplicates, not args.no_download)
    if near is not None:
        runs["dedup-releases"] = ("dedup", [near], {})
    for name, (learner, paths, opts) in runs.items():
        if args.only and name not in args.only:
            continue
        started = time.time()
        paths = [Path(os.path.relpath(p)) for p in paths]  # reports name data as it was given
        doc = evaluate(learner, paths, args.out / name, **opts)
        v = doc["verdict"]
        print(f"{name}: {v['metric']} ours {v['ours']} vs {v['naive_baseline']} {v['naive']}, "
              f"best other {v['best_baseline']} {v['best']} (beats it: {v['beats_best_baseline']}"
              f", significant: {v.get('beats_best_significant')}) in "
              f"{time.time() - started:.0f}s", flush=True)
    files = [args.out / name / "results.json" for name in runs
             if (args.out / name / "results.json").exists()]
    update_readme(ROOT / "README.md", readme_section(files, ROOT))
    print(f"README Results section regenerated from {len(files)} results")


if __name__ == "__main__":
    main()
