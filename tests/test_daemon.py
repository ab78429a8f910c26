"""The daemon as a user runs it: a ``pakit-stream run`` process against the embedded broker,
fed by kafka-python producers, asked over HTTP."""

import hashlib
import json
import subprocess
import sys
import threading
import time
import urllib.error

import pytest

from pakit_stream.events.schema import TOPICS

from . import events as ev
from .conftest import read_topic


def metric(daemon, name, **labels):
    want = "{" + ",".join(f'{k}="{v}"' for k, v in sorted(labels.items())) + "}" if labels else ""
    for line in daemon.get("/metrics").splitlines():
        if line.startswith(name + want + " ") or (not labels and line.startswith(name + " ")):
            return float(line.rsplit(" ", 1)[1])
    return None


def send(producer, topic, value, key=b"node-a"):
    producer.send(topic, key=key, value=value).get(timeout=10)


def test_events_reach_learners_hints_answer_and_metrics_count_exactly(producer, daemon_factory):
    daemon = daemon_factory(PAKIT_STREAM_GOSSIP_EPSILON=0)
    # before any data, every hint answers with its fallback
    assert daemon.post("/v1/hints/network", {"network_size": 100, "avg_latency_ms": 40,
                                             "message_loss_rate": 0.01})["source"] == "fallback"
    messages = dict.fromkeys(TOPICS, 0)

    def envelope(topic, events):
        send(producer, topic, ev.pack(events))
        messages[topic] += 1

    envelope("pakit.blocks", [ev.stored(i) for i in range(20)])
    for i in range(30):  # single-event messages, as a foreign producer would send
        send(producer, "pakit.access", ev.raw(ev.accessed(i)), key=f"node-{i % 3}".encode())
        messages["pakit.access"] += 1
    envelope("pakit.fingerprints", [ev.fingerprint(0)]
             + [ev.fingerprint(i, base=0, edits=3 * i) for i in range(1, 8)]
             + [ev.fingerprint(i) for i in range(50, 60)])
    for start in range(0, 300, 100):
        envelope("pakit.peers", [ev.peer_fetch(i) for i in range(start, start + 100)])
    envelope("pakit.gossip", [ev.gossip(i) for i in range(90)])
    sent = {"pakit.blocks": 20, "pakit.access": 30, "pakit.fingerprints": 18,
            "pakit.peers": 300, "pakit.gossip": 90}

    health = daemon.wait_applied(sent)
    assert health["applied"] == sent
    learners = health["learners"]
    assert learners["peers"]["peers"] == 3 and learners["dedup"]["entries"] == 18
    assert learners["network"]["states"] == 1 and learners["codec_window"] == 20

    peer = daemon.post("/v1/hints/peer", {"node_id": "node-a", "context": {"network_load": 0.2},
                                          "available_peers": ["peer-slow", "peer-fast", "peer-mid"]})
    assert peer["peer_id"] == "peer-fast" and peer["source"] == "learned"
    net = daemon.post("/v1/hints/network", {"network_size": 100, "avg_latency_ms": 40,
                                            "message_loss_rate": 0.01})
    # only push rounds were logged: only push is weighed, and the setting must reach 99.5%
    assert (net["mode"], net["pull_rounds"], net["source"]) == ("push", 0, "learned")
    assert net["expected_coverage"] >= 0.995 and net["expected_control_per_node"] == 0
    similar = daemon.get(f"/v1/hints/similar/{ev.block_hash(100_000)}?top_k=3")
    assert similar["source"] == "learned"
    assert [s["block_hash"] for s in similar["similar"]] == [ev.block_hash(100_000 + i)
                                                             for i in (1, 2, 3)]
    # 8-bit signatures: the share of equal slots, corrected for chance agreement (1/256)
    assert similar["similar"][0]["jaccard"] == pytest.approx(
        (1 - 3 / 128 - 1 / 256) / (1 - 1 / 256), abs=1e-4)
    unknown = daemon.get(f"/v1/hints/similar/{ev.block_hash(7)}")
    assert unknown == {"block_hash": ev.block_hash(7), "similar": [], "source": "fallback"}

    for topic, n in sent.items():
        assert metric(daemon, "pakit_stream_events_total", topic=topic, outcome="ok") == n
        assert metric(daemon, "pakit_stream_messages_total", topic=topic) == messages[topic]
    assert metric(daemon, "pakit_stream_lsh_entries") == 18
    assert metric(daemon, "pakit_stream_learner_updates_total", learner="peer_bandit") == 300
    assert metric(daemon, "pakit_stream_hint_requests_total", hint="peer", source="learned") == 1
    assert metric(daemon, "pakit_stream_hint_requests_total", hint="similar",
                  source="fallback") == 1
    cli = subprocess.run([sys.executable, "-m", "pakit_stream", "hint", "peer", "--url", daemon.url,
                          "--node-id", "node-a", "--peers", "peer-mid", "peer-fast"],
                         capture_output=True, text=True)
    assert cli.returncode == 0 and json.loads(cli.stdout)["peer_id"] == "peer-fast"
    deadline = time.monotonic() + 10
    while metric(daemon, "pakit_stream_consumer_lag_messages", topic="pakit.peers") != 0:
        assert time.monotonic() < deadline, "lag never reached 0"
        time.sleep(0.3)


