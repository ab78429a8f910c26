"""Online learners, updated per event: peers (bandit), codec (cost tables and experts),
network (a River Q-function pooled across states), dedup (LSH), prefetch (runs, strides,
successors and the step net, each scored by how often it came true), successors (the Markov
table prefetch builds on)."""

from pakit_stream.learners.codec import CodecCostModel
from pakit_stream.learners.dedup import DeduplicationOptimizer
from pakit_stream.learners.network import NetworkOptimizer
from pakit_stream.learners.peers import PeerChoice, PeerSelector
from pakit_stream.learners.prefetch import Prefetcher
from pakit_stream.learners.successors import SuccessorTable

__all__ = ["CodecCostModel", "DeduplicationOptimizer", "NetworkOptimizer", "PeerChoice",
           "PeerSelector", "Prefetcher", "SuccessorTable"]
