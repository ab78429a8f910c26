"""Events → features: the numbers learners see.

Features describe a block or a fetch *before* the decision they inform, so outcomes never leak
into inputs: the codec a node chose, the ratio it achieved and the measured ``codec_results``
are labels for the codec predictor, never its features.

>>> fx = FeatureExtractor()
>>> round(fx.extract_block_features("ab" * 32, 65536, 3, compression_ratio=0.5)["size_log2"], 3)
16.0
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from pakit_stream.events.schema import Event
from pakit_stream.exceptions import InvalidEventError

__all__ = ["FeatureExtractor", "codec_features"]

def _get(event: Any, name: str, default=None):
    if isinstance(event, Mapping):
        return event.get(name, default)
    return getattr(event, name, default)


def codec_features(block_size: int, block_depth: int = 0, entropy: float | None = None,
                   parent_count: int | None = None, probe_ratio: float | None = None
                   ) -> dict[str, float]:
    """The codec model's inputs: what a node knows about a block before compressing it."""
    return {
        "size_log2": math.log2(block_size + 1),
        "depth": float(block_depth),
        "parent_count": float(parent_count or 0),
        "entropy": float(entropy) if entropy is not None else 0.0,
        "entropy_known": 1.0 if entropy is not None else 0.0,
        "probe_ratio": float(probe_ratio) if probe_ratio is not None else 1.0,
        "probe_known": 1.0 if probe_ratio is not None else 0.0,
        "access_count_log2": 0.0,
    }


class FeatureExtractor:
    """Feature dicts for each event family (River style: ``{name: float}``)."""

    def extract_block_features(self, block_hash: str, block_size: int, block_depth: int,
                               compression_ratio: float = 1.0, access_count: int = 0,
                               entropy: float | None = None, parent_count: int | None = None
                               ) -> dict[str, float]:
        """Features of a stored block. ``compression_ratio`` describes how the block *did*
        compress; it is kept for the guide's analyses and is no input of the codec predictor."""
        x = codec_features(block_size, block_depth, entropy, parent_count)
        x["compression_ratio"] = float(compression_ratio)
        x["access_count_log2"] = math.log2(access_count + 1)
        return x

    def extract_access_pattern_features(self, block_hash: str,
                                        access_history: Sequence[Any]) -> dict[str, float]:
        """How a block has been read: count, hit ratio, latency, spacing between reads."""
        mine = [e for e in access_history if _get(e, "block_hash") == block_hash]
        times = sorted(float(_get(e, "ts", 0.0)) for e in mine)
        gaps = [b - a for a, b in zip(times, times[1:])]
        n = len(mine)
        return {
            "access_count": float(n),
            "hit_ratio": sum(bool(_get(e, "cache_hit", False)) for e in mine) / n if n else 0.0,
            "mean_latency_ms": sum(float(_get(e, "latency_ms", 0.0)) for e in mine) / n if n else 0.0,
            "mean_interarrival_s": sum(gaps) / len(gaps) if gaps else 0.0,
            "last_access_ts": times[-1] if times else 0.0,
            "share_of_history": n / len(access_history) if access_history else 0.0,
        }

    def extract_peer_features(self, event: Any) -> dict[str, float]:
        """Context of a fetch, as the peer bandit sees it."""
        x = {k: float(v) for k, v in (_get(event, "context") or {}).items()}
        x["block_size_log"] = math.log10(int(_get(event, "block_size", 0)) + 1) / 8
        x["n_candidates"] = float(len(_get(event, "candidates") or ()))
        return x

    def extract_gossip_features(self, event: Any) -> dict[str, float]:
        """The network a gossip round ran in (its fanout/TTL are the action, not features)."""
        return {
            "network_size_log2": math.log2(int(_get(event, "network_size", 1))),
            "avg_latency_ms": float(_get(event, "avg_latency_ms", 0.0)),
            "message_loss_rate": float(_get(event, "message_loss_rate", 0.0)),
        }

    def extract_features(self, event: Any) -> dict[str, float]:
        """Features of any event, by its ``event_type`` (guide spellings accepted)."""
        kind = _event_type(event)
        if kind == "block_stored":
            x = codec_features(int(_get(event, "block_size", 0)), int(_get(event, "block_depth", 0)),
                               _get(event, "entropy"), _get(event, "parent_count"),
                               _get(event, "probe_ratio"))
            x["access_count_log2"] = math.log2(int(_get(event, "access_count", 0) or 0) + 1)
            return x
        if kind == "block_accessed":
            return {"cache_hit": float(bool(_get(event, "cache_hit"))),
                    "latency_ms": float(_get(event, "latency_ms", 0.0))}
        if kind == "peer_fetch":
            return self.extract_peer_features(event)
        if kind == "gossip_round":
            return self.extract_gossip_features(event)
        if kind == "block_fingerprint":
            return {}
        raise InvalidEventError(f"unknown event_type {kind!r}")


def _event_type(event: Any) -> str:
    if isinstance(event, Event):
        return type(event).__struct_config__.tag
    return str(_get(event, "event_type", "")).lower()
