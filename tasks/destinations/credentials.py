"""Platform credentials from Airflow Connections, never from files in the repository.

A destination names an Airflow connection id in destinations.yaml (``connection: mailchimp_default``).
The connection is looked up the way Airflow itself does: the ``AIRFLOW_CONN_<ID>`` environment
variable first (JSON or URI form, so the CLI and tests work without an Airflow metadata DB), then
Airflow's own lookup (secrets backends, then the metadata DB) when running inside Airflow.
Credentials are held in memory only; ``repr`` hides them so they cannot reach a log by accident.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit


class MissingCredentials(Exception):
    pass


@dataclass(frozen=True)
class Credential:
    conn_id: str
    login: str | None = field(default=None, repr=False)
    password: str | None = field(default=None, repr=False)
    host: str | None = None
    extra: dict[str, Any] = field(default_factory=dict, repr=False)

    def require_password(self, what: str) -> str:
        if not self.password:
            raise MissingCredentials(
                f"connection {self.conn_id!r} has no password; put the {what} in its password field "
                f'(e.g. AIRFLOW_CONN_{self.conn_id.upper()}=\'{{"password": "..."}}\' or the Airflow UI)'
            )
        return self.password


def _parse(conn_id: str, raw: str) -> Credential:
    raw = raw.strip()
    if raw.startswith("{"):
        data = json.loads(raw)
        extra = data.get("extra") or {}
        if isinstance(extra, str):
            extra = json.loads(extra) if extra else {}
        host = data.get("host")
        if host and data.get("port"):
            host = f"{host}:{data['port']}"
        return Credential(conn_id, data.get("login"), data.get("password"), host, dict(extra))
    parts = urlsplit(raw)
    host = parts.hostname
    if host and parts.port:
        host = f"{host}:{parts.port}"
    extra = dict(parse_qsl(parts.query))
    return Credential(
        conn_id,
        unquote(parts.username) if parts.username else None,
        unquote(parts.password) if parts.password else None,
        host,
        extra,
    )


def get_credential(conn_id: str) -> Credential:
    env = os.environ.get(f"AIRFLOW_CONN_{conn_id.upper()}")
    if env:
        return _parse(conn_id, env)
    try:
        from airflow.sdk import Connection

        conn = Connection.get(conn_id)
    except Exception:  # not inside Airflow, or no such connection: one clear message below
        conn = None
    if conn is not None:
        host = f"{conn.host}:{conn.port}" if conn.host and conn.port else conn.host
        return Credential(conn_id, conn.login, conn.password, host, dict(conn.extra_dejson or {}))
    raise MissingCredentials(
        f"no Airflow connection {conn_id!r}: create it in the Airflow UI (Admin > Connections) or set the "
        f'environment variable AIRFLOW_CONN_{conn_id.upper()} (JSON: {{"password": "<api key>"}})'
    )
