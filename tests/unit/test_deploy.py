"""Keep docker-compose.yml, the Prometheus config and the Grafana dashboard honest
without a Docker engine (issue 7). promtool's check of the Prometheus config needs the
binary: tests/integration/test_external_tools.py."""

from __future__ import annotations

import json
import re
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


# -- secrets, exposure and the production override (issue 23, item 12) -------------------------

PRODUCTION = yaml.safe_load((ROOT / "deploy/production.yml").read_text())
KAFKA_START = (ROOT / "deploy/production/kafka-start.sh").read_text()
SECRET_WORDS = ("PASSWORD", "SECRET", "TOKEN")
#: what an operator sets for the base file: the two secrets and nothing else
BASE_SECRETS = {"POSTGRES_PASSWORD": "9f2c1e0b7a6d5c4b3a29180706f5e4d3", "GRAFANA_PASSWORD": "grafana-secret-1"}
PRODUCTION_SECRETS = {**BASE_SECRETS, "KAFKA_SECRETS_DIR": "/srv/kafka-tls", "WEB_TOKEN": "w" * 40,
                      "KAFKA_ADMIN_PASSWORD": "a" * 24, "KAFKA_WORKER_PASSWORD": "b" * 24,
                      "KAFKA_RELAY_PASSWORD": "c" * 24}
_VAR = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?+])([^}]*))?\}|\$([A-Za-z_][A-Za-z0-9_]*)")


class MissingVariable(Exception):
    pass


def interpolate(value, env: dict[str, str], errors: list[str]):
    """Compose's variable interpolation (compose-spec "Interpolation") over a parsed file:
    ``${VAR}``, ``${VAR:-default}``, ``${VAR-default}``, ``${VAR:?error}``,
    ``${VAR?error}``, ``${VAR:+alt}``, ``$$``; a missing required variable is reported
    as compose reports it ("required variable X is missing a value: <error>")."""
    if isinstance(value, dict):
        return {k: interpolate(v, env, errors) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env, errors) for v in value]
    if not isinstance(value, str):
        return value

    def one(m: re.Match) -> str:
        if m.group(0) == "$$":
            return "$"
        name, op, arg = (m.group(1), m.group(2), m.group(3) or "") if m.group(1) else (m.group(4), None, "")
        given = env.get(name)
        empty = given is None or (given == "" and op is not None and op.startswith(":"))
        if op in (":-", "-"):
            return arg if empty else given
        if op in (":?", "?"):
            if empty:
                errors.append(f"required variable {name} is missing a value: {arg}")
                return ""
            return given
        if op in (":+", "+"):
            return "" if empty else arg
        return given or ""

    return _VAR.sub(one, value)


def resolved(doc: dict, env: dict[str, str]) -> tuple[dict, list[str]]:
    errors: list[str] = []
    out = interpolate({k: v for k, v in doc.items() if not k.startswith("x-")}, env, errors)
    return out, errors


def merged(base: dict, override: dict) -> dict:
    """``docker compose -f base -f override``: mappings merge key by key, ``volumes``
    merge by target path, other lists and scalars are replaced."""
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merged(out[key], value)
        elif key == "volumes" and isinstance(value, list) and isinstance(out.get(key), list):
            by_target = {v.split(":")[1]: v for v in out[key]}
            by_target.update({v.split(":")[1]: v for v in value})
            out[key] = list(by_target.values())
        else:
            out[key] = value
    return out


def secret_references(text: str) -> list[tuple[str, str | None]]:
    return [(m.group(1) or m.group(4), m.group(2)) for m in _VAR.finditer(text) if m.group(0) != "$$"]


def test_compose_without_its_secrets_stops_naming_each_one():
    _, errors = resolved(COMPOSE, {})
    required = sorted(e.split()[2] for e in errors)
    assert set(required) == set(BASE_SECRETS), errors
    assert all(e.split()[2] in e.split(":", 1)[1] for e in errors), errors  # the message says what to set
    config, errors = resolved(COMPOSE, BASE_SECRETS)
    assert errors == []
    assert config["services"]["postgres"]["environment"]["POSTGRES_PASSWORD"] == BASE_SECRETS["POSTGRES_PASSWORD"]
    for app in APP_SETTINGS:
        assert f":{BASE_SECRETS['POSTGRES_PASSWORD']}@postgres:" in config["services"][app]["environment"]["DATABASE_URL"]


