"""Keep docker-compose.yml, the Prometheus config and the Grafana dashboard honest
without a Docker engine (issue 7)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from orders.metrics import OrdersMetrics
from orders.settings import OrdersSettings
from streams.metrics import Metrics
from streams.settings import WorkerSettings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]
APP_SETTINGS = {"worker": WorkerSettings, "orders": OrdersSettings, "relay": OrdersSettings}
README = (ROOT / "README.md").read_text()


def env_names(service: str) -> set[str]:
    env = SERVICES[service].get("environment") or {}
    return set(env) if isinstance(env, dict) else {e.split("=", 1)[0] for e in env}


@pytest.mark.parametrize("service", sorted(APP_SETTINGS))
def test_app_environment_names_exist_in_the_settings_model(service):
    fields = {name.upper() for name in APP_SETTINGS[service].model_fields}
    assert env_names(service) - fields == set()


@pytest.mark.parametrize("service", sorted(APP_SETTINGS))
def test_app_commands_are_the_readme_commands(service):
    command = " ".join(SERVICES[service]["command"])
    assert f"`{command}`" in README


def test_every_image_is_pinned_to_a_version():
    for name, svc in SERVICES.items():
        image = svc["image"]
        repo, _, tag = image.rpartition(":")
        assert repo and tag and tag != "latest" and re.search(r"\d", tag), (name, image)
    base = re.search(r"^FROM\s+(\S+)", (ROOT / "Dockerfile").read_text(), re.M)
    assert base and re.search(r":\d+\.\d+\.\d+", base.group(1)), base


def test_every_service_has_a_health_check():
    assert [n for n, s in SERVICES.items() if not s.get("healthcheck", {}).get("test")] == []


def test_worker_scales_no_fixed_host_port_or_shared_data_dir():
    worker = SERVICES["worker"]
    assert "ports" not in worker and "volumes" not in worker and "container_name" not in worker
    env = worker["environment"]
    assert env["WEB_HOST"] == "0.0.0.0" and "CANONICAL_URL" not in env  # derived per replica


def test_cluster_profile_has_three_brokers_and_the_env_file_sets_rf3_min_isr2():
    brokers = [n for n, s in SERVICES.items() if s["image"].startswith("apache/kafka:")]
    assert sorted(brokers) == ["kafka", "kafka-2", "kafka-3"]
    assert all(SERVICES[b].get("profiles") == ["cluster"] for b in ("kafka-2", "kafka-3"))
    env = dict(line.split("=", 1) for line in (ROOT / "deploy/cluster.env").read_text().splitlines()
               if line and not line.startswith("#"))
    assert env["REPLICATION_FACTOR"] == "3" and env["MIN_INSYNC_REPLICAS"] == "2"
    assert env["KAFKA_QUORUM_VOTERS"].count("@") == 3
    text = (ROOT / "docker-compose.yml").read_text()
    for var in env:
        assert "${" + var in text, f"{var} from deploy/cluster.env is not used by docker-compose.yml"
    ids = {SERVICES[b]["environment"]["KAFKA_NODE_ID"] for b in brokers}
    assert ids == {1, 2, 3}


def test_mounted_config_files_exist():
    for svc in SERVICES.values():
        for volume in svc.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (ROOT / source).exists(), source


def test_prometheus_config_passes_promtool():
    promtool = shutil.which("promtool")
    assert promtool, "promtool missing: scripts/ensure-system-packages installs Debian's prometheus"
    result = subprocess.run([promtool, "check", "config", str(ROOT / "deploy/prometheus.yml")],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def exported_metric_names() -> set[str]:
    text = Metrics().exposition().decode() + OrdersMetrics().exposition().decode()
    names = set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split()
            names.add(name)
            if kind == "counter":
                names.add(name + "_total") if not name.endswith("_total") else None
            if kind == "histogram":
                names |= {name + "_bucket", name + "_sum", name + "_count"}
    return names


PROMQL_WORDS = {"sum", "by", "rate", "increase", "max", "min", "avg", "histogram_quantile", "le",
                "topic", "partition", "status", "service", "type", "tier", "reason", "target", "outcome", "table"}


def test_dashboard_queries_name_metrics_the_code_exports():
    dashboard = json.loads((ROOT / "deploy/grafana/dashboards/order-streams.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    assert len(exprs) >= 10
    exported = exported_metric_names()
    used = set()
    for expr in exprs:
        without_strings = re.sub(r'"[^"]*"', "", expr)
        without_ranges = re.sub(r"\[[^\]]*\]", "", without_strings)
        for word in re.findall(r"[a-zA-Z_][a-zA-Z0-9_]*", without_ranges):
            if word not in PROMQL_WORDS and not re.fullmatch(r"\d.*", word):
                used.add(word)
    assert used - exported == set()
    wanted = {"event_processed_total", "retry_scheduled_total", "dead_letter_total", "outbox_pending_rows",
              "outbox_oldest_pending_age_seconds", "consumer_lag", "rpc_calls_total",
              "table_recovery_records_remaining", "engine_seek_backs_total", "engine_rerouted_records_total"}
    assert wanted <= used


def test_grafana_provisioning_points_at_the_dashboards_and_prometheus():
    ds = yaml.safe_load((ROOT / "deploy/grafana/provisioning/datasources/prometheus.yml").read_text())
    assert ds["datasources"][0]["url"] == "http://prometheus:9090"
    prov = yaml.safe_load((ROOT / "deploy/grafana/provisioning/dashboards/order-streams.yml").read_text())
    mounted = [v for v in SERVICES["grafana"]["volumes"] if "dashboards:" in v and "provisioning" not in v][0]
    assert prov["providers"][0]["options"]["path"] == mounted.split(":")[1]


PROMETHEUS = yaml.safe_load((ROOT / "deploy/prometheus.yml").read_text())


def scrape_targets() -> dict[str, set[str]]:
    """job → the host:port (or dns-name:port) it scrapes."""
    jobs: dict[str, set[str]] = {}
    for job in PROMETHEUS["scrape_configs"]:
        targets = {t for c in job.get("static_configs", []) for t in c["targets"]}
        targets |= {f"{n}:{c['port']}" for c in job.get("dns_sd_configs", []) for n in c["names"]}
        jobs[job["job_name"]] = targets
    return jobs


def test_the_relay_serves_its_metrics_port_and_prometheus_scrapes_it():
    """In compose the relay is its own process: without its port, outbox_published_total
    and the outbox gauges were never scraped."""
    relay = SERVICES["relay"]
    env = relay["environment"]
    port = int(env["RELAY_PORT"])
    assert env["ORDERS_HOST"] == "0.0.0.0"
    assert [str(p) for p in relay["expose"]] == [str(port)]
    assert "ports" not in relay  # scrapes go over the compose network; the relay may scale on PostgreSQL
    assert f"127.0.0.1:{port}/health" in " ".join(relay["healthcheck"]["test"])
    targets = {t for ts in scrape_targets().values() for t in ts}
    assert f"relay:{port}" in targets
    orders_port = SERVICES["orders"]["environment"]["ORDERS_PORT"]
    assert f"orders:{orders_port}" in targets


def test_the_outbox_series_on_the_dashboard_come_from_the_relay_process():
    """The API-only process exports no outbox series; every outbox_* series the dashboard
    queries is exported by the process that runs the relay."""
    dashboard = json.loads((ROOT / "deploy/grafana/dashboards/order-streams.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    used = {w for e in exprs for w in re.findall(r"\boutbox_[a-z_]+", e)}
    assert {"outbox_pending_rows", "outbox_failed_rows", "outbox_published_total"} <= used
    relay_text = OrdersMetrics(api=False, relay=True).exposition().decode()
    api_only_text = OrdersMetrics(api=True, relay=False).exposition().decode()
    for name in used:
        assert name in relay_text
        assert name not in api_only_text
    # Table-wide gauges: every relay on one database reports the same rows — max, not sum.
    for expr in exprs:
        if re.search(r"outbox_(pending_rows|failed_rows|oldest_pending_age_seconds)", expr):
            assert expr.startswith("max("), expr
