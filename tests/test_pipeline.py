import pytest

from pakit_stream import persist
from pakit_stream.checkpoint import CheckpointStore
from pakit_stream.exceptions import ModelLoadError
from pakit_stream.pipeline import Pipeline
from pakit_stream.settings import Settings

from . import events as ev


def fed_pipeline() -> Pipeline:
    p = Pipeline(Settings())
    p.handle("pakit.blocks", 0, 0, ev.pack([ev.stored(i) for i in range(20)]))
    p.handle("pakit.access", 0, 0, ev.pack([ev.accessed(i) for i in range(50)]))
    p.handle("pakit.fingerprints", 1, 0, ev.pack([ev.fingerprint(i) for i in range(30)]))
    p.handle("pakit.peers", 0, 0, ev.pack([ev.peer_fetch(i) for i in range(60)]))
    p.handle("pakit.gossip", 0, 0, ev.pack([ev.gossip(i) for i in range(30)]))
    return p


def sample(p, name, **labels):
    return p.metrics.registry.get_sample_value(name, labels)


def test_every_family_reaches_its_learner_and_is_counted():
    p = fed_pipeline()
    assert p.applied == {"pakit.blocks": 20, "pakit.access": 50, "pakit.fingerprints": 30,
                         "pakit.peers": 60, "pakit.gossip": 30}
    # every stored block, with what each codec cost on it, reaches the codec chooser
    x, costs = p.codec_window[0]
    assert len(p.codec_window) == 20 and costs == {"zstd": (341, 110.0), "lz4": (512, 25.0)}
    assert x["block_size"] == 1024 and "compression_ratio" not in x["features"]
    assert p.codec.n_updates == 20 and p.codec.predict_one({"block_size": 1024}) == "zstd"
    assert len(p.dedup) == 30 and p.peers.n_peers == 3 and p.network.n_states == 1
    assert p.prefetcher.n_updates > 0
    assert sample(p, "pakit_stream_events_total", topic="pakit.peers", outcome="ok") == 60
    assert sample(p, "pakit_stream_learner_updates_total", learner="peer_bandit") == 60
    assert sample(p, "pakit_stream_lsh_entries") == 30


def test_codec_label_has_no_place_among_the_features():
    p = fed_pipeline()
    features, label = p.codec_window[0]
    assert not {"compression_ratio", "compression_algorithm", "codec"} & set(features)


def test_replayed_messages_below_the_offset_are_skipped():
    p = Pipeline(Settings())
    msg = ev.pack([ev.accessed(i) for i in range(5)])
    assert p.handle("pakit.access", 0, 10, msg) == []
    assert p.handle("pakit.access", 0, 10, msg) is None
    assert p.handle("pakit.access", 0, 3, msg) is None
    assert p.handle("pakit.access", 1, 0, msg) == []  # another partition, its own offsets
    assert p.applied["pakit.access"] == 10 and p.offsets == {"pakit.access/0": 11,
                                                             "pakit.access/1": 1}
    assert sample(p, "pakit_stream_duplicate_messages_total", topic="pakit.access") == 2


def test_rejects_are_counted_by_kind_and_offsets_still_advance():
    p = Pipeline(Settings())
    bad = [dict(ev.accessed(1), content="x"), dict(ev.accessed(2), latency_ms="slow")]
    rejects = p.handle("pakit.access", 0, 0, ev.pack([ev.accessed(0), *bad]))
    assert [r.kind for r in rejects] == ["privacy", "invalid"]
    assert p.handle("pakit.access", 0, 1, b"\x00garbage")[0].kind == "invalid"
    assert sample(p, "pakit_stream_events_total", topic="pakit.access", outcome="privacy") == 1
    assert sample(p, "pakit_stream_events_total", topic="pakit.access", outcome="invalid") == 2
    assert p.offsets["pakit.access/0"] == 2


