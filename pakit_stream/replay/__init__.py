"""Real workloads as telemetry: files, access traces and RTT matrices nobody on the team wrote.

* :mod:`~pakit_stream.replay.blocks`: a directory of files, cut by content-defined chunking
  (FastCDC), each block really compressed with every codec, sampled and fingerprinted.
* :mod:`~pakit_stream.replay.traces`: block access traces (libCacheSim oracleGeneral, one id
  per line, CSV, uint32 in either byte order) replayed through an LRU cache.
* :mod:`~pakit_stream.replay.latency`: time-sliced RTT matrices between real hosts, and a peer
  simulator whose fetch latencies come from the matrix at the current slice.
* :mod:`~pakit_stream.replay.gossip`: push and push-pull gossip with loss over such a matrix,
  payload and control messages counted apart.

Each yields plain event dicts of the contract (``docs/events.md``), so the same stream can be
published to Kafka (``pakit-stream replay``) or fed to the learners directly (``pakit-stream
evaluate``).
"""

from pakit_stream.replay.blocks import chunk_tree, stored_events
from pakit_stream.replay.gossip import GossipReplay, broadcast
from pakit_stream.replay.latency import PeerReplay, RttMatrix
from pakit_stream.replay.traces import (TRACE_FORMATS, access_events, read_requests, read_trace,
                                        trace_block_hash)

__all__ = ["chunk_tree", "stored_events", "read_trace", "read_requests", "access_events",
           "trace_block_hash", "TRACE_FORMATS", "RttMatrix", "PeerReplay", "broadcast",
           "GossipReplay"]