def test_bad_hint_requests_get_a_400_with_a_reason(daemon_factory):
    daemon = daemon_factory()
    cases = [("/v1/hints/peer", b"not json"),
             ("/v1/hints/peer", json.dumps({"node_id": "n", "available_peers": "p1"}).encode()),
             ("/v1/hints/network", json.dumps({"avg_latency_ms": -1,
                                               "message_loss_rate": 0}).encode())]
    import urllib.request

    for path, body in cases:
        req = urllib.request.Request(daemon.url + path, data=body)
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(req, timeout=5)
        assert err.value.code == 400 and json.loads(err.value.read())["error"]
        err.value.close()
    for path in ("/v1/hints/similar/not-a-hash", f"/v1/hints/similar/{ev.block_hash(1)}?top_k=0"):
        with pytest.raises(urllib.error.HTTPError) as err:
            daemon.get(path)
        assert err.value.code == 400 and json.loads(err.value.read())["error"]
        err.value.close()
    assert daemon.get("/health")["status"] == "ok"


def test_bad_input_goes_to_the_dlq_with_reasons_and_good_input_is_processed(
        broker, producer, daemon_factory):
    daemon = daemon_factory(PAKIT_STREAM_MAX_MESSAGE_BYTES=200_000,
                            PAKIT_STREAM_DLQ_MAX_BYTES=100_000)
    good = [ev.accessed(i) for i in range(4)]
    bad_in_envelope = [dict(ev.accessed(10), content="the block"),
                       dict(ev.accessed(11), latency_ms="slow")]
    singles = {
        b"\x00\xff\xfegarbage": "malformed JSON",
        b"[1, 2, 3]": "Expected `object`",
        ev.raw(dict(ev.accessed(20), cache_hit="yes")): "Expected `bool`",
        ev.raw(dict(ev.accessed(21), payload="aGVsbG8=")): "could carry block content",
        ev.raw(dict(ev.accessed(22), block_hash="holiday-photo.jpg")): "hex digests",
        ev.raw(ev.gossip(23)): "event_type",
        b'{"events": [], "data": "x"}': "could carry block content",
        b'{"events": [' + b"1," * 150_000 + b"1]}": "exceeds the 200000-byte limit",
    }
    send(producer, "pakit.access", ev.pack([good[0], bad_in_envelope[0], good[1],
                                            bad_in_envelope[1], good[2]]))
    for value in singles:
        send(producer, "pakit.access", value)
    send(producer, "pakit.access", ev.raw(good[3]))

    health = daemon.wait_applied({"pakit.access": 4})
    expected_dlq = len(singles) + len(bad_in_envelope)
    records = read_topic(broker.bootstrap, "pakit.dlq", expected_dlq)
    assert len(records) == expected_dlq
    by_value = {r.value: dict(r.headers) for r in records}
    # what was refused as possible block content is kept as a digest and field names only
    sent = {hashlib.sha256(v).hexdigest().encode(): v
            for v in [*singles, *map(ev.raw, bad_in_envelope)]}
    for value, headers in list(by_value.items()):
        if headers["pakit-kind"] == b"privacy":
            summary = json.loads(value)
            original = sent[headers["pakit-original-sha256"]]
            assert summary["sha256"].encode() == headers["pakit-original-sha256"]
            assert summary["bytes"] == len(original) and summary["fields"]
            for secret in (b"the block", b"aGVsbG8=", b"holiday-photo"):
                assert secret not in value
            by_value[original] = by_value.pop(value)
    huge = next(v for v in singles if len(v) > 200_000)
    truncated = by_value.pop(huge[:100_000])  # too big to keep whole: cut, with its fingerprint
    assert truncated["pakit-original-bytes"] == str(len(huge)).encode()
    assert truncated["pakit-original-sha256"] == hashlib.sha256(huge).hexdigest().encode()
    by_value[huge] = truncated
    for value, reason in singles.items():
        assert reason in by_value[value]["pakit-reason"].decode()
    for event in bad_in_envelope:
        headers = next(h for v, h in by_value.items() if v == ev.raw(event))
        assert headers["pakit-index"] in (b"1", b"3") and headers["pakit-source"].startswith(
            b"pakit.access/")
    kinds = [h["pakit-kind"] for h in by_value.values()]
    assert kinds.count(b"privacy") == 4 and kinds.count(b"invalid") == 6
    assert metric(daemon, "pakit_stream_events_total", topic="pakit.access",
                  outcome="privacy") == 4
    assert metric(daemon, "pakit_stream_events_total", topic="pakit.access",
                  outcome="invalid") == 6
    assert metric(daemon, "pakit_stream_dlq_messages_total", kind="invalid") == 6
    assert health["applied"]["pakit.access"] == 4
    assert metric(daemon, "pakit_stream_dlq_failures_total") == 0
    assert daemon.process.poll() is None and daemon.get("/health")["status"] == "ok"


