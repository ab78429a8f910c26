"""The node side of telemetry, and the guide's data-collection surface.

``from pakit_stream.telemetry import TelemetryCollector, FeatureExtractor, TrainingDataset``
works as the training guide shows (with ``pakit.ml`` replaced by ``pakit_stream``).
"""

from pakit_stream.features import FeatureExtractor
from pakit_stream.telemetry.collector import TelemetryCollector
from pakit_stream.training.dataset import TrainingDataset

__all__ = ["FeatureExtractor", "TelemetryCollector", "TrainingDataset"]
