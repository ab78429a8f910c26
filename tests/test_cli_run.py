"""The CLI's long-running commands, as a user starts them."""

import os
import signal
import subprocess
import sys
import time

from pakit_stream.broker import ensure_topics, free_port, wait_for_broker
from pakit_stream.demo import DaemonProcess


def _env(**extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith("PAKIT_STREAM_")}
    return {**env, **extra}


def test_run_without_a_broker_starts_its_own(tmp_path):
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "pakit_stream", "run", "--web-port", str(port),
                             "--data-dir", str(tmp_path), "--loglevel", "warn"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=_env())
    try:
        probe = DaemonProcess("unused:1", tmp_path, web_port=port)
        deadline = time.monotonic() + 60
        while True:
            try:
                health = probe.get("/health")
                break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline
                time.sleep(0.3)
        assert health["status"] == "ok"
        assert "pakit_stream_checkpoint_age_seconds" in probe.get("/metrics")
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
    assert b"embedded broker listening on 127.0.0.1:" in out
    assert (tmp_path / "checkpoints" / "daemon.ckpt").exists()  # the final checkpoint


def test_broker_command_serves_kafka_until_interrupted():
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "pakit_stream", "broker", "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=_env())
    try:
        ready = proc.stdout.readline()  # blocks until the broker says it is up
        assert f"listening on 127.0.0.1:{port}".encode() in ready
        wait_for_broker(f"127.0.0.1:{port}", timeout=30)
        ensure_topics(f"127.0.0.1:{port}", ["extra.topic"], 1)
    finally:
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=30)
    assert proc.returncode == 0


def test_demo_runs_end_to_end_on_given_files(tmp_path):
    source = tmp_path / "files"
    source.mkdir()
    for i in range(12):  # real, compressible and near-duplicate content
        text = "".join(f"line {j} of file {i % 4}: some words repeat\n" for j in range(900))
        (source / f"f{i}.txt").write_text(text + f"edit {i}\n")
    out = subprocess.run([sys.executable, "-m", "pakit_stream", "demo", "--seconds", "4",
                          "--source", str(source), "--data-dir", str(tmp_path / "store")],
                         capture_output=True, text=True, timeout=240, env=_env())
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    for line in ("peer bandit: mean fetch latency", "gossip: coverage", "dedup LSH",
                 "prefetch: next block in top 5", "events learned from"):
        assert line in out.stdout
    assert (tmp_path / "store" / "checkpoints" / "daemon.ckpt").exists()
