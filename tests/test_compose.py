"""No Docker engine runs here, so docker-compose.yml is checked by parsing: every service is there and
wired (executor, databases, broker, lake, volumes), every long-running service has a healthcheck,
start order follows health, and every secret comes from .env — declared, as a placeholder, in
.env.example. tests/integration/test_celery_topology.py runs the same components without Docker.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from tasks import settings
from tasks.config.models import AppConfig
from tasks.storage_s3 import ENDPOINT_ENV

ROOT = settings.PROJECT_ROOT
COMPOSE = ROOT / "docker-compose.yml"
ENV_EXAMPLE = ROOT / ".env.example"
AIRFLOW = ("airflow-apiserver", "airflow-scheduler", "airflow-dag-processor", "airflow-triggerer", "airflow-worker")
LONG_RUNNING = ("postgres", "redis", "minio", "mailpit", *AIRFLOW)
ONE_SHOT = ("airflow-init", "minio-init")
# ${VAR}, ${VAR:-default}, ${VAR?err}; $${VAR} is escaped (the container's shell expands it).
INTERPOLATION = re.compile(r"(?<!\$)\$\{([A-Za-z_][A-Za-z0-9_]*)(?:[:?+-][^}]*)?\}")
SECRET_WORDS = ("PASSWORD", "SECRET", "FERNET", "TOKEN")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, Any]:
    return dict(compose["services"])


def env_example() -> dict[str, str]:
    values = {}
    for line in ENV_EXAMPLE.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, sep, value = line.partition("=")
            assert sep, f".env.example: not KEY=value: {line!r}"
            values[key.strip()] = value.strip()
    return values


def strings(node: Any) -> list[str]:
    """Every string value in the parsed file (comments are not values)."""
    if isinstance(node, dict):
        return [s for value in node.values() for s in strings(value)]
    if isinstance(node, list):
        return [s for value in node for s in strings(value)]
    return [node] if isinstance(node, str) else []


def is_secret(key: str) -> bool:
    return any(w in key.upper() for w in SECRET_WORDS) and not key.upper().endswith("_FILE")


def depends(svc: dict[str, Any]) -> dict[str, str]:
    return {name: spec["condition"] for name, spec in svc.get("depends_on", {}).items()}


def test_topology_has_every_service(services: dict[str, Any]) -> None:
    assert set(LONG_RUNNING) | set(ONE_SHOT) <= set(services)


def test_airflow_services_run_the_right_commands(services: dict[str, Any]) -> None:
    commands = {name: " ".join(services[name]["command"]) for name in AIRFLOW}
    assert commands == {
        "airflow-apiserver": "api-server",
        "airflow-scheduler": "scheduler",
        "airflow-dag-processor": "dag-processor",
        "airflow-triggerer": "triggerer",
        "airflow-worker": "celery worker",
    }
    init = " ".join(services["airflow-init"]["command"])
    assert "airflow db migrate" in init
    assert "passwords.json" in init and "AIRFLOW_ADMIN_PASSWORD" in init
    assert "airflow connections add smtp_alerts" in init and "airflow connections add alerts_webhook" in init
    assert "airflow pools import" in init  # platform syncs wait for a slot of their pool
    assert "user" not in services["airflow-init"], "init runs as the airflow user, like the other services"
    assert services["airflow-apiserver"]["ports"] == ["8080:8080"]


def test_airflow_services_run_celery_on_postgres_and_redis(services: dict[str, Any]) -> None:
    for name in (*AIRFLOW, "airflow-init"):
        env = services[name]["environment"]
        assert env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor", name
        assert env["AIRFLOW__CORE__LOAD_EXAMPLES"] == "false"
        assert env["AIRFLOW__CORE__DAGS_FOLDER"] == "/opt/audiences/dags"
        assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].startswith("postgresql+psycopg2://airflow:")
        assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].endswith("@postgres:5432/airflow")
        assert env["AIRFLOW__CELERY__BROKER_URL"].startswith("redis://redis:6379/")
        assert env["AIRFLOW__CELERY__RESULT_BACKEND"].startswith("db+postgresql://")
        assert env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] == "http://airflow-apiserver:8080/execution/"
        assert env["AIRFLOW__CORE__AUTH_MANAGER"].endswith("SimpleAuthManager")
        assert env["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS"] == "admin:admin"
        # Shared secrets: every component must sign and verify with the same keys.
        for key in ("AIRFLOW__CORE__FERNET_KEY", "AIRFLOW__API__SECRET_KEY", "AIRFLOW__API_AUTH__JWT_SECRET"):
            assert INTERPOLATION.fullmatch(env[key]), (name, key)


def test_the_app_gets_its_state_db_lake_and_time_zone(services: dict[str, Any]) -> None:
    for name in AIRFLOW:
        env = services[name]["environment"]
        assert env["AUDIENCES_HOME"] == "/opt/audiences/var"
        assert env["AUDIENCES_CONFIG"] == "/opt/audiences/config"
        assert env["AUDIENCES_EXPECTATIONS"] == "/opt/audiences/expectations"
        state = env["AUDIENCES_STATE_DB_URL"]
        assert state.startswith("postgresql+psycopg2://audiences:") and state.endswith("@postgres:5432/audiences")
        assert state.rsplit("/", 1)[1] != env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].rsplit("/", 1)[1]
        assert env["AUDIENCES_LAKE"].startswith("s3://")
        assert env[ENDPOINT_ENV] == "http://minio:9000"  # the variable tasks/storage_s3.py reads
        assert {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION"} <= set(env)
        assert env["AUDIENCES_TIMEZONE"] == "${AUDIENCES_TIMEZONE}"
    assert env_example()["AUDIENCES_TIMEZONE"] == AppConfig(ROOT / "config").pipeline.business_timezone


def test_state_database_is_created_next_to_airflows(compose: dict[str, Any], services: dict[str, Any]) -> None:
    pg = services["postgres"]
    assert pg["environment"]["POSTGRES_DB"] == "airflow"
    init = {c["source"]: c["target"] for c in pg["configs"]}
    assert init["postgres-audiences-db"].startswith("/docker-entrypoint-initdb.d/")
    script = compose["configs"]["postgres-audiences-db"]["content"]
    assert "CREATE DATABASE audiences OWNER audiences" in script
    assert "$$AUDIENCES_DB_PASSWORD" in script  # expanded by the container, never written here


def test_lake_bucket_and_pipeline_key_are_created_in_minio(services: dict[str, Any]) -> None:
    script = " ".join(services["minio-init"]["command"])
    assert 'mc mb --ignore-existing "lake/$${LAKE_BUCKET}"' in script
    assert "mc admin user add" in script and "readwrite" in script
    env = services["airflow-worker"]["environment"]
    assert env["AUDIENCES_LAKE"] == "s3://${LAKE_BUCKET}/lake"
    assert env["AWS_ACCESS_KEY_ID"] == "${LAKE_ACCESS_KEY}"
    assert services["minio"]["ports"] == ["9000:9000", "9001:9001"]
    assert services["mailpit"]["ports"] == ["1025:1025", "8025:8025"]


def test_volumes(compose: dict[str, Any], services: dict[str, Any]) -> None:
    for name in (*AIRFLOW, "airflow-init"):
        mounts = services[name]["volumes"]
        if name != "airflow-init":
            for code in ("dags", "config", "expectations"):
                assert f"./{code}:/opt/audiences/{code}:ro" in mounts, (name, code)
        assert "audiences-data:/opt/audiences/var" in mounts, name
        assert "airflow-logs:/opt/airflow/logs" in mounts, name
    assert any(m.startswith("airflow-auth:/opt/airflow/auth") for m in services["airflow-apiserver"]["volumes"])
    assert "postgres-data:/var/lib/postgresql/data" in services["postgres"]["volumes"]
    assert "minio-data:/data" in services["minio"]["volumes"]
    declared = set(compose["volumes"])
    for svc in services.values():
        for mount in svc.get("volumes", []):
            source = mount.split(":", 1)[0]
            if not source.startswith(("./", "/")):
                assert source in declared, mount


def test_every_long_running_service_has_a_healthcheck(services: dict[str, Any]) -> None:
    for name in LONG_RUNNING:
        check = services[name].get("healthcheck")
        assert check and check["test"][0] in ("CMD", "CMD-SHELL"), name
        assert {"interval", "retries"} <= set(check), name
    assert "/api/v2/version" in " ".join(services["airflow-apiserver"]["healthcheck"]["test"])
    assert services["airflow-scheduler"]["environment"]["AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK"] == "true"
    assert "inspect ping" in " ".join(services["airflow-worker"]["healthcheck"]["test"])
    for name in ONE_SHOT:
        assert services[name]["restart"] == "no", name


def test_start_order_follows_health(services: dict[str, Any]) -> None:
    assert depends(services["airflow-init"]) == {"postgres": "service_healthy"}
    assert depends(services["minio-init"]) == {"minio": "service_healthy"}
    for name in AIRFLOW:
        deps = depends(services[name])
        assert deps["postgres"] == "service_healthy", name
        assert deps["redis"] == "service_healthy", name
        assert deps["airflow-init"] == "service_completed_successfully", name
        assert deps["minio-init"] == "service_completed_successfully", name
    assert depends(services["airflow-worker"])["airflow-apiserver"] == "service_healthy"
    for svc in services.values():
        for dep, condition in depends(svc).items():
            assert dep in services
            expected = "service_completed_successfully" if dep in ONE_SHOT else "service_healthy"
            assert condition == expected, (dep, condition)


def test_every_variable_is_declared_in_env_example(compose: dict[str, Any]) -> None:
    used = {var for text in strings(compose) for var in INTERPOLATION.findall(text)}
    declared = env_example()
    assert used, "the compose file should take its settings from .env"
    assert sorted(used - set(declared)) == []
    assert sorted(set(declared) - used) == [], "declared in .env.example but unused"


def test_no_secret_is_written_into_the_compose_file_or_env_example(services: dict[str, Any]) -> None:
    def walk(node: Any, path: str) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                walk(value, f"{path}.{key}")
                if isinstance(value, str) and is_secret(str(key)):
                    assert INTERPOLATION.fullmatch(value), f"{path}.{key} must come from .env: {value!r}"
        elif isinstance(node, list):
            for i, value in enumerate(node):
                walk(value, f"{path}[{i}]")
        elif isinstance(node, str) and "://" in node and "@" in node:
            credentials = node.split("://", 1)[1].split("@", 1)[0]
            assert ":" not in credentials or "${" in credentials, f"{path}: password in a URL: {node!r}"

    walk(services, "services")
    for key, value in env_example().items():
        if is_secret(key) or key.endswith("_URL") or key.endswith("_URI"):
            placeholder = value in ("", "change-me") or ("@" not in value and not is_secret(key))
            assert placeholder, f".env.example: {key} must be a placeholder, not {value!r}"
    ignored = (ROOT / ".gitignore").read_text(encoding="utf-8").split() if (ROOT / ".gitignore").exists() else []
    assert ".env" in ignored, ".env must be git-ignored"


def test_image_installs_the_project_from_the_lock_file() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text(encoding="utf-8")
    assert dockerfile.startswith("#") and "FROM apache/airflow:3.3.2-python3.11" in dockerfile
    assert "uv export --frozen" in dockerfile and "-r /tmp/requirements.txt" in dockerfile
    for folder in ("tasks", "dags", "config", "expectations"):
        assert f"COPY --chown=airflow:root {folder} ./{folder}" in dockerfile
    assert Path(ROOT / "uv.lock").is_file()
