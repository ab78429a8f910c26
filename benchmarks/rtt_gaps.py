"""How much of fetch failure a peer learner could avoid on an RTT set: the share of host pairs
not measured in a slice (a fetch there fails), and how often such a gap persists into the
next slice (what makes it learnable), against the random loss every fetch has.

    python benchmarks/rtt_gaps.py ../shared/data/latency/seattle_rtt_99x99x688.tar.xz --unit s
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from pakit_stream.replay.latency import RttMatrix

HERE = Path(__file__).resolve().parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("rtt", type=Path, help="directory or tar of NAME_t matrices")
    ap.add_argument("--unit", choices=["s", "ms"], required=True)
    ap.add_argument("--max-slices", type=int, default=200)
    ap.add_argument("--out", type=Path, default=HERE / "results" / "rtt_gaps.json")
    args = ap.parse_args()
    m = RttMatrix.load(args.rtt, args.unit, max_slices=args.max_slices)
    gap = np.isnan(m.ms)
    idx = np.arange(m.hosts)
    gap[:, idx, idx] = False  # the diagonal is no pair
    pairs = m.hosts * (m.hosts - 1)
    now, later = gap[:-1], gap[1:]
    result = {"data": str(args.rtt), "slices": m.slices, "hosts": m.hosts,
              "gap_share": float(gap.sum() / (pairs * m.slices)),
              "gap_persists": float((now & later).sum() / max(now.sum(), 1)),
              "gap_appears": float((~now & later).sum() / max((~now).sum() - m.hosts * len(now), 1))}
    print(json.dumps(result, indent=2))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