def test_kill_9_mid_stream_then_restart_loses_and_repeats_nothing(tmp_path, producer,
                                                                   daemon_factory):
    store = tmp_path / "store"
    env = {"PAKIT_STREAM_CHECKPOINT_INTERVAL_S": "0.3"}
    first = daemon_factory(store, **env)
    n_batches, per_batch = 60, 50
    acked = threading.Event()

    def produce():
        for b in range(n_batches):
            send(producer, "pakit.access",
                 ev.pack([ev.accessed(b * per_batch + i) for i in range(per_batch)]),
                 key=f"node-{b % 4}".encode())
            send(producer, "pakit.fingerprints",
                 ev.pack([ev.fingerprint(b * per_batch + i) for i in range(per_batch)]),
                 key=f"node-{b % 4}".encode())
            time.sleep(0.02)
        acked.set()

    writer = threading.Thread(target=produce)
    writer.start()
    deadline = time.monotonic() + 60
    while first.get("/health")["applied"]["pakit.fingerprints"] < n_batches * per_batch // 3:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    time.sleep(0.5)  # let at least one checkpoint land mid-stream
    first.kill()
    assert (store / "checkpoints" / "daemon.ckpt").exists()
    writer.join()
    assert acked.is_set()

    second = daemon_factory(store, **env)
    total = n_batches * per_batch
    health = second.wait_applied({"pakit.access": total, "pakit.fingerprints": total})
    time.sleep(1.5)  # anything replayed twice would show up now
    health = second.get("/health")
    assert health["applied"]["pakit.access"] == total
    assert health["applied"]["pakit.fingerprints"] == total
    assert health["learners"]["dedup"]["entries"] == total
    assert health["learners"]["prefetcher"]["updates"] > 0
    # it resumed from the checkpoint: it did not re-read every message from the start
    assert metric(second, "pakit_stream_messages_total", topic="pakit.fingerprints") < n_batches


def test_a_partition_the_checkpoint_never_saw_is_read_from_its_start(tmp_path, producer,
                                                                     daemon_factory):
    """Faust commits the offsets it acknowledged when a worker stops, whatever the commit
    settings say. A worker of the same group whose state has no offset for a partition (its
    checkpoint was lost, or it is new) must read that partition from its start, not from the
    committed offset: what was committed was learned by a state that is gone."""
    first = daemon_factory(tmp_path / "a")
    total = 300
    for b in range(6):
        send(producer, "pakit.access", ev.pack([ev.accessed(b * 50 + i) for i in range(50)]),
             key=f"node-{b % 4}".encode())
    first.wait_applied({"pakit.access": total})
    assert first.stop() == 0  # a clean stop: Faust commits what it acknowledged
    second = daemon_factory(tmp_path / "b")  # same group, no checkpoint
    health = second.wait_applied({"pakit.access": total})
    assert health["applied"]["pakit.access"] == total


def test_replay_publishes_a_jsonl_file_that_the_daemon_learns_from(broker, tmp_path,
                                                                   daemon_factory):
    lines = [ev.accessed(i) for i in range(25)] + [ev.gossip(i) for i in range(7)]
    path = tmp_path / "events.jsonl"
    path.write_text("\n".join(json.dumps(e) for e in lines) + "\n")
    out = subprocess.run([sys.executable, "-m", "pakit_stream", "replay", str(path), "--broker",
                          broker.bootstrap, "--batch-size", "10"], capture_output=True, text=True)
    assert out.returncode == 0 and json.loads(out.stdout) == {"published": 32}
    daemon = daemon_factory()
    health = daemon.wait_applied({"pakit.access": 25, "pakit.gossip": 7})
    assert health["applied"]["pakit.access"] == 25
    assert metric(daemon, "pakit_stream_messages_total", topic="pakit.access") == 3
