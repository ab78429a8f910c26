"""The replay sources: trace parsers, content-defined chunking, RTT matrices, peer and gossip
simulators, and ``pakit-stream replay`` on inputs the tests write themselves."""

from __future__ import annotations

import gzip
import io
import json
import lzma
import subprocess
import sys
import tarfile

import msgspec
import numpy as np
import pytest

from pakit_stream.events.schema import EVENT_TYPES, wire_type
from pakit_stream.replay import (GossipReplay, PeerReplay, RttMatrix, access_events, broadcast,
                                 chunk_tree, read_trace, stored_events, trace_block_hash)
from pakit_stream.replay.traces import ORACLE_GENERAL
from tests.conftest import read_topic

IDS = [5, 9, 5, 12, 9, 5, 100000000000]


def valid(event: dict) -> bool:
    """The event passes the wire contract the daemon enforces."""
    msgspec.json.decode(msgspec.json.encode(event), type=wire_type(EVENT_TYPES[event["event_type"]]))
    return True


# -- traces ---------------------------------------------------------------------------------
def test_oracle_general_records_are_read_little_endian(tmp_path):
    rec = np.zeros(len(IDS), dtype=ORACLE_GENERAL)
    rec["obj_id"], rec["ts"], rec["obj_size"], rec["next_access_vtime"] = IDS, 7, 4096, -1
    path = tmp_path / "t.bin"
    path.write_bytes(rec.tobytes())
    assert read_trace(path, "oracle-general").tolist() == IDS
    assert read_trace(path, "oracle-general", limit=3).tolist() == IDS[:3]
    path.write_bytes(rec.tobytes()[:-5])
    with pytest.raises(ValueError, match="24-byte oracleGeneral"):
        read_trace(path, "oracle-general")


@pytest.mark.parametrize("pack", [lambda b: b, gzip.compress, lzma.compress],
                         ids=["plain", "gzip", "xz"])
def test_one_id_per_line_plain_gzip_or_xz_by_content_not_name(tmp_path, pack):
    path = tmp_path / "trace.txt"  # the same name for all three: compression is sniffed
    path.write_bytes(pack("\n".join(map(str, IDS)).encode() + b"\n"))
    assert read_trace(path, "lines").tolist() == IDS


def test_non_integer_tokens_are_numbered_in_order_of_first_use(tmp_path):
    path = tmp_path / "keys"
    path.write_text("user:a\nuser:b\nuser:a\nuser:c\n")
    assert read_trace(path, "lines").tolist() == [0, 1, 0, 2]


