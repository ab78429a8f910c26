"""Online learners, updated per event: peers (bandit), codec (cost tables and experts),
network (Q-learning), dedup (LSH), successors (Markov prefetch table)."""

from pakit_stream.learners.codec import CodecCostModel
from pakit_stream.learners.dedup import DeduplicationOptimizer
from pakit_stream.learners.network import NetworkOptimizer
from pakit_stream.learners.peers import PeerChoice, PeerSelector
from pakit_stream.learners.successors import SuccessorTable

__all__ = ["CodecCostModel", "DeduplicationOptimizer", "NetworkOptimizer", "PeerChoice",
           "PeerSelector", "SuccessorTable"]