def test_a_learner_failure_becomes_an_error_reject_not_a_crash(monkeypatch):
    p = Pipeline(Settings())

    def broken(*args, **kwargs):
        raise FloatingPointError("boom")

    monkeypatch.setattr(p.network, "learn_round", broken)
    rejects = p.handle("pakit.gossip", 0, 0, ev.pack([ev.gossip(i) for i in range(3)]))
    assert [r.kind for r in rejects] == ["error"] * 3 and "FloatingPointError" in rejects[0].reason
    assert b'"gossip_round"' in rejects[0].raw
    assert p.applied["pakit.gossip"] == 0
    assert sample(p, "pakit_stream_events_total", topic="pakit.gossip", outcome="error") == 3


def test_snapshot_restores_learners_offsets_and_counters(tmp_path):
    p = fed_pipeline()
    store = CheckpointStore(tmp_path, b"k" * 32)
    store.write_now(p)
    q = Pipeline(Settings())
    assert store.restore(q)
    assert q.offsets == p.offsets and q.applied == p.applied
    assert len(q.dedup) == 30 and q.stats() == p.stats()
    req = {"available_peers": ["peer-fast", "peer-slow"], "context": {"time_of_day": 0.5}}
    assert q.peers.predict(req) == p.peers.predict(req)
    # after restore, learning continues from where it stopped
    q.handle("pakit.access", 0, 1, ev.pack([ev.accessed(99)]))
    assert q.applied["pakit.access"] == 51


def test_a_tick_with_no_new_message_does_not_snapshot_again(tmp_path):
    import asyncio

    p = fed_pipeline()
    store = CheckpointStore(tmp_path, b"k" * 32)
    outcomes = lambda: {o: sample(p, "pakit_stream_checkpoints_total", outcome=o)  # noqa: E731
                        for o in ("ok", "unchanged")}
    assert asyncio.run(store.checkpoint(p)) and outcomes() == {"ok": 1.0, "unchanged": None}
    written = store.path.stat().st_mtime_ns
    assert asyncio.run(store.checkpoint(p)) and outcomes() == {"ok": 1.0, "unchanged": 1.0}
    assert store.path.stat().st_mtime_ns == written
    p.handle("pakit.access", 0, 1, ev.pack([ev.accessed(77)]))  # a new message: write again
    assert asyncio.run(store.checkpoint(p)) and outcomes() == {"ok": 2.0, "unchanged": 1.0}
    q = Pipeline(Settings())
    assert store.restore(q) and q.applied["pakit.access"] == 51


def test_corrupt_checkpoint_is_refused_and_state_starts_empty(tmp_path):
    store = CheckpointStore(tmp_path, b"k" * 32)
    store.write_now(fed_pipeline())
    store.path.write_bytes(store.path.read_bytes()[:-10])
    with pytest.raises(ModelLoadError):
        store.load()
    fresh = Pipeline(Settings())
    assert store.restore(fresh) is False and fresh.offsets == {}
    assert sample(fresh, "pakit_stream_checkpoints_total", outcome="refused") == 1


def test_a_snapshot_of_another_version_is_refused_and_state_starts_empty(tmp_path):
    from pakit_stream import persist

    p = fed_pipeline()
    snap = {**p.snapshot(), "version": 999}  # written by a future (or past) pakit-stream
    store = CheckpointStore(tmp_path, b"k" * 32)
    persist.write_atomic(store.path, persist.dumps(snap, store.key))
    fresh = Pipeline(Settings())
    assert store.restore(fresh) is False  # no exception: the daemon starts, empty
    assert fresh.offsets == {} and len(fresh.dedup) == 0
    assert sample(fresh, "pakit_stream_checkpoints_total", outcome="refused") == 1


def test_checkpoint_size_is_bounded_by_capacities(tmp_path):
    p = Pipeline(Settings.from_env({}, lsh_capacity=50, successor_capacity=20))
    for batch in range(5):
        p.handle("pakit.fingerprints", 0, batch,
                 ev.pack([ev.fingerprint(batch * 100 + i) for i in range(100)]))
    blob = persist.dumps(p.snapshot(), b"k")
    assert len(p.dedup) == 50 and len(blob) < 80_000