@pytest.mark.parametrize("path", ["docker-compose.yml", "deploy/production.yml"])
def test_no_secret_has_a_default(path):
    text = (ROOT / path).read_text()
    refs = [(name, op) for name, op in secret_references(text) if any(w in name for w in SECRET_WORDS)]
    assert refs, "no secret variables found"
    assert [(n, op) for n, op in refs if op != ":?"] == [], "a secret with a default or optional"
    doc = yaml.safe_load(text)
    for name, svc in doc["services"].items():
        env = svc.get("environment") or {}
        for key, value in env.items():
            if any(w in key for w in SECRET_WORDS):  # a literal secret: only a required variable will do
                assert isinstance(value, str) and re.fullmatch(r"\$\{[A-Z_]+:\?[^}]+\}", value), (name, key, value)


def test_grafana_has_no_anonymous_access_and_no_default_admin_password():
    env = SERVICES["grafana"]["environment"]
    assert env["GF_AUTH_ANONYMOUS_ENABLED"] == "false" and env["GF_USERS_ALLOW_SIGN_UP"] == "false"
    assert "GF_AUTH_ANONYMOUS_ORG_ROLE" not in env
    assert env["GF_SECURITY_ADMIN_PASSWORD"].startswith("${GRAFANA_PASSWORD:?")
    config, _ = resolved(COMPOSE, BASE_SECRETS)
    assert config["services"]["grafana"]["environment"]["GF_SECURITY_ADMIN_PASSWORD"] == "grafana-secret-1"


def published(config: dict) -> dict[str, list[str]]:
    return {n: [str(p) for p in s["ports"]] for n, s in config["services"].items() if s.get("ports")}


def test_ports_are_published_on_loopback_unless_told_otherwise():
    config, _ = resolved(COMPOSE, BASE_SECRETS)
    ports = published(config)
    assert set(ports) == {"orders", "prometheus", "grafana"}
    assert all(p.startswith("127.0.0.1:") and p.count(":") == 2 for ps in ports.values() for p in ps), ports
    config, _ = resolved(COMPOSE, {**BASE_SECRETS, "PUBLISH_ADDRESS": "0.0.0.0"})
    assert all(p.startswith("0.0.0.0:") for ps in published(config).values() for p in ps)
    brokers = [n for n, s in SERVICES.items() if s["image"].startswith("apache/kafka:")]
    assert all("ports" not in SERVICES[b] for b in brokers)  # Kafka only on the compose network


def production_config(env: dict[str, str]) -> tuple[dict, list[str]]:
    return resolved(merged(COMPOSE, PRODUCTION), env)


def test_production_override_without_its_secrets_stops_naming_each_one():
    _, errors = production_config(BASE_SECRETS)
    assert sorted({e.split()[2] for e in errors}) == sorted(set(PRODUCTION_SECRETS) - set(BASE_SECRETS))
    _, errors = production_config(PRODUCTION_SECRETS)
    assert errors == []


