"""The deployment stack, validated as far as this machine allows without a container engine:
the compose file parses and validates (``docker-compose config``), Prometheus's ``promtool``
checks the config and rules and runs the alerts' unit tests, and every metric the dashboard
and the alerts query is one the daemon really exports. The checks that need ``docker-compose``
or ``promtool`` (Debian packages ``docker-compose`` and ``prometheus``) skip without them."""

from __future__ import annotations

import configparser
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from pakit_stream.cli import build_parser as parser
from pakit_stream.experiment import LiveMetrics
from pakit_stream.metrics import Metrics
from pakit_stream.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
METRIC = re.compile(r"\bpakit_stream_[a-z0-9_]+")
SUFFIXES = {"counter": ("_total", "_created"), "gauge": ("",), "info": ("_info",),
            "histogram": ("_bucket", "_sum", "_count", "_created"), "summary": ("_sum", "_count")}


def exported() -> set[str]:
    """Every series name the daemon's registry can expose."""
    names = set()
    for registry in (Metrics().registry, LiveMetrics(None).registry):
        for family in registry.collect():
            names.update(family.name + s for s in SUFFIXES[family.type])
    return names


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} is not installed (Debian: apt-get install docker-compose prometheus)")
    return path


def run(*args, cwd=ROOT):
    done = subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_compose_file_validates():
    run(tool("docker-compose"), "-f", "docker-compose.yml", "config", "--quiet")


def test_compose_runs_kafka_in_kraft_mode_and_publishes_on_loopback_only():
    services = compose()["services"]
    assert set(services) == {"kafka", "pakit-stream", "prometheus", "grafana"}
    kafka = services["kafka"]
    assert kafka["image"].startswith("apache/kafka:")
    assert "controller" in kafka["environment"]["KAFKA_PROCESS_ROLES"]
    app = services["pakit-stream"]
    assert app["build"] == "." and app["environment"]["PAKIT_STREAM_BROKER"] == "kafka:9092"
    assert app["depends_on"]["kafka"]["condition"] == "service_healthy"
    for service in services.values():
        for port in service.get("ports", []):
            assert port.startswith("127.0.0.1:"), port
    settings = {var for var, _, _ in Settings.describe()}
    assert set(app["environment"]) <= settings


def test_promtool_checks_the_config_and_rules_and_the_alerts_fire():
    promtool = tool("promtool")
    cwd = DEPLOY / "prometheus"
    run(promtool, "check", "config", "prometheus.yml", cwd=cwd)
    run(promtool, "check", "rules", "alerts.yml", cwd=cwd)
    run(promtool, "test", "rules", "alerts_test.yml", cwd=cwd)


def test_prometheus_scrapes_the_daemon_where_compose_runs_it():
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    job, experiment = config["scrape_configs"]
    assert job["static_configs"][0]["targets"] == [f"pakit-stream:{Settings().web_port}"]
    assert experiment["static_configs"][0]["targets"] == ["host.docker.internal:6067"]
    assert parser().parse_args(["experiment"]).metrics_port == 6067
    assert config["rule_files"] == ["alerts.yml"]


def test_every_dashboard_query_names_an_exported_metric():
    dash = json.loads((DEPLOY / "grafana" / "dashboards" / "pakit-stream.json").read_text())
    names = exported()
    queried = set()
    titles = set()
    for panel in dash["panels"]:
        titles.add(panel["title"])
        assert panel["datasource"]["uid"] == "prometheus"
        for target in panel["targets"]:
            found = set(METRIC.findall(target["expr"]))
            assert found, f"{panel['title']}: {target['expr']} queries no pakit-stream metric"
            assert found <= names, f"{panel['title']}: not exported: {found - names}"
            queried |= found
    # the panels the operators asked for
    for wanted in ("Ingest rate", "Consumer lag", "Online quality", "Retrains",
                   "Serving model versions", "Hint latency"):
        assert any(t.startswith(wanted) for t in titles), wanted
    assert "pakit_stream_model_serving_info" in queried


def test_every_alert_names_an_exported_metric_and_grafana_is_provisioned():
    rules = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())
    names = exported()
    alerts = {r["alert"]: r["expr"] for g in rules["groups"] for r in g["rules"]}
    for alert, expr in alerts.items():
        assert set(METRIC.findall(expr)) <= names, alert
    for needed in ("ConsumerLagGrowing", "DeadLetterRate", "RetrainFailures", "CheckpointStale",
                   "HintLatencyHigh", "QualityDrop"):
        assert any(needed in a for a in alerts), needed
    source = yaml.safe_load((DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yml").read_text())
    assert source["datasources"][0]["uid"] == "prometheus"
    provider = yaml.safe_load((DEPLOY / "grafana" / "provisioning" / "dashboards" / "pakit-stream.yml").read_text())
    mounted = compose()["services"]["grafana"]["volumes"]
    assert f"./deploy/grafana/dashboards:{provider['providers'][0]['options']['path']}:ro" in mounted


def test_kubernetes_manifests_agree_with_the_settings_and_each_other():
    docs = {d["kind"]: d for f in sorted((DEPLOY / "k8s").glob("*.yaml"))
            for d in yaml.safe_load_all(f.read_text())}
    assert set(docs) == {"ConfigMap", "StatefulSet", "Service"}
    config = docs["ConfigMap"]["data"]
    assert set(config) <= {var for var, _, _ in Settings.describe()}
    deploy = docs["StatefulSet"]["spec"]
    assert deploy["replicas"] >= 2  # one consumer group, partitions spread over the replicas
    (container,) = deploy["template"]["spec"]["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"http": int(config["PAKIT_STREAM_WEB_PORT"]),
                     "hints": int(config["PAKIT_STREAM_HINT_PORT"])}
    assert {p["targetPort"] for p in docs["Service"]["spec"]["ports"]} == set(ports)
    assert container["readinessProbe"]["httpGet"]["path"] == "/health"
    assert docs["Service"]["spec"]["ports"][0]["targetPort"] == container["ports"][0]["name"]
    assert docs["Service"]["spec"]["selector"] == deploy["selector"]["matchLabels"]
    # each replica keeps its checkpoint, model store and key on claims of its own (a rollout
    # must not lose them), and the key apart from the checkpoints
    claims = {c["metadata"]["name"] for c in deploy["volumeClaimTemplates"]}
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    assert set(mounts.values()) <= claims and not deploy["template"]["spec"].get("volumes")
    assert mounts[config["PAKIT_STREAM_DATA_DIR"]] != mounts[
        str(Path(config["PAKIT_STREAM_STATE_KEY_FILE"]).parent)]


def test_systemd_unit_and_dockerfile_run_the_real_command():
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.read(DEPLOY / "systemd" / "pakit-stream.service")
    assert unit["Service"]["ExecStart"].endswith("/pakit-stream run")
    assert unit["Service"]["User"] == "pakit" and unit["Service"]["NoNewPrivileges"] == "yes"
    dockerfile = (ROOT / "Dockerfile").read_text()
    torch_pin = re.search(r'"(torch==[0-9.]+)"', (ROOT / "pyproject.toml").read_text())[1]
    assert torch_pin in dockerfile and "whl/cpu" in dockerfile  # CPU torch by default
    assert 'ENTRYPOINT ["pakit-stream"]' in dockerfile and 'CMD ["run"]' in dockerfile
    env = set(re.findall(r"(PAKIT_STREAM_[A-Z_]+)=", dockerfile))
    assert env and env <= {var for var, _, _ in Settings.describe()}