def test_an_older_checkpoint_s_successor_table_joins_the_prefetcher():
    p = fed_pipeline()
    snap = p.snapshot()
    learners = dict(snap["learners"])
    table = learners.pop("prefetcher").successors
    # as versions before positions saved it: the table alone, its figure under another name,
    # and a gossip learner of another shape
    snap["learners"] = {**learners, "successors": table, "network": object()}
    snap["access_window"] = [(n, b) for n, b, *_ in snap["access_window"]]
    snap["quality"] = {("successor_hit5" if k == "prefetch_hit5" else k): v
                       for k, v in snap["quality"].items()}
    fresh = Pipeline(Settings())
    fresh.restore(snap)
    assert fresh.prefetcher.successors is table and table.n_updates > 0
    assert {len(r) for r in fresh.access_window} == {5}  # reads without positions
    assert fresh.network.rounds == {"push": 0, "push-pull": 0}  # a fresh gossip learner
    fresh.handle("pakit.gossip", 0, 99, ev.pack([ev.gossip(i) for i in range(3)]))
    assert fresh.network.rounds["push"] == 3


async def _counting_turns(work):
    """Await ``work()`` beside a task that counts the loop's turns (where a hint or a timer
    would run); returns ``(its result, turns)``."""
    import asyncio

    turns = 0

    async def other_work():
        nonlocal turns
        while True:
            turns += 1
            await asyncio.sleep(0)

    task = asyncio.ensure_future(other_work())
    await asyncio.sleep(0)
    try:
        return await work(), turns
    finally:
        task.cancel()


def test_a_sliced_envelope_learns_what_one_call_learns_and_lets_the_loop_run_between():
    import asyncio

    events = [ev.accessed(i) for i in range(300)]
    events[250] = {**events[250], "latency_ms": -1.0}  # refused by the schema
    events[123] = {**events[123], "block_hash": "ee" * 32}
    whole, sliced = Pipeline(Settings()), Pipeline(Settings.from_env({}, apply_slice_s=1e-6))
    for p in (whole, sliced):  # a learner that fails on one event: its place is kept
        real = p.prefetcher.observe

        def observe(node, block, *rest, real=real):
            if block == events[123]["block_hash"]:
                raise RuntimeError("boom")
            return real(node, block, *rest)
        p.prefetcher.observe = observe
    expected = whole.handle("pakit.access", 0, 0, ev.pack(events))
    assert [(r.index, r.kind) for r in expected] == [(250, "invalid"), (123, "error")]
    got, turns = asyncio.run(_counting_turns(
        lambda: sliced.handle_sliced("pakit.access", 0, 0, ev.pack(events))))
    assert turns > 100  # a slice of about one event: the loop ran between slices
    assert [(r.index, r.kind) for r in got] == [(r.index, r.kind) for r in expected]
    assert sliced.offsets == whole.offsets and sliced.applied == whole.applied
    assert sliced.prefetcher.propose("node-0") == whole.prefetcher.propose("node-0")


def test_sliced_messages_take_turns_while_the_loop_runs_between_their_slices():
    import asyncio

    p = Pipeline(Settings.from_env({}, apply_slice_s=1e-6))
    applied = []
    real = p.apply

    def apply(topic, events, first=0):
        applied.append(topic)
        return real(topic, events, first)
    p.apply = apply

    got, turns = asyncio.run(_counting_turns(lambda: asyncio.gather(
        p.handle_sliced("pakit.access", 0, 0, ev.pack([ev.accessed(i) for i in range(60)])),
        p.handle_sliced("pakit.peers", 0, 0, ev.pack([ev.peer_fetch(i) for i in range(60)])))))
    assert got == [[], []]
    # every slice of the first message before any of the second, not one of each in turn
    assert applied == sorted(applied, key=["pakit.access", "pakit.peers"].index)
    assert applied.count("pakit.access") > 10 and applied.count("pakit.peers") > 10
    assert turns > 20  # yet the loop ran between slices
    assert p.applied["pakit.access"] == p.applied["pakit.peers"] == 60


