"""Retrain both batch nets at realistic sizes and time them on the CPU and, if present, CUDA.

* codec MLP: ``--codec-samples`` samples (default 1M) whose features follow the distribution of
  real blocks of this machine's Python installation (size, depth, entropy), labels by a rule
  with noise;
* prefetch step net: the steps between the first ``--accesses`` reads (default 5M) of a real
  block trace (``--trace``, e.g. the CloudPhysics w106 trace: little-endian uint32 block ids,
  xz), or of a Zipf stream when no trace is given; vocabulary 512 steps, the daemon's default.

Each net runs ``--steps`` optimiser steps of ``--batch`` samples per device (one warm-up step
first), and the figures are samples/s and the time a full epoch would take at that rate. Writes
``benchmarks/results/gpu_retrain.json``.

    python benchmarks/gpu_retrain.py --trace ../shared/data/traces/cloudphysics_w106.trace.xz
"""

from __future__ import annotations

import argparse
import json
import lzma
import platform
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from pakit_stream.batch.compression import CompressionPredictor
from pakit_stream.batch.prefetch import _Net

HERE = Path(__file__).resolve().parent


def codec_data(n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    size_log2 = rng.normal(13.5, 2.0, n).clip(6, 24)
    entropy = rng.beta(5, 2, n) * 8
    depth = rng.integers(0, 12, n)
    x = np.stack([size_log2, depth, np.ones(n), entropy, np.ones(n), np.zeros(n)], 1)
    label = np.where(entropy > 7.2, 0, np.where(size_log2 > 16.6, 1, 2))  # none, zstd, lz4
    flip = rng.random(n) < 0.05
    label[flip] = rng.integers(0, 3, flip.sum())
    return torch.tensor(x, dtype=torch.float32), torch.tensor(label)


def trace_ids(path: Path | None, n: int, vocab: int, seed: int = 0) -> np.ndarray:
    """The trace's steps as the net's token ids (1 = most frequent step; 0 = outside the
    vocabulary), as the daemon trains it (:func:`pakit_stream.learners.prefetch.delta_sequences`)."""
    if path is not None:
        raw = lzma.open(path).read(4 * n)
        blocks = np.frombuffer(raw, dtype="<u4").astype(np.int64)
    else:
        blocks = np.random.default_rng(seed).zipf(1.1, n) % 1_000_000
    steps = np.diff(blocks)
    steps = steps[steps != 0]
    uniq, inverse, counts = np.unique(steps, return_inverse=True, return_counts=True)
    rank = np.empty_like(counts)
    rank[np.argsort(-counts, kind="stable")] = np.arange(len(counts))
    ids = rank[inverse] + 1
    ids[ids >= vocab] = 0  # outside the vocabulary
    return ids


def time_steps(net, make_batch, steps: int, device: torch.device, amp: bool) -> float:
    net.to(device).train()
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
    scaler = torch.amp.GradScaler("cuda", enabled=amp)
    loss_fn = nn.CrossEntropyLoss()

    def step():
        x, y = make_batch()
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=torch.float16, enabled=amp):
            loss = loss_fn(net(x), y)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        opt.zero_grad(set_to_none=True)

    step()  # warm-up (allocations, kernels)
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--codec-samples", type=int, default=1_000_000)
    ap.add_argument("--accesses", type=int, default=5_000_000)
    ap.add_argument("--trace", type=Path)
    ap.add_argument("--vocab", type=int, default=512)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--batch", type=int, default=1024)
    ap.add_argument("--out", type=Path, default=HERE / "results" / "gpu_retrain.json")
    args = ap.parse_args()

    x, y = codec_data(args.codec_samples)
    ids = trace_ids(args.trace, args.accesses, args.vocab)
    ctx = 8
    valid = np.nonzero(ids[ctx:] > 0)[0] + ctx  # predict only in-vocabulary next blocks
    ids_t = torch.tensor(ids)
    print(f"codec samples {len(y):,}; steps {len(ids):,} "
          f"({len(valid):,} in-vocabulary targets, vocab {args.vocab:,})", flush=True)
    gen = torch.Generator().manual_seed(0)

    def codec_batch():
        i = torch.randint(0, len(y), (args.batch,), generator=gen)
        return x[i], y[i]

    def prefetch_batch():
        t = torch.tensor(valid[torch.randint(0, len(valid), (args.batch,), generator=gen).numpy()])
        windows = torch.stack([ids_t[t - ctx + k] for k in range(ctx)], 1)
        return windows, ids_t[t]

    devices = [torch.device("cpu")]
    if torch.cuda.is_available():
        devices.append(torch.device("cuda"))
    results = {}
    for device in devices:
        amp = device.type == "cuda"
        torch.set_num_threads(max(1, torch.get_num_threads()))
        codec = CompressionPredictor()
        codec.feature_names = [f"f{i}" for i in range(x.shape[1])]
        codec.classes = ["none", "zstd", "lz4"]
        codec._build()
        gru = _Net(args.vocab, 64, 128, 0.1)
        row = {}
        for name, net, batch, n in (("codec_mlp", codec.net, codec_batch, len(y)),
                                    ("prefetch_gru", gru, prefetch_batch, len(valid))):
            seconds = time_steps(net, batch, args.steps, device, amp)
            rate = args.steps * args.batch / seconds
            row[name] = {"samples_per_s": rate, "epoch_seconds": n / rate, "steps": args.steps,
                         "batch": args.batch, "mixed_precision": amp}
            print(f"{device.type:5} {name:13} {rate:>12,.0f} samples/s   one epoch of {n:,} "
                  f"samples: {n / rate:,.1f} s", flush=True)
        results[device.type] = row
    if "cuda" in results:
        for name in ("codec_mlp", "prefetch_gru"):
            speedup = results["cuda"][name]["samples_per_s"] / results["cpu"][name]["samples_per_s"]
            results.setdefault("speedup", {})[name] = speedup
            print(f"cuda / cpu {name}: {speedup:.1f}x")
    else:
        print("no CUDA device here: CPU figures only")
    out = {"benchmark": "gpu_retrain", "torch": torch.__version__,
           "cuda_device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
           "cpu_threads": torch.get_num_threads(), "platform": platform.platform(),
           "trace": str(args.trace) if args.trace else None, "results": results}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
