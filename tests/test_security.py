"""Security settings: Kafka SASL/TLS reach every client, secrets never reach output or logs,
the HTTP server binds loopback unless told otherwise, admin endpoints need the token."""

from __future__ import annotations

import subprocess
import sys

import faust
import pytest

from pakit_stream.exceptions import ConfigError
from pakit_stream.settings import Settings

SECRETS = {"PAKIT_STREAM_ADMIN_TOKEN": "tok-5f1e2d9a", "PAKIT_STREAM_KAFKA_SASL_PASSWORD": "pw-77c4e0b3"}


def test_sasl_and_tls_settings_become_client_arguments_and_faust_credentials():
    s = Settings.from_env({"PAKIT_STREAM_KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
                           "PAKIT_STREAM_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
                           "PAKIT_STREAM_KAFKA_SASL_USERNAME": "node",
                           "PAKIT_STREAM_KAFKA_SASL_PASSWORD": "pw"})
    assert s.kafka_config() == {"security_protocol": "SASL_PLAINTEXT",
                                "sasl_mechanism": "SCRAM-SHA-512",
                                "sasl_plain_username": "node", "sasl_plain_password": "pw"}
    creds = s.faust_credentials()
    assert isinstance(creds, faust.SASLCredentials)
    assert (creds.username, creds.password, creds.ssl_context) == ("node", "pw", None)
    tls = Settings(kafka_security_protocol="SSL")
    assert isinstance(tls.faust_credentials(), faust.SSLCredentials)
    assert Settings().faust_credentials() is None
    assert "ssl_context" in tls.kafka_config("aiokafka")
    # kafka-python accepts every argument we pass (an unknown one would raise)
    from kafka import KafkaProducer
    assert set(s.kafka_config()) <= set(KafkaProducer.DEFAULT_CONFIG)


@pytest.mark.parametrize("env", [
    {"PAKIT_STREAM_KAFKA_SECURITY_PROTOCOL": "SASL_SSL"},  # no user, no password
    {"PAKIT_STREAM_KAFKA_SECURITY_PROTOCOL": "TLS"},
])
def test_incomplete_or_unknown_security_settings_are_refused(env):
    with pytest.raises(ConfigError):
        Settings.from_env(env)


def test_secrets_stay_out_of_repr_and_the_settings_listing():
    s = Settings.from_env(SECRETS)
    assert s.admin_token == SECRETS["PAKIT_STREAM_ADMIN_TOKEN"]
    text = repr(s) + str(s)
    listing = subprocess.run([sys.executable, "-m", "pakit_stream", "settings"], capture_output=True,
                             text=True, env={**SECRETS, "PATH": ""}).stdout
    assert "PAKIT_STREAM_KAFKA_SASL_PASSWORD" in listing
    for secret in SECRETS.values():
        assert secret not in text and secret not in listing
    assert Settings().web_host == "127.0.0.1"


def test_a_running_daemon_never_logs_its_secrets(broker, tmp_path):
    from pakit_stream.demo import DaemonProcess

    daemon = DaemonProcess(broker.bootstrap, tmp_path / "store", loglevel="debug",
                           env={**SECRETS, "PAKIT_STREAM_TOPIC_PARTITIONS": "2"}).start()
    try:
        assert daemon.get("/health")["status"] == "ok"
        assert daemon.post("/v1/hints/network", {"avg_latency_ms": 5, "message_loss_rate": 0})
        # a wrong token is refused, whatever its bytes (a non-ASCII one once answered 500)
        for token in (b"Bearer nope", "Bearer é".encode(), b"Bearer \xff\xfe", b""):
            assert admin_status(daemon, token) == 403
    finally:
        daemon.stop()
    log = daemon.log_path.read_text(errors="replace")
    assert "serving on" in log and len(log.splitlines()) > 20  # debug logging really ran
    for secret in SECRETS.values():
        assert secret not in log


def admin_status(daemon, authorization: bytes) -> int:
    """The status of an admin request with these raw ``Authorization`` bytes."""
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", daemon.web_port, timeout=10)
    try:
        conn.putrequest("POST", "/v1/admin/models/compression_predictor/rollback")
        if authorization:
            conn.putheader("Authorization", authorization)
        conn.putheader("Content-Length", "0")
        conn.endheaders()
        response = conn.getresponse()
        response.read()
        return response.status
    finally:
        conn.close()


def test_the_checkpoint_key_is_long_whole_and_kept_apart_from_the_checkpoints(tmp_path):
    import os
    import stat

    from pakit_stream import persist

    key_file = tmp_path / "keys" / "state.key"
    key = persist.resolve_key(None, key_file)
    assert len(key) == 32 and persist.resolve_key(None, key_file) == key
    assert stat.S_IMODE(os.stat(key_file).st_mode) == 0o600
    empty = tmp_path / "empty.key"
    empty.write_text("")  # what a crash between creating and writing the file leaves
    with pytest.raises(ConfigError, match="0 bytes"):
        persist.resolve_key(None, empty)
    with pytest.raises(ConfigError, match="at least 32 bytes"):
        persist.resolve_key("short")
    with pytest.raises(ConfigError, match="at least 32 bytes"):
        Settings.from_env({"PAKIT_STREAM_STATE_KEY": "x" * 31})
    with pytest.raises(ConfigError, match="outside data_dir"):
        Settings.from_env({"PAKIT_STREAM_DATA_DIR": str(tmp_path / "data"),
                           "PAKIT_STREAM_STATE_KEY_FILE": str(tmp_path / "data" / "state.key")})
    assert any(name == "PAKIT_STREAM_STATE_KEY" for name, _, _ in Settings.describe())
