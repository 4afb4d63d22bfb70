"""sftp against a real SFTP server on loopback (tasks.sandbox.sftp): host keys, atomic replace, auth."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from datetime import date
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import openpyxl
import pandas as pd
import paramiko
import pytest

from tasks.config.loader import ConfigError
from tasks.config.models import DestinationConfig
from tasks.destinations.base import build_destination
from tasks.destinations.rendering import render
from tasks.destinations.sftp import HostKeyError, Sftp, SftpDeliveryError
from tasks.sandbox.sftp import LocalSFTPServer
from tasks.settings import RunWindow

WINDOW = RunWindow(date(2026, 11, 24), ZoneInfo("Asia/Ho_Chi_Minh"))
CONFIG_FILE = Path("config/destinations.yaml")
COLUMNS = ["customer_key", "full_name", "phone", "province"]
PASSWORD = "correct horse battery staple"


def _audience(n: int = 2) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "customer_key": ["K1", "K2", "K3"][:n],
            "full_name": ["Nguyễn Thị Hoa", "Đặng Văn Đức", "Trần Văn An"][:n],
            "phone": ["+84912345678", "+84987654321", "+84901112223"][:n],
            "province": ["Hồ Chí Minh", "Đà Nẵng", "Hà Nội"][:n],
        }
    )


@pytest.fixture
def sftp_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[LocalSFTPServer]:
    with LocalSFTPServer(tmp_path / "sftp-root", username="marketing", password=PASSWORD) as srv:
        conn = {"host": srv.host, "port": srv.port, "login": "marketing", "password": PASSWORD}
        monkeypatch.setenv("AIRFLOW_CONN_SFTP_PARTNER", json.dumps(conn))
        yield srv


def _dest(**options: Any) -> Sftp:
    options.setdefault("connection", "sftp_partner")
    options.setdefault("columns", COLUMNS)
    dest = build_destination("partner", DestinationConfig(kind="sftp", options=options), CONFIG_FILE)
    assert isinstance(dest, Sftp)
    return dest


def _files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def test_upload_lands_with_the_right_content_via_a_temp_name(sftp_server: LocalSFTPServer) -> None:
    delivery = _dest(host_key_fingerprint=sftp_server.fingerprint, remote_dir="outbound").deliver(
        "vip", "VIP", _audience(), WINDOW
    )
    root = Path(sftp_server.root)
    assert _files(root) == ["outbound/2026-11-24/vip.csv"]
    assert (root / "outbound/2026-11-24/vip.csv").read_bytes() == render(_audience(), COLUMNS, "csv")
    assert delivery.location == f"sftp://127.0.0.1:{sftp_server.port}/outbound/2026-11-24/vip.csv"
    assert delivery.members == 2
    writes = [op for op in sftp_server.operations if op[0] == "open-write"]
    assert len(writes) == 1 and writes[0][1].startswith("/outbound/2026-11-24/.vip.csv.")  # never the final name
    assert ("posix-rename", writes[0][1], "/outbound/2026-11-24/vip.csv") in sftp_server.operations


def test_hashed_known_hosts_entry_and_key_auth(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    client_key = paramiko.ECDSAKey.generate()
    pem = io.StringIO()
    client_key.write_private_key(pem)
    with LocalSFTPServer(tmp_path / "root", username="agency", authorized_keys=[client_key]) as srv:
        monkeypatch.setenv(
            "AIRFLOW_CONN_SFTP_AGENCY",
            json.dumps({"host": f"127.0.0.1:{srv.port}", "login": "agency", "extra": {"private_key": pem.getvalue()}}),
        )
        known_hosts = tmp_path / "known_hosts"
        other = paramiko.ECDSAKey.generate()
        hashed = paramiko.HostKeys.hash_host(f"[127.0.0.1]:{srv.port}")  # as with HashKnownHosts yes
        known_hosts.write_text(
            f"other.example {other.get_name()} {other.get_base64()}\n"
            f"{hashed} {srv.host_key.get_name()} {srv.host_key.get_base64()}\n"
        )
        _dest(connection="sftp_agency", known_hosts=str(known_hosts), remote_dir="/drop", format="xlsx").deliver(
            "vip", "Khách VIP", _audience(), WINDOW
        )
        rows = list(
            openpyxl.load_workbook(Path(srv.root) / "drop/2026-11-24/vip.xlsx").active.iter_rows(values_only=True)
        )
        assert rows[0] == tuple(COLUMNS) and rows[1] == ("K1", "Nguyễn Thị Hoa", "+84912345678", "Hồ Chí Minh")


def test_fingerprint_mismatch_refuses_before_login_and_uploads_nothing(sftp_server: LocalSFTPServer) -> None:
    impostor = paramiko.ECDSAKey.generate().fingerprint
    with pytest.raises(HostKeyError) as exc:
        _dest(host_key_fingerprint=impostor).deliver("vip", "VIP", _audience(), WINDOW)
    msg = str(exc.value)
    assert f"HOST KEY MISMATCH for SFTP server 127.0.0.1:{sftp_server.port}" in msg
    assert sftp_server.fingerprint in msg and impostor in msg
    assert "Nothing was uploaded" in msg and "update host_key_fingerprint" in msg
    assert PASSWORD not in msg
    assert _files(Path(sftp_server.root)) == [] and sftp_server.operations == [] and sftp_server.logins == 0


@pytest.mark.parametrize("case", ["unknown", "changed", "no_file"])
def test_known_hosts_without_the_servers_key_refuses(sftp_server: LocalSFTPServer, tmp_path: Path, case: str) -> None:
    known_hosts = tmp_path / "known_hosts"
    other = paramiko.ECDSAKey.generate()
    if case == "unknown":
        known_hosts.write_text(f"elsewhere.example {other.get_name()} {other.get_base64()}\n")
    elif case == "changed":
        known_hosts.write_text(f"[127.0.0.1]:{sftp_server.port} {other.get_name()} {other.get_base64()}\n")
    with pytest.raises(HostKeyError) as exc:
        _dest(known_hosts=str(known_hosts)).deliver("vip", "VIP", _audience(), WINDOW)
    msg = str(exc.value)
    assert f"127.0.0.1:{sftp_server.port}" in msg and "Nothing was uploaded" in msg
    if case == "unknown":
        assert "unknown host key" in msg and f"ssh-keyscan -p {sftp_server.port} 127.0.0.1 >> {known_hosts}" in msg
        assert f"host_key_fingerprint: {sftp_server.fingerprint}" in msg
    elif case == "changed":
        assert "HOST KEY MISMATCH" in msg and other.fingerprint in msg and "ssh-keygen -R" in msg
    else:
        assert "does not exist" in msg
    assert _files(Path(sftp_server.root)) == [] and sftp_server.logins == 0


@pytest.mark.parametrize("posix_rename", [True, False])
def test_rerun_replaces_the_file_whole(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, posix_rename: bool) -> None:
    with LocalSFTPServer(tmp_path / "root", password=PASSWORD, posix_rename=posix_rename) as srv:
        monkeypatch.setenv(
            "AIRFLOW_CONN_SFTP_PARTNER",
            json.dumps({"host": "127.0.0.1", "port": srv.port, "login": "marketing", "password": PASSWORD}),
        )
        dest = _dest(host_key_fingerprint=srv.fingerprint)
        dest.deliver("vip", "VIP", _audience(3), WINDOW)
        dest.deliver("vip", "VIP", _audience(1), WINDOW)
        root = Path(srv.root)
        assert _files(root) == ["2026-11-24/vip.csv"]  # no temp or set-aside file left behind
        assert (root / "2026-11-24/vip.csv").read_bytes() == render(_audience(1), COLUMNS, "csv")
        assert not [op for op in srv.operations if op[0] == "open-write" and op[1] == "/2026-11-24/vip.csv"]
        renames = [op[0] for op in srv.operations if "rename" in op[0]]
        assert renames == (["posix-rename"] * 2 if posix_rename else ["rename", "rename", "rename"])


def test_wrong_password_is_a_clear_error_without_the_secret(
    sftp_server: LocalSFTPServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(
        "AIRFLOW_CONN_SFTP_PARTNER",
        json.dumps({"host": "127.0.0.1", "port": sftp_server.port, "login": "marketing", "password": "wrong-pw"}),
    )
    with pytest.raises(SftpDeliveryError) as exc:
        _dest(host_key_fingerprint=sftp_server.fingerprint).deliver("vip", "VIP", _audience(), WINDOW)
    assert "refused login 'marketing' with the password from connection 'sftp_partner'" in str(exc.value)
    assert "wrong-pw" not in str(exc.value)
    assert _files(Path(sftp_server.root)) == []


def test_host_identity_is_required_by_config() -> None:
    with pytest.raises(ConfigError, match=r"set known_hosts .* or host_key_fingerprint"):
        _dest()
    with pytest.raises(ConfigError, match="is not a SHA256 fingerprint"):
        _dest(host_key_fingerprint="MD5:16:27:ac:a5:76:28:2d:36:63:1b:56:4d:eb:df:a6:48")
    assert _dest(host_key_fingerprint="SHA256:" + "b" * 43 + "=").options.host_key_fingerprint == "SHA256:" + "b" * 43
