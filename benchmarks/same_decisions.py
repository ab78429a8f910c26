"""Whether a rewrite of the online learners changed what they decide: the learners of this
tree against the same modules at an earlier commit, fed the same streams side by side.

    python benchmarks/same_decisions.py --rev 53fd258 --shared ../shared/data

For each stream both learners learn every event and are asked the same questions: the
codec chooser and the prefetcher after every event (every second or third on the longer
streams), the gossip learner at four points of each stream. Every answer must be equal (floats
to 1e-9 relative), and so must the state a node can see (the prefetcher's calibration, the
codec policy). A learner
pickled by the old code is also loaded into the new one midway. The prefetch streams are
synthetic (many nodes, positions or none, tight bounds, a stand-in step net) and, with
``--shared``, the first reads of real block traces. Prints the questions asked per stream,
stops at the first difference, and writes ``benchmarks/results/same_decisions.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import io
import json
import math
import pickle
import random
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def old_module(rev: str, name: str, where: Path, uses: tuple[str, ...] = ()):
    """``pakit_stream/learners/<name>.py`` as it was at ``rev``, imported as ``old_<name>``;
    the learner modules it ``uses`` are those of ``rev`` too."""
    source = subprocess.run(["git", "show", f"{rev}:pakit_stream/learners/{name}.py"], cwd=ROOT,
                            check=True, capture_output=True, text=True).stdout
    for used in uses:
        old_module(rev, used, where)
        source = source.replace(f"from pakit_stream.learners.{used} import",
                                f"from old_{used} import")
    path = where / f"old_{name}.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location(f"old_{name}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def reload_as_new(learner, old, new):
    """``learner`` (of the old module) pickled, and unpickled with the new module's classes."""

    class Unpickler(pickle.Unpickler):
        def find_class(self, module, name):
            return super().find_class(new.__name__ if module == old.__name__ else module, name)

    return Unpickler(io.BytesIO(pickle.dumps(learner))).load()


def same(a, b, what, abs_tol: float = 1e-12) -> None:
    if not _close(a, b, abs_tol):
        raise SystemExit(f"DIFFERENT {what}:\n  old {a!r}\n  new {b!r}")


def _close(a, b, abs_tol: float) -> bool:
    if dataclasses.is_dataclass(a) and dataclasses.is_dataclass(b):  # of the old and new module
        a, b = dataclasses.astuple(a), dataclasses.astuple(b)
    if isinstance(a, float) or isinstance(b, float):
        return (a is None) == (b is None) and (a is None or math.isclose(a, b, rel_tol=1e-9,
                                                                         abs_tol=abs_tol))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_close(a[k], b[k], abs_tol) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_close(x, y, abs_tol) for x, y in zip(a, b))
    return a == b


# -- prefetch -----------------------------------------------------------------------------------
class StepNet:
    """A stand-in step net: deterministic scores over a few steps."""

    vocab = ["<other>", "1", "2", "-1", "3", "8"]

    def scores(self, steps):
        h = sum((i + 1) * int(s) for i, s in enumerate(steps[-3:])) % 997
        return np.array([(h * (i + 3)) % 11 / 3.0 for i in range(len(self.vocab))])


def reads_synthetic(n: int, seed: int, positions: bool = True) -> list[tuple]:
    rng = random.Random(seed)
    nodes = [f"node-{i}" for i in range(32)]
    where = {node: [f"{rng.getrandbits(64):016x}", 0] for node in nodes}
    pool = [f"{rng.getrandbits(64):016x}" for _ in range(3000)]
    out = []
    for _ in range(n):
        node = rng.choice(nodes)
        pos = where[node]
        if rng.random() < 0.05:  # another file, or a jump
            pos[:] = ([f"{rng.getrandbits(64):016x}", 0] if rng.random() < 0.5
                      else [pos[0], pos[1] + rng.randrange(2, 500)])
        pos[1] += rng.choice([1, 1, 1, 2, 3])
        if positions and rng.random() < 0.9:
            block = f"{zlib.crc32(f'{pos[0]}:{pos[1]}'.encode()):08x}"
            out.append((node, block, pos[0], pos[1], rng.choice([1, 1, 2])))
        else:  # a read without position: repeated hashes, for the successor table
            out.append((node, rng.choice(pool), None, None, 1))
    return out


def reads_trace(path: Path, limit: int) -> list[tuple]:
    from pakit_stream.replay.traces import read_requests

    ids, spans = read_requests(path, "lines", limit=limit)
    spans = [1] * len(ids) if spans is None else spans
    return [("node", str(int(b)), "trace", int(b), int(c)) for b, c in zip(ids, spans)]


