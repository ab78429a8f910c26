"""The models, under the names the training guide imports them by.

``from pakit_stream.models import PeerSelector`` is the guide's ``from pakit.ml.models import
PeerSelector``. The online learners live in :mod:`pakit_stream.learners`; the torch models in
:mod:`pakit_stream.batch`, imported only when asked for, so that the daemon's event loop never
loads torch.
"""

from pakit_stream.learners import DeduplicationOptimizer, NetworkOptimizer, PeerSelector

__all__ = ["CompressionPredictor", "DeduplicationOptimizer", "NetworkOptimizer", "PeerSelector",
           "PrefetchEngine"]


def __getattr__(name: str):
    if name == "CompressionPredictor":
        from pakit_stream.batch.compression import CompressionPredictor

        return CompressionPredictor
    if name == "PrefetchEngine":
        from pakit_stream.batch.prefetch import PrefetchEngine

        return PrefetchEngine
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