def test_quiet_waits_for_messages_in_flight_and_holds_new_ones():
    import asyncio

    p, log = Pipeline(Settings()), []

    async def agent(name, delay):
        await asyncio.sleep(delay)
        async with p.applying():
            log.append(f"{name} in")
            await asyncio.sleep(0.02)  # its envelope, applied in slices
            log.append(f"{name} out")

    async def snapshot():
        await asyncio.sleep(0.01)  # agent a is mid-message
        async with p.quiet():
            log.append("snapshot")
            await asyncio.sleep(0.02)  # b arrives meanwhile and must wait

    async def run():
        await asyncio.gather(agent("a", 0), snapshot(), agent("b", 0.015))

    asyncio.run(run())
    assert log == ["a in", "a out", "snapshot", "b in", "b out"]


def test_a_checkpoint_is_written_by_a_forked_child_after_the_dead_letters_are_flushed(tmp_path):
    import asyncio
    import os

    p = fed_pipeline()
    store = CheckpointStore(tmp_path, b"k" * 32)
    seen_at_flush = []

    async def flush():  # the file covering the messages must not exist before their DLQ acks
        seen_at_flush.append(store.path.exists())

    pid = os.getpid()
    assert asyncio.run(store.checkpoint(p, flush)) and seen_at_flush == [False]
    assert os.getpid() == pid  # the child exited; only the parent returns
    q = Pipeline(Settings())
    assert store.restore(q) and q.offsets == p.offsets and q.applied == p.applied
    assert sample(p, "pakit_stream_checkpoint_hold_seconds_count") == 1
    assert not list(tmp_path.glob("checkpoints/.*.tmp"))


def test_a_failed_checkpoint_writer_leaves_the_previous_file(tmp_path, monkeypatch):
    import asyncio

    p = fed_pipeline()
    store = CheckpointStore(tmp_path, b"k" * 32)
    store.write_now(p)
    before = store.path.read_bytes()
    p.handle("pakit.access", 0, 1, ev.pack([ev.accessed(77)]))
    monkeypatch.setattr(persist, "dumps", lambda *a: 1 / 0)  # the child fails to serialise
    assert asyncio.run(store.checkpoint(p)) is False
    assert store.path.read_bytes() == before
    assert sample(p, "pakit_stream_checkpoints_total", outcome="failed") == 1
    assert not list(tmp_path.glob("checkpoints/.*.tmp"))


def test_a_hung_checkpoint_writer_is_killed_and_counted(tmp_path, monkeypatch):
    import asyncio
    import time as clock

    p = fed_pipeline()
    store = CheckpointStore(tmp_path, b"k" * 32, writer_timeout_s=0.5)
    monkeypatch.setattr(persist, "dumps", lambda *a: clock.sleep(60))  # the child hangs
    started = clock.monotonic()
    assert asyncio.run(store.checkpoint(p)) is False
    assert clock.monotonic() - started < 10
    assert sample(p, "pakit_stream_checkpoints_total", outcome="failed") == 1
    assert not store.path.exists() and not list(tmp_path.glob("checkpoints/.*.tmp"))


def test_a_message_cancelled_between_its_slices_marks_the_state_interrupted():
    import asyncio

    p = Pipeline(Settings.from_env({}, apply_slice_s=1e-6))

    async def run():
        task = asyncio.ensure_future(p.handle_sliced(
            "pakit.access", 0, 0, ev.pack([ev.accessed(i) for i in range(200)])))
        for _ in range(5):
            await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(run())
    # part of the envelope was learned, its offset not marked: no snapshot may be taken now
    assert p.interrupted and 0 < p.applied["pakit.access"] < 200 and not p.offsets