def prefetch_stream(old, new, reads, params, every=1, net=False, reload_at=None) -> int:
    def answers(learner, node):
        return [[(p.block_hash, p.object_id, p.chunk_index, p.confidence, p.source)
                 for p in learner.propose(node, 5, cache)] for cache in (None, 50)]

    a, b = old.Prefetcher(**params), new.Prefetcher(**params)
    a.net = b.net = StepNet() if net else None
    asked = 0
    for i, read in enumerate(reads):
        if i == reload_at:
            b = reload_as_new(a, old, new)
            b.net = a.net
        a.observe(*read)
        b.observe(*read)
        if i % every == 0:
            same(answers(a, read[0]), answers(b, read[0]), f"proposals after read {i}")
            asked += 2
    same(a.calibration(), b.calibration(), "calibration by source")
    same({k: v for k, v in a._calibration.items() if v[1]},
         {k: v for k, v in b._calibration.items() if v[1]}, "calibration by bucket")
    return asked


def prefetch(old, new, shared: Path | None) -> dict[str, int]:
    tight = dict(max_nodes=5, max_streams=7, max_positions=50, successor_capacity=40,
                 max_scored_nodes=3, max_profiled_nodes=2)
    runs = {
        "synthetic": (reads_synthetic(30_000, 1), {}, {}),
        "no positions": (reads_synthetic(30_000, 2, positions=False), {}, {}),
        "tight bounds": (reads_synthetic(20_000, 3), tight, {}),
        "score one read in 4": (reads_synthetic(20_000, 4), {"score_every": 4}, {"every": 3}),
        "step net": (reads_synthetic(20_000, 5), {}, {"net": True}),
        "old pickle midway": (reads_synthetic(20_000, 6), {}, {"reload_at": 7_000}),
        "other prior and halflife": (reads_synthetic(20_000, 7),
                                     {"prior": 3.0, "halflife": 300.0}, {}),
    }
    if shared is not None:
        for name in ("multi1", "sprite", "cs"):
            path = shared / "traces" / "lirs" / f"{name}.trace.gz"
            if path.exists():
                runs[f"trace {name}"] = (reads_trace(path, 60_000),
                                         {"successor_capacity": 1_000_000}, {"every": 2})
    out = {}
    for name, (reads, params, how) in runs.items():
        out[name] = prefetch_stream(old, new, reads, params, **how)
        print(f"prefetch, {name}: {len(reads):,} reads, {out[name]:,} answers the same",
              flush=True)
    return out