def listener_protocols(env: dict) -> dict[str, str]:
    mapping = dict(p.split(":") for p in env["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].split(","))
    names = [entry.split("://")[0] for entry in env["KAFKA_LISTENERS"].split(",")]
    return {name: mapping[name] for name in names}


def test_production_kafka_listeners_need_credentials():
    """Every listener a client can reach is SASL_SSL with SCRAM-SHA-512 (no PLAINTEXT
    anywhere); the controller listener is TLS with a client certificate required."""
    config, _ = production_config(PRODUCTION_SECRETS)
    brokers = [n for n, s in config["services"].items() if s["image"].startswith("apache/kafka:")]
    assert sorted(brokers) == ["kafka", "kafka-2", "kafka-3"]
    for name in brokers:
        svc = config["services"][name]
        env = svc["environment"]
        protocols = listener_protocols(env)
        controller = env["KAFKA_CONTROLLER_LISTENER_NAMES"]
        assert "PLAINTEXT" not in env["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"], env
        assert {n: p for n, p in protocols.items() if n != controller} == {"SASL_SSL": "SASL_SSL"}
        assert protocols[controller] == "SSL"
        assert env[f"KAFKA_LISTENER_NAME_{controller}_SSL_CLIENT_AUTH"] == "required"
        assert env["KAFKA_ADVERTISED_LISTENERS"] == f"SASL_SSL://{name}:9092"
        assert env["KAFKA_INTER_BROKER_LISTENER_NAME"] == "SASL_SSL"
        assert env["KAFKA_SASL_ENABLED_MECHANISMS"] == env["KAFKA_SASL_MECHANISM_INTER_BROKER_PROTOCOL"] == "SCRAM-SHA-512"
        assert "java.security.auth.login.config=/tmp/kafka_server_jaas.conf" in env["KAFKA_OPTS"]
        assert svc["command"][-1] == "/opt/order-streams/kafka-start.sh"
        assert "./deploy/production/kafka-start.sh:/opt/order-streams/kafka-start.sh:ro" in svc["volumes"]
        assert "/srv/kafka-tls:/etc/kafka/secrets:ro" in svc["volumes"]
        assert "--command-config /tmp/admin-client.properties" in " ".join(svc["healthcheck"]["test"])
        assert not any(k.startswith("KAFKA_") and "PASSWORD" in k for k in env)  # would land in server.properties
    assert SERVICES["kafka-2"]["profiles"] == ["cluster"]  # the override keeps the cluster profile's brokers


def test_production_clients_connect_with_their_own_scram_principal():
    """Each app service's settings (the real models) carry SASL_SSL/SCRAM-SHA-512, the
    CA it mounts, and a principal the brokers' start script creates."""
    config, _ = production_config(PRODUCTION_SECRETS)
    users = set(re.findall(r"SCRAM-SHA-512=\[name=([a-z]+),password=\$\{(SCRAM_[A-Z]+_PASSWORD)\}\]", KAFKA_START))
    created = {u for u, _ in users}
    assert created == {"admin", "worker", "relay"}
    broker_env = config["services"]["kafka"]["environment"]
    passwords = {u: broker_env[var] for u, var in users}
    for service, model in APP_SETTINGS.items():
        env = config["services"][service]["environment"]
        settings = model(**{k.lower(): v for k, v in env.items()})
        assert settings.kafka_security_protocol == "SASL_SSL" and settings.kafka_sasl_mechanism == "SCRAM-SHA-512"
        assert settings.kafka_sasl_username in created - {"admin"}
        assert settings.kafka_sasl_password.get_secret_value() == passwords[settings.kafka_sasl_username]
        mounts = {v.split(":")[1]: v.split(":")[0] for v in config["services"][service]["volumes"]}
        assert mounts[settings.kafka_ssl_cafile] == "/srv/kafka-tls/ca.pem"
    assert config["services"]["worker"]["environment"]["KAFKA_SASL_USERNAME"] == "worker"


def test_kafka_start_script_is_valid_bash_and_checks_its_passwords():
    result = subprocess.run(["bash", "-n", str(ROOT / "deploy/production/kafka-start.sh")], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    env = {"PATH": "/usr/bin:/bin", "SCRAM_ADMIN_PASSWORD": "short"}
    result = subprocess.run(["bash", str(ROOT / "deploy/production/kafka-start.sh")], env=env,
                            capture_output=True, text=True, timeout=10)
    assert result.returncode == 1 and "SCRAM_ADMIN_PASSWORD must be set to 16 or more" in result.stderr
    assert "short" not in result.stderr + result.stdout


def test_readme_deployment_section_names_the_required_variables():
    section = README.split("## Running on a Kafka cluster", 1)[1].split("\n## ", 1)[0]
    for name in ("POSTGRES_PASSWORD", "GRAFANA_PASSWORD", "PUBLISH_ADDRESS", "deploy/production.yml",
                 "KAFKA_SECRETS_DIR", "KAFKA_WORKER_PASSWORD", "SCRAM-SHA-512"):
        assert name in section, name
    assert "default `admin`" not in section
