import subprocess
import sys
from pathlib import Path

import pytest

import pakit_stream
from pakit_stream.exceptions import ConfigError
from pakit_stream.settings import Settings


def test_public_surface_is_exactly_all():
    public = {n for n in dir(pakit_stream) if not n.startswith("_")}
    modules = {n for n in public if type(getattr(pakit_stream, n)).__name__ == "module"}
    assert public - modules == set(pakit_stream.__all__) - {"__version__"}


def test_guide_import_paths_exist():
    from pakit_stream.base_model import ModelConfig  # noqa: F401
    from pakit_stream.models import (DeduplicationOptimizer, NetworkOptimizer,  # noqa: F401
                                     PeerSelector)
    from pakit_stream.telemetry import FeatureExtractor, TelemetryCollector  # noqa: F401


def test_environment_then_overrides():
    env = {"PAKIT_STREAM_BROKER": "kafka.local:9092", "PAKIT_STREAM_DATA_DIR": "/srv/models",
           "PAKIT_STREAM_LSH_THRESHOLD": "0.8", "UNRELATED": "x"}
    s = Settings.from_env(env, web_port=7000, broker=None)
    assert s.broker == "kafka.local:9092" and s.data_dir == Path("/srv/models")
    assert s.lsh_threshold == 0.8 and s.web_port == 7000


@pytest.mark.parametrize("env", [{"PAKIT_STREAM_BROKER": "no-port"},
                                 {"PAKIT_STREAM_WEB_PORT": "70000"},
                                 {"PAKIT_STREAM_LSH_THRESHOLD": "1.5"},
                                 {"PAKIT_STREAM_CHECKPOINT_INTERVAL_S": "0"}])
def test_bad_settings_are_refused_at_start(env):
    with pytest.raises(ConfigError):
        Settings.from_env(env)


def test_every_setting_is_documented():
    for var, default, help_ in Settings.describe():
        assert var.startswith("PAKIT_STREAM_") and len(help_) > 10


def test_cli_lists_settings_and_refuses_unknown_commands():
    out = subprocess.run([sys.executable, "-m", "pakit_stream", "settings"], capture_output=True,
                         text=True, check=True).stdout
    assert "PAKIT_STREAM_BROKER" in out and "PAKIT_STREAM_WEB_PORT" in out
    bad = subprocess.run([sys.executable, "-m", "pakit_stream", "nonsense"], capture_output=True)
    assert bad.returncode == 2


def test_hint_cli_reports_an_absent_daemon():
    r = subprocess.run([sys.executable, "-m", "pakit_stream", "hint", "network", "--url",
                        "http://127.0.0.1:9"], capture_output=True, text=True)
    assert r.returncode == 1 and "no daemon" in r.stderr


def test_the_daemon_never_imports_torch():
    code = ("import sys, pakit_stream.daemon.core, pakit_stream.daemon, pakit_stream.models, "
            "pakit_stream.cli, pakit_stream.telemetry, pakit_stream.training, "
            "pakit_stream.retrain; print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