# -- codec --------------------------------------------------------------------------------------
def blocks_synthetic(n: int, seed: int, odd: bool = False) -> list[tuple]:
    """Stored blocks with every codec measured (as ``benchmarks/learners.py`` makes them); with
    ``odd``, also blocks without probe, node or some codecs, and a codec that appears later."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        size = rng.choice([4096, 16384, 65536, 262144, rng.randrange(1, 1 << 20)])
        ratio = rng.choice([0.2, 0.4, 0.7, 1.0, rng.random()])
        menu = [("zstd-1", 0.05, 0.004), ("zstd-3", 0.03, 0.006), ("zstd-9", 0.0, 0.03),
                ("lz4", 0.15, 0.001), ("snappy", 0.17, 0.001), ("brotli-4", 0.01, 0.012)]
        if odd and i > n // 2:
            menu.append(("zstd-19", -0.01, 0.2))
        costs = {c: (int(size * min(1.0, ratio + extra + rng.gauss(0, 0.02))),
                     size * us * rng.uniform(0.8, 1.2))
                 for c, extra, us in menu if not odd or rng.random() > 0.1}
        costs["none"] = (size, 0.0)
        x = {"block_size": size, "node_id": f"node-{i % 20}", "probe_ratio": ratio}
        if odd and rng.random() < 0.2:
            del x["probe_ratio"]
        if odd and rng.random() < 0.1:
            del x["node_id"]
        out.append((x, costs))
    return out


def codec_stream(old, new, blocks, cpu: float, reload_at=None) -> int:
    a = old.CodecCostModel(cpu_bytes_per_us=cpu, max_nodes=12)
    b = new.CodecCostModel(cpu_bytes_per_us=cpu, max_nodes=12)
    asked = 0
    for i, (x, costs) in enumerate(blocks):
        if i == reload_at:
            b = reload_as_new(a, old, new)
        a.learn_one(x, costs)
        b.learn_one(x, costs)
        for size, probe in ((x["block_size"], x.get("probe_ratio")), (65536, None), (5000, 0.3)):
            same(a.choose(size, x.get("node_id"), probe), b.choose(size, x.get("node_id"), probe),
                 f"codec for {size} after block {i}")
        asked += 3
        if i % 1000 == 999:
            same(a.policy().as_dict(), b.policy().as_dict(), f"policy after block {i}")
            asked += 1
    return asked


def codec(old, new) -> dict[str, int]:
    out = {}
    for cpu in (1.0, 5.0, 20.0, 100.0):
        for name, blocks, how in (("every codec", blocks_synthetic(8_000, 1), {}),
                                  ("missing inputs, a new codec, old pickle midway",
                                   blocks_synthetic(8_000, 2, odd=True), {"reload_at": 3_000})):
            key = f"{name}, {cpu:g} B/us"
            out[key] = codec_stream(old, new, blocks, cpu, **how)
            print(f"codec, {key}: {len(blocks):,} blocks, {out[key]:,} answers the same",
                  flush=True)
    return out


# -- gossip -------------------------------------------------------------------------------------
def rounds_synthetic(n: int, seed: int, uniform: bool) -> list[tuple]:
    from pakit_stream.learners.network import ACTIONS
    from pakit_stream.replay.gossip import broadcast

    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        if uniform:
            size, loss = int(rng.integers(20, 5001)), float(rng.uniform(0.0, 0.2))
        else:
            size, loss = int(rng.choice([20, 50, 200, 1000, 5000])), float(
                rng.choice([0.0, 0.02, 0.1, 0.2]))
        latency = float(rng.choice([10.0, 50.0, 400.0, 2000.0])) if uniform else 50.0
        mode, fanout, ttl, pull = ACTIONS[int(rng.integers(len(ACTIONS)))]
        s = broadcast(size, fanout, ttl, loss, rng, mode=mode, pull=pull)
        out.append((size, latency, loss, fanout, ttl, s.coverage, s.payload, mode, pull,
                    s.control))
    return out


def gossip_stream(old, new, rounds, checks=(100, 1_000, 3_000, 6_000), reload_at=None) -> int:
    """Rewards of every round; at each check, every hint (fresh and kept) and what the learner
    expects of every action in a grid of networks. Expectations near 0 (a log10 shortfall)
    agree to 1e-9 absolute: River's own rounding moves them by up to 5e-11."""
    a, b = old.NetworkOptimizer(epsilon=0.0), new.NetworkOptimizer(epsilon=0.0)
    asked = 0
    for i, r in enumerate(rounds, 1):
        if i == reload_at:
            b = reload_as_new(a, old, new)
        same(a.learn_round(*r), b.learn_round(*r), f"reward of round {i}")
        if i not in checks:
            continue
        for n in (20, 37, 200, 1000, 2500, 5000):
            for latency in (50.0, 400.0):
                for loss in (0.0, 0.013, 0.1):
                    ask = {"network_size": n, "avg_latency_ms": latency,
                           "message_loss_rate": loss}
                    for fresh in (True, False):
                        if fresh:
                            a._answers.clear()
                            b._answers.clear()
                        same(a.predict(ask), b.predict(ask), f"hint {ask} after {i} rounds",
                             abs_tol=1e-3)  # the expected figures are rounded
                    for action in a.actions[::7]:
                        same(a.expect(n, latency, loss, action), b.expect(n, latency, loss, action),
                             f"expectation of {action} in {ask} after {i} rounds", abs_tol=1e-9)
                    asked += 2 + len(a.actions[::7])
    return asked


def gossip(old, new) -> dict[str, int]:
    runs = {"sizes and losses of a few networks": (rounds_synthetic(6_000, 0, False), {}),
            "any size, loss and latency": (rounds_synthetic(6_000, 1, True), {}),
            "old pickle midway": (rounds_synthetic(3_000, 2, True),
                                  {"reload_at": 1_500, "checks": (1_000, 2_000, 3_000)})}
    out = {}
    for name, (rounds, how) in runs.items():
        out[name] = gossip_stream(old, new, rounds, **how)
        print(f"gossip, {name}: {len(rounds):,} rounds, {out[name]:,} answers the same",
              flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rev", required=True, help="the commit whose learners are compared")
    ap.add_argument("--shared", type=Path, help="the shared data folder, for real traces")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "same_decisions.json")
    args = ap.parse_args()
    started = time.time()
    from pakit_stream.learners import codec as new_codec, network, prefetch as new_prefetch

    with tempfile.TemporaryDirectory() as tmp:
        checked = {"codec": codec(old_module(args.rev, "codec", Path(tmp)), new_codec),
                   "gossip": gossip(old_module(args.rev, "network", Path(tmp)), network),
                   "prefetch": prefetch(old_module(args.rev, "prefetch", Path(tmp),
                                                   uses=("successors", "reuse")),
                                        new_prefetch, args.shared)}
    print(f"every answer the same ({time.time() - started:.0f} s)")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"benchmark": "same_decisions", "rev": args.rev,
                                    "answers_compared": checked}, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