def test_csv_column_is_chosen_by_flag(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("version,time,op,size,lbn\n" + "".join(f"1,{i},R,8,{b}\n" for i, b in enumerate(IDS)))
    assert read_trace(path, "csv").tolist() == IDS
    assert read_trace(path, "csv", column="time", limit=2).tolist() == [0, 1]
    with pytest.raises(ValueError, match="no column 'block'"):
        read_trace(path, "csv", column="block")


def test_uint32_addresses_in_either_byte_order(tmp_path):
    path = tmp_path / "w.trace.xz"
    path.write_bytes(lzma.compress(np.array([1, 2, 70000], dtype=">u4").tobytes()))
    assert read_trace(path, "u32be").tolist() == [1, 2, 70000]
    path.write_bytes(lzma.compress(np.array([1, 2, 70000], dtype="<u4").tobytes()))
    assert read_trace(path, "u32le").tolist() == [1, 2, 70000]
    assert read_trace(path, "u32be").tolist() != [1, 2, 70000]  # the wrong order scrambles


def test_oracle_general_requests_keep_their_span_in_sectors(tmp_path):
    from pakit_stream.replay.traces import ORACLE_GENERAL, read_requests

    records = np.zeros(3, dtype=ORACLE_GENERAL)
    records["obj_id"] = [100, 108, 7]
    records["obj_size"] = [4096, 512, 100]  # 8 sectors, 1, and less than one
    path = tmp_path / "t.bin"
    path.write_bytes(records.tobytes())
    ids, spans = read_requests(path, "oracle-general")
    assert ids.tolist() == [100, 108, 7] and spans.tolist() == [8, 1, 1]
    assert read_requests(path, "oracle-general", sector_bytes=4096)[1].tolist() == [1, 1, 1]
    lines = tmp_path / "l.txt"
    lines.write_text("5\n6\n")
    assert read_requests(lines, "lines")[1].tolist() == [1, 1]


def test_the_command_line_offers_every_trace_format():
    from pakit_stream import cli
    from pakit_stream.replay.traces import TRACE_FORMATS

    assert cli.TRACE_FORMATS == TRACE_FORMATS


def test_bad_format_and_empty_traces_are_refused_with_a_reason(tmp_path):
    path = tmp_path / "empty"
    path.write_bytes(b"")
    with pytest.raises(ValueError, match="unknown trace format"):
        read_trace(path, "parquet")
    with pytest.raises(ValueError, match="no accesses"):
        read_trace(path, "lines")


def test_access_events_follow_an_lru_cache_and_pass_the_contract():
    events = list(access_events([1, 2, 1, 3, 2], cache_blocks=2, namespace="t"))
    assert [e["cache_hit"] for e in events] == [False, False, True, False, False]
    assert events[0]["block_hash"] == trace_block_hash(1, "t") != trace_block_hash(1, "u")
    assert all(valid(e) for e in events)
    # the trace is one object; an access's address is its position and its span its count
    spanned = list(access_events([8, 16, 8], namespace="t", spans=[8, 4, 8]))
    assert len({e["object_id"] for e in spanned}) == 1
    assert [(e["chunk_index"], e["chunk_count"]) for e in spanned] == [(8, 8), (16, 4), (8, 8)]
    assert all(valid(e) for e in spanned)


# -- files -----------------------------------------------------------------------------------
def test_chunks_are_content_defined_an_insertion_moves_few_of_them(tmp_path):
    rng = np.random.default_rng(0)
    data = rng.integers(0, 256, 400_000, dtype=np.uint8).tobytes()
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "v1").write_bytes(data)
    (tmp_path / "a" / "v2").write_bytes(data[:200_000] + b"inserted!" + data[200_000:])
    chunks = list(chunk_tree(tmp_path, avg_size=8192))
    by_file = {}
    for c in chunks:
        by_file.setdefault(c.path, []).append(c)
    v1 = {c.block_hash for c in by_file["a/v1"]}
    v2 = {c.block_hash for c in by_file["a/v2"]}
    assert b"".join(c.data for c in by_file["a/v1"]) == data
    assert len(v2 - v1) <= 2 and len(v1) > 20  # only the chunk(s) around the edit differ
    assert chunks[0].depth == 2


def test_stored_events_measure_every_codec_and_pass_the_contract(tmp_path):
    words = np.array(["block", "store", "peer", "gossip", "hash", "dag", "node", "pin"])
    rng = np.random.default_rng(1)
    (tmp_path / "f.txt").write_text(" ".join(rng.choice(words, 12_000)))
    events = list(stored_events(tmp_path, ["n1", "n2"], avg_size=4096))
    kinds = [e["event_type"] for e in events]
    assert kinds[:2] == ["block_stored", "block_fingerprint"] and len(events) % 2 == 0
    first = events[0]
    assert {r["algorithm"] for r in first["codec_results"]} == {
        "none", "zstd-1", "zstd-3", "zstd-9", "lz4", "snappy", "brotli-4"}
    assert first["compression_ratio"] < 0.5  # text of eight words really compresses
    assert {e["node_id"] for e in events} == {"n1", "n2"}
    assert all(valid(e) for e in events)


# -- RTT matrices ------------------------------------------------------------------------------
def _matrices(n_slices=12, hosts=6, seed=0):
    rng = np.random.default_rng(seed)
    m = rng.uniform(0.01, 0.3, (n_slices, hosts, hosts))
    m[:, np.arange(hosts), np.arange(hosts)] = 0
    m[:, 0, 1] = 0  # never measured
    return m


def _write_slices(folder, m):
    folder.mkdir(parents=True, exist_ok=True)
    for t, mat in enumerate(m, 1):
        np.savetxt(folder / f"Data_{t}", mat, delimiter="\t", fmt="%.4f")


