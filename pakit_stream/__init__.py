"""pakit-stream: learns, from content-free Kafka telemetry, how a block store should behave.

Where to start reading, following one event from Kafka to a served hint:

1. :mod:`pakit_stream.events` — the event contract, decoding, and why an event is refused.
2. :mod:`pakit_stream.pipeline` — one message in, learners updated, offsets tracked.
3. :mod:`pakit_stream.learners` — the online learners (peer bandit, codec cost model, gossip
   Q-function, MinHash LSH dedup, prefetch learner).
4. :mod:`pakit_stream.daemon` — the Faust agents, timers, rebalance handling, model
   replication and HTTP views around them.
5. :mod:`pakit_stream.serving` — the hints, with their fallbacks; :mod:`pakit_stream.specs`
   and :mod:`pakit_stream.canary` — the batch models, and how a new version is rolled out.

Beside them: :mod:`~pakit_stream.settings` (every setting), :mod:`~pakit_stream.metrics`
(every metric), :mod:`~pakit_stream.exceptions`, :mod:`~pakit_stream.telemetry` (the node side),
:mod:`~pakit_stream.broker` (the embedded broker) and :mod:`~pakit_stream.cli`.
"""

from pakit_stream.base_model import ModelConfig
from pakit_stream.exceptions import (BrokerError, ConfigError, DaemonError, DataError,
                                     InvalidEventError, ModelLoadError, PakitStreamError,
                                     PrivacyViolation, UsageError)
from pakit_stream.features import FeatureExtractor
from pakit_stream.learners import (CodecCostModel, DeduplicationOptimizer, NetworkOptimizer,
                                   PeerSelector, SuccessorTable)
from pakit_stream.pipeline import Pipeline
from pakit_stream.settings import Settings
from pakit_stream.telemetry import TelemetryCollector

__version__ = "0.1.0"

__all__ = [
    "BrokerError",
    "CodecCostModel",
    "ConfigError",
    "DaemonError",
    "DataError",
    "DeduplicationOptimizer",
    "FeatureExtractor",
    "InvalidEventError",
    "ModelConfig",
    "ModelLoadError",
    "NetworkOptimizer",
    "PakitStreamError",
    "PeerSelector",
    "Pipeline",
    "PrivacyViolation",
    "Settings",
    "SuccessorTable",
    "TelemetryCollector",
    "UsageError",
    "__version__",
]
