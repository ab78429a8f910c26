"""The models, under the names the training guide imports them by.

``from pakit_stream.models import PeerSelector`` is the guide's ``from pakit.ml.models import
PeerSelector``. The online learners live in :mod:`pakit_stream.learners`.
"""

from pakit_stream.learners import DeduplicationOptimizer, NetworkOptimizer, PeerSelector

__all__ = ["DeduplicationOptimizer", "NetworkOptimizer", "PeerSelector"]