def test_rtt_slices_load_from_a_directory_or_tar_xz_in_numeric_order(tmp_path):
    m = _matrices()
    _write_slices(tmp_path / "seattle", m)
    from_dir = RttMatrix.load(tmp_path / "seattle", unit="s")
    archive = tmp_path / "rtt.tar.xz"
    with tarfile.open(archive, "w:xz") as tar:
        tar.add(tmp_path / "seattle", arcname="seattle")
    from_tar = RttMatrix.load(archive, unit="s")
    assert from_dir.ms.shape == (12, 6, 6)
    # slice 10 comes after slice 2 (numeric, not lexical, order), seconds become milliseconds
    assert from_dir.ms[9, 2, 3] == pytest.approx(round(m[9, 2, 3], 4) * 1000, rel=1e-5)
    np.testing.assert_array_equal(from_dir.ms, from_tar.ms)
    assert np.isnan(from_dir.ms[:, 0, 1]).all() and np.isnan(from_dir.ms[:, 3, 3]).all()
    in_ms = RttMatrix.load(tmp_path / "seattle", unit="ms")
    assert in_ms.ms[0, 2, 3] == pytest.approx(from_dir.ms[0, 2, 3] / 1000, rel=1e-5)


def test_rtt_inputs_that_are_not_matrices_are_refused(tmp_path):
    (tmp_path / "x").mkdir()
    with pytest.raises(ValueError, match="no matrix files"):
        RttMatrix.load(tmp_path / "x", unit="s")
    np.savetxt(tmp_path / "x" / "D_1", np.ones((3, 3)))
    np.savetxt(tmp_path / "x" / "D_2", np.ones((4, 4)))
    with pytest.raises(ValueError, match="differ in shape"):
        RttMatrix.load(tmp_path / "x", unit="s")
    with pytest.raises(ValueError, match="unit"):
        RttMatrix(np.ones((1, 2, 2)), unit="minutes")


def test_peer_fetches_come_from_the_matrix_with_shared_draws():
    matrix = RttMatrix(_matrices(), unit="s")
    replay = PeerReplay(matrix, node=0, fetches_per_slice=3, loss=0.0, noise=0.0, seed=1)
    steps = list(replay.steps())
    assert len(steps) == 12 * 3 and [s.slice for s in steps[:4]] == [0, 0, 0, 1]
    for step in steps:
        for peer in step.candidates:
            ok, ms = step.fetch(peer)
            assert step.fetch(peer) == (ok, ms)  # same step, same peer: same outcome
            if peer == 1:  # the pair 0 -> 1 was never measured: unreachable
                assert (ok, ms) == (False, replay.timeout_ms)
            else:
                assert ok and ms == pytest.approx(float(matrix.ms[step.slice, 0, peer]))
    event = replay.event(steps[0], steps[0].candidates[0], True, 12.5)
    assert valid(event) and event["node_id"] == "host-000"


def test_broadcast_coverage_and_messages():
    rng = np.random.default_rng(3)
    assert broadcast(50, fanout=4, ttl=0, loss=0.0, rng=rng)[:2] == (1 / 50, 0)
    assert broadcast(50, fanout=4, ttl=5, loss=1.0, rng=rng)[:2] == (1 / 50, 4)
    cov, msgs, _, control = broadcast(500, fanout=8, ttl=10, loss=0.0, rng=rng)
    assert cov > 0.99 and msgs == pytest.approx(8 * cov * 500, rel=0.05) and control == 0
    # over a matrix: unmeasured links lose messages; hops take half an RTT
    rtt = np.full((4, 4), 100.0)
    cov, _, done_ms, _ = broadcast(200, 8, 10, 0.0, rng, rtt, rng.integers(0, 4, 200))
    assert cov > 0.99 and 50 <= done_ms <= 50 * 10
    dead = np.full((4, 4), np.nan)
    hosts = np.arange(200) % 4  # no two nodes share a host with node 0 ... except every 4th
    cov = broadcast(200, 8, 10, 0.0, rng, dead, hosts).coverage
    assert cov < 0.5  # only nodes on the origin's own host can be reached


def test_a_fractional_fanout_sends_the_fraction_on_average():
    rng = np.random.default_rng(4)
    # TTL 1: only the origin forwards; 2.5 sends 2 or 3
    sent = [broadcast(100, 2.5, 1, 0.0, rng).payload for _ in range(2000)]
    assert set(sent) == {2, 3} and np.mean(sent) == pytest.approx(2.5, abs=0.05)


