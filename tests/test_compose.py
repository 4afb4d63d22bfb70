"""No Docker engine runs here, so the compose file is checked by parsing: services, wiring, secrets."""

from __future__ import annotations

import yaml

from tasks import settings


def load() -> dict:
    return yaml.safe_load((settings.PROJECT_ROOT / "docker-compose.yml").read_text(encoding="utf-8"))


def test_topology_has_every_service() -> None:
    services = load()["services"]
    expected = {
        "postgres",
        "redis",
        "airflow-init",
        "airflow-apiserver",
        "airflow-scheduler",
        "airflow-dag-processor",
        "airflow-triggerer",
        "airflow-worker",
        "minio",
        "minio-init",
        "mailpit",
    }
    assert expected <= set(services)


def test_airflow_services_run_celery_on_postgres_and_redis_after_init() -> None:
    services = load()["services"]
    for name in (
        "airflow-apiserver",
        "airflow-scheduler",
        "airflow-dag-processor",
        "airflow-triggerer",
        "airflow-worker",
    ):
        svc = services[name]
        env = svc["environment"]
        assert env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
        assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].startswith("postgresql")
        assert env["AIRFLOW__CELERY__BROKER_URL"].startswith("redis://redis")
        assert svc["depends_on"]["airflow-init"]["condition"] == "service_completed_successfully"
        assert svc["depends_on"]["postgres"]["condition"] == "service_healthy"
        assert "./dags:/opt/audiences/dags:ro" in svc["volumes"]


def test_no_secret_is_written_into_the_compose_file() -> None:
    text = (settings.PROJECT_ROOT / "docker-compose.yml").read_text(encoding="utf-8")
    assert "${POSTGRES_PASSWORD}" in text
    for line in text.splitlines():
        if "PASSWORD:" in line:
            assert "${" in line, line
    example = (settings.PROJECT_ROOT / ".env.example").read_text(encoding="utf-8")
    assert "POSTGRES_PASSWORD=" in example