def test_an_older_checkpoint_s_offsets_of_global_topics_seed_the_global_reader(tmp_path):
    from pakit_stream.pipeline import GLOBAL_SCOPE

    p = fed_pipeline()
    snap = p.snapshot()
    q = Pipeline(Settings())
    q.restore(snap)  # no global offsets in it: as written before the global reader existed
    assert q.legacy_global_offsets == {GLOBAL_SCOPE + "pakit.fingerprints/1": 1,
                                       GLOBAL_SCOPE + "pakit.gossip/0": 1}
    assert q.offsets == p.offsets
    snap["offsets"][GLOBAL_SCOPE + "pakit.gossip/0"] = 0  # a newer one is taken as it is
    r = Pipeline(Settings())
    r.restore(snap)
    assert r.legacy_global_offsets == {} and r.offsets[GLOBAL_SCOPE + "pakit.gossip/0"] == 0


def test_one_hostile_gossip_round_moves_the_reward_and_the_learner_by_a_bounded_amount():
    p = Pipeline(Settings())
    p.handle("pakit.gossip", 0, 0, ev.pack([ev.gossip(i) for i in range(99)]))
    before = p.quality_value("gossip_reward")
    hostile = dict(ev.gossip(0), messages_sent=1 << 40, control_messages=1 << 40)
    p.handle("pakit.gossip", 0, 1, ev.pack([hostile]))
    after = p.quality_value("gossip_reward")
    assert abs(after - before) <= 12 / 100  # (upper - lower) / n, no more
    # the Q-function's payload estimate for that setting stays within what a round may claim
    x = p.network.predict({"network_size": 100, "avg_latency_ms": 40.0, "message_loss_rate": 0.01})
    assert 0 <= x["expected_payload_per_node"] <= 100


def test_ten_thousand_fetches_with_novel_context_keys_are_refused_and_grow_nothing():
    import tracemalloc

    p = Pipeline(Settings())
    p.handle("pakit.peers", 0, 0, ev.pack([ev.peer_fetch(i) for i in range(50)]))
    learned = p.peers.n_updates
    tracemalloc.start()
    rejects = []
    for m in range(20):  # 20 envelopes of 500, every event with 16 keys never seen before
        events = [dict(ev.peer_fetch(i), context={f"k{m}_{i}_{j}": 0.5 for j in range(16)})
                  for i in range(500)]
        rejects += p.handle("pakit.peers", 0, m + 1, ev.pack(events))
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert len(rejects) == 10_000 and {r.kind for r in rejects} == {"invalid"}
    assert all("is not one of" in r.reason for r in rejects)
    assert p.peers.n_updates == learned  # nothing reached the learner
    assert peak < 64 << 20  # the refusals themselves: no state grows with the keys


def test_a_dead_letter_is_retried_until_the_broker_acknowledges_it():
    """Unit test of the retry logic (the broker is faked): a refused write is counted and
    tried again; the call returns only once a write was acknowledged."""
    import asyncio
    from types import SimpleNamespace

    from pakit_stream.daemon.agents import DeadLetters
    from pakit_stream.events.decode import Rejected

    attempts = []

    class FlakyTopic:  # refuses two writes, then acknowledges
        async def send(self, key, value, headers):
            attempts.append(value)
            delivery = asyncio.get_running_loop().create_future()
            if len(attempts) <= 2:
                delivery.set_exception(OSError("not enough replicas"))
            else:
                delivery.set_result("acknowledged")
            return delivery

    p = Pipeline(Settings())
    daemon = SimpleNamespace(pipeline=p, metrics=p.metrics, settings=p.settings,
                             topic=lambda name: FlakyTopic())
    dead = DeadLetters(daemon)
    dead.max_backoff_s = 0.01
    message = SimpleNamespace(topic="pakit.access", partition=0, offset=7, key=b"node-1")
    asyncio.run(dead.send([Rejected(b"{}", "no event_type", "invalid")], message))
    assert len(attempts) == 3
    assert sample(p, "pakit_stream_dlq_failures_total") == 2
    assert sample(p, "pakit_stream_dlq_messages_total", kind="invalid") == 1
