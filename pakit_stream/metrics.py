"""Every Prometheus metric pakit-stream exports, declared in one place on a given registry.

Names are ``pakit_stream_*`` in base units; labels are bounded sets (topic, outcome, learner,
hint), never block hashes or node ids.

>>> import time

from prometheus_client import CollectorRegistry
>>> m = Metrics(CollectorRegistry())
>>> m.events.labels(topic="pakit.access", outcome="ok").inc(3)
>>> m.registry.get_sample_value("pakit_stream_events_total", {"topic": "pakit.access", "outcome": "ok"})
3.0
"""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info

__all__ = ["Metrics"]

_FAST = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)


class Metrics:
    """The daemon's metrics; ``registry`` defaults to a fresh one (tests start empty)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = r = registry if registry is not None else CollectorRegistry()
        ns = "pakit_stream"
        self.events = Counter("events", "Events consumed, by topic and outcome.",
                              ["topic", "outcome"], namespace=ns, registry=r)
        self.messages = Counter("messages", "Kafka messages consumed, by topic.", ["topic"],
                                namespace=ns, registry=r)
        self.duplicates = Counter("duplicate_messages", "Messages skipped because the restored "
                                  "checkpoint already reflects them.", ["topic"],
                                  namespace=ns, registry=r)
        self.log_resets = Counter("log_resets", "Partitions read again from offset 0 because "
                                  "their log was recreated under the same name.", ["topic"],
                                  namespace=ns, registry=r)
        self.dlq = Counter("dlq_messages", "Messages written to the dead-letter topic, by kind.",
                           ["kind"], namespace=ns, registry=r)
        self.dlq_failures = Counter("dlq_failures", "Refused messages that could not be "
                                    "written to the dead-letter topic.", namespace=ns, registry=r)
        self.processing = Histogram("message_processing_seconds", "Time to decode and learn "
                                    "from one Kafka message (an envelope or one event).",
                                    ["topic"], namespace=ns, registry=r, buckets=_FAST)
        self.updates = Counter("learner_updates", "Learner updates, by learner.", ["learner"],
                               namespace=ns, registry=r)
        self.bandit_reward = Gauge("bandit_replay_reward", "Mean reward of peer fetches where "
                                   "the bandit, asked before learning, picked the peer the node "
                                   "used (replay estimate).", namespace=ns, registry=r)
        self.bandit_logged_reward = Gauge("bandit_logged_reward", "Mean reward of all peer "
                                          "fetches as the nodes chose them.", namespace=ns,
                                          registry=r)
        self.bandit_peers = Gauge("bandit_peers", "Peers the bandit tracks.", namespace=ns,
                                  registry=r)
        self.gossip_reward = Gauge("gossip_reward", "Mean reward of observed gossip rounds.",
                                   namespace=ns, registry=r)
        self.gossip_agreement = Gauge("gossip_agreement_ratio", "Share of gossip rounds whose "
                                      "setting (mode, fanout, TTL, pull rounds) matched the "
                                      "learner's greedy choice.",
                                      namespace=ns, registry=r)
        self.lsh_entries = Gauge("lsh_entries", "Blocks in the MinHash LSH index.",
                                 namespace=ns, registry=r)
        self.lsh_query = Histogram("lsh_query_seconds", "Time of one LSH similarity query.",
                                   namespace=ns, registry=r, buckets=_FAST)
        self.prefetch_hit = Gauge("prefetch_hit_ratio_at_5", "Share of reads among the prefetch "
                                  "learner's top-5 proposals, made before each read.",
                                  namespace=ns, registry=r)
        self.prefetch_holdout = Gauge("prefetch_holdout_hit_ratio_at_5", "Hit ratio at 5 of the "
                                      "prefetch learner with the serving step net on its gate's "
                                      "held-out reads.",
                                      namespace=ns, registry=r)
        self.cache_hit = Gauge("node_cache_hit_ratio", "Cache hit ratio reported by nodes.",
                               namespace=ns, registry=r)
        self.checkpoints = Counter("checkpoints", "Checkpoint attempts, by outcome (ok, unchanged, "
                                   "skipped, failed; refused: one not restored at start).",
                                   ["outcome"],
                                   namespace=ns, registry=r)
        self.checkpoint_seconds = Histogram("checkpoint_seconds", "Time to write a checkpoint.",
                                            namespace=ns, registry=r)
        self.loop_lag = Histogram(
            "event_loop_lag_seconds", "How late the event loop ran a timer that was due (every "
            "10 ms): the wait every hint has on top of its own work.", namespace=ns, registry=r,
            buckets=(1e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 2.5e-2, 5e-2, 0.1, 0.25, 1.0))
        self.gc_pause = Histogram(
            "gc_pause_seconds", "Time each collection of Python's cyclic garbage collector held "
            "the process, by generation.", ["generation"], namespace=ns, registry=r,
            buckets=(1e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 2.5e-2, 5e-2, 0.1, 0.25, 1.0))
        self.hint_replica_refreshes = Counter(
            "hint_replica_refreshes", "Hint replica refreshes: a replica forked that started "
            "serving (ok); a fork that failed, or a replica that exited with an error (failed); "
            "a refresh skipped because too many replicas were still draining (skipped).",
            ["outcome"], namespace=ns, registry=r)
        self.hint_replica_age = Gauge(
            "hint_replica_age_seconds", "Age of the learner image the serving hint replica "
            "answers from (NaN: none serving).", namespace=ns, registry=r)
        self.hint_replica_hold = Histogram(
            "hint_replica_hold_seconds", "Time forking a hint replica held the event loop.",
            namespace=ns, registry=r, buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                                               0.25, 1.0))
        self.hints_routed = Counter(
            "hints_routed_total", "Hints about a node another worker owns: forwarded to it and "
            "answered, or answered here because the owner did not answer in time.",
            ["outcome"], namespace=ns, registry=r)
        self.checkpoint_hold_seconds = Histogram(
            "checkpoint_hold_seconds", "Time a checkpoint held the event loop (the fork of the "
            "snapshot writer, or the whole snapshot where there is no fork).", namespace=ns,
            registry=r, buckets=(1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 2.5e-2, 0.1, 1.0))
        self.checkpoint_bytes = Gauge("checkpoint_bytes", "Size of the last checkpoint.",
                                      namespace=ns, registry=r)
        self.checkpoint_timestamp = Gauge("checkpoint_timestamp_seconds", "Unix time of the last "
                                          "successful checkpoint (age: time() - this).",
                                          namespace=ns, registry=r)
        self.checkpoint_age = Gauge("checkpoint_age_seconds", "Seconds since the last successful "
                                    "checkpoint (since start, before the first).", namespace=ns,
                                    registry=r)
        started = time.time()
        self.checkpoint_age.set_function(
            lambda: time.time() - (self.checkpoint_timestamp._value.get() or started))
        self.lag = Gauge("consumer_lag_messages", "Messages behind the fetch high-watermark.",
                         ["topic"], namespace=ns, registry=r)
        self.retrains = Counter("retrains", "Retraining runs, by model and outcome "
                                "(accepted, rejected, failed).", ["model", "outcome"],
                                namespace=ns, registry=r)
        self.retrain_seconds = Histogram("retrain_seconds", "Duration of a retraining run.",
                                         ["model"], namespace=ns, registry=r,
                                         buckets=(1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800))
        self.retrain_samples = Gauge("retrain_samples", "Training samples of the last run.",
                                     ["model"], namespace=ns, registry=r)
        self.serving = Info("model_serving", "Version of each batch model being served.",
                            ["model"], namespace=ns, registry=r)
        self.canary = Info("model_canary", "Version of each batch model serving a share of the "
                           "nodes as a canary (empty: none).", ["model"], namespace=ns, registry=r)
        self.canary_quality = Gauge(
            "canary_quality", "Online quality of each arm of a running canary on the same events "
            "(codec: cheapest cost over the cost of the net's pick; prefetch: hit ratio at 5).",
            ["model", "arm"], namespace=ns, registry=r)
        self.canary_samples = Gauge("canary_samples", "Paired events a running canary was "
                                    "compared on.", ["model"], namespace=ns, registry=r)
        self.canary_decisions = Counter("canary_decisions", "Canaries ended, by model and "
                                        "outcome (promote, rollback).", ["model", "outcome"],
                                        namespace=ns, registry=r)
        self.canary_hints = Counter("canary_hints", "Hints answered by each arm while a canary "
                                    "runs (canary: the nodes in its share).", ["model", "arm"],
                                    namespace=ns, registry=r)
        self.codec_efficiency = Gauge(
            "codec_online_efficiency", "Cost of the cheapest codec over the cost of the codec "
            "chosen (choosing charged), over stored blocks, each chosen before it was learned.",
            namespace=ns, registry=r)
        self.codec_drift = Counter("codec_drift_detections", "Drifts ADWIN found in the codec "
                                   "chooser's online excess cost.", namespace=ns, registry=r)
        self.hints = Counter("hint_requests", "Hint requests, by hint and source "
                             "(learned, fallback, explore, error).", ["hint", "source"],
                             namespace=ns, registry=r)
        self.hint_latency = Histogram("hint_latency_seconds", "Time to answer a hint.", ["hint"],
                                      namespace=ns, registry=r, buckets=_FAST)

    def export_canary(self, name: str, canary) -> None:
        """Both arms of a running canary, for ``/metrics``."""
        self.canary_quality.labels(model=name, arm="serving").set(canary.serving_quality.get())
        self.canary_quality.labels(model=name, arm="canary").set(canary.canary_quality.get())
        self.canary_samples.labels(model=name).set(canary.samples)

    def watch_gc(self) -> None:
        """Time every garbage collection into :attr:`gc_pause` (a long one holds the event
        loop, and every hint waiting on it)."""
        import gc

        started = [0.0]
        by_generation = [self.gc_pause.labels(generation=str(g)) for g in range(3)]

        def timed(phase: str, info: dict) -> None:
            if phase == "start":
                started[0] = time.perf_counter()
            else:
                by_generation[info["generation"]].observe(time.perf_counter() - started[0])

        gc.callbacks.append(timed)