def test_push_pull_reaches_the_rest_with_one_payload_per_missing_node():
    rng = np.random.default_rng(5)
    push = broadcast(1000, 1, 3, 0.0, rng)
    assert push.coverage < 0.05 and push.control == 0
    both = broadcast(1000, 1, 3, 0.0, rng, mode="push-pull", pull=12)
    # anti-entropy: two digests per node and round; a payload only crosses to a node that
    # lacks it (a pull and a push reaching one node in the same round are the only duplicates)
    assert both.coverage == 1.0 and both.control == 2 * 1000 * 12
    assert 999 <= both.payload - 3 <= 1.5 * 1000
    lossy = broadcast(1000, 1, 3, 0.5, rng, mode="push-pull", pull=4)
    assert lossy.coverage < both.coverage and lossy.control == 2 * 1000 * 4
    with pytest.raises(ValueError, match="unknown gossip mode"):
        broadcast(10, 1, 1, 0.0, rng, mode="flood")


def test_gossip_replay_emits_valid_rounds_over_the_matrix():
    replay = GossipReplay(RttMatrix(_matrices(), unit="s"), seed=0)
    actions = [("push", 6, 10, 0), ("push", 2.5, 3, 0), ("push-pull", 1.5, 2, 4)]
    rounds = list(replay.rounds([20, 2000], [0.0, 0.1], actions, per_slice=2))
    assert len(rounds) == 24 and all(valid(r) for r in rounds)
    assert {r["network_size"] for r in rounds} <= {20, 2000}
    assert all(10 <= r["avg_latency_ms"] <= 300 for r in rounds)
    pulled = [r for r in rounds if r.get("mode") == "push-pull"]
    assert pulled and all(r["pull_rounds"] == 4 and r["control_messages"] == 2 * 4 *
                          r["network_size"] for r in pulled)
    assert all("mode" not in r for r in rounds if r["fanout"] in (6, 2.5))  # old shape for push


# -- the command -------------------------------------------------------------------------------
def _replay(*args):
    return subprocess.run([sys.executable, "-m", "pakit_stream", "replay", *map(str, args)],
                          capture_output=True, text=True, timeout=120)


def test_replay_writes_each_kind_of_source_as_contract_events(tmp_path):
    (tmp_path / "files").mkdir()
    (tmp_path / "files" / "a.txt").write_bytes(b"hello block store " * 3000)
    (tmp_path / "t.gz").write_bytes(gzip.compress(b"1\n2\n1\n"))
    _write_slices(tmp_path / "rtt", _matrices(n_slices=2))
    cases = [("files", ["--kind", "files", "--avg-size", "4096"], "block_stored"),
             ("t.gz", ["--kind", "trace", "--format", "lines"], "block_accessed"),
             ("rtt", ["--kind", "peers", "--unit", "s", "--limit", "15"], "peer_fetch"),
             ("rtt", ["--kind", "gossip", "--unit", "s", "--limit", "7"], "gossip_round")]
    for source, flags, kind in cases:
        out = tmp_path / f"{kind}.jsonl"
        done = _replay(tmp_path / source, *flags, "--jsonl-out", out)
        assert done.returncode == 0, done.stderr
        events = [json.loads(line) for line in out.read_text().splitlines()]
        assert events and events[0]["event_type"] == kind and all(valid(e) for e in events)
    assert len((tmp_path / "peer_fetch.jsonl").read_text().splitlines()) == 15
    missing = _replay(tmp_path / "t.gz", "--kind", "trace", "--jsonl-out", tmp_path / "x")
    assert missing.returncode != 0 and "needs --format" in missing.stderr
    no_unit = _replay(tmp_path / "rtt", "--kind", "peers", "--jsonl-out", tmp_path / "x")
    assert no_unit.returncode != 0 and "needs --unit" in no_unit.stderr


def test_replay_publishes_a_trace_to_the_broker_as_envelopes(broker, tmp_path):
    path = tmp_path / "trace.csv"
    path.write_text("lbn\n" + "\n".join(str(i % 40) for i in range(1200)) + "\n")
    done = _replay(path, "--kind", "trace", "--format", "csv", "--broker", broker.bootstrap,
                   "--batch-size", "500")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"published": 1200}
    records = read_topic(broker.bootstrap, "pakit.access", expected=3)
    events = [e for r in records for e in json.loads(r.value)["events"]]
    assert len(records) == 3 and len(events) == 1200 and all(valid(e) for e in events)
    assert sum(e["cache_hit"] for e in events) == 1200 - 40  # 40 distinct blocks fit the cache
