"""Audience files uploaded to a partner's or agency's SFTP server.

The files carry personal data, so the one thing this destination must never do is hand them to a
server it has not verified. There is no "accept unknown host keys" switch: the server's host key is
checked against a ``known_hosts`` file or a pinned ``host_key_fingerprint`` (``SHA256:...``, exactly as
``ssh-keygen -lf`` prints it) right after the key exchange and before authentication, so on an
unknown or changed key neither the password nor a byte of the file leaves the machine. The error
says which host, which key it offered, and how to trust it after checking with its administrator.

Each file is uploaded under a temporary name in the target folder and renamed into place with the
OpenSSH ``posix-rename`` extension, which replaces atomically: whatever polls the folder on the
other side never picks up half a file, and a re-run of the same date replaces the file whole. On
servers without the extension, the old file is moved aside first (a moment with no file, never a
partial one).

Credentials come from an Airflow connection: login plus password, or a private key in the extra
(``private_key`` as text or ``key_file`` as a path on the worker, optional ``private_key_passphrase``).
"""

from __future__ import annotations

import contextlib
import errno
import io
import logging
import os
import posixpath
import re
import socket
import uuid
from typing import ClassVar

import pandas as pd
import paramiko
from pydantic import Field, field_validator, model_validator

from tasks import settings
from tasks.destinations.base import Delivery, register
from tasks.destinations.credentials import Credential, MissingCredentials, get_credential
from tasks.destinations.rendering import FileOptions, file_name, render
from tasks.settings import RunWindow

log = logging.getLogger(__name__)

_FINGERPRINT = re.compile(r"SHA256:[A-Za-z0-9+/]{43}")
_RSA_ALGORITHMS = ("rsa-sha2-512", "rsa-sha2-256", "ssh-rsa")  # one "ssh-rsa" key in known_hosts


class SftpDeliveryError(RuntimeError):
    """Upload failed; the message names the server and what to check (never a secret)."""


class HostKeyError(SftpDeliveryError):
    """The server's host key is unknown or not the expected one: nothing was sent."""


class SftpOptions(FileOptions):
    connection: str  # Airflow connection: host[:port], login, password or private key in extra
    host: str | None = None  # overrides the connection's host
    port: int | None = Field(None, ge=1, le=65535)
    remote_dir: str = "."  # relative paths are relative to the login's home folder
    known_hosts: str | None = None
    host_key_fingerprint: str | None = None
    timeout_s: float = Field(30, gt=0)

    @field_validator("host_key_fingerprint")
    @classmethod
    def _fingerprint(cls, value: str | None) -> str | None:
        if value is None:
            return None
        value = value.strip().rstrip("=")
        if not _FINGERPRINT.fullmatch(value):
            raise ValueError(
                f"host_key_fingerprint {value!r} is not a SHA256 fingerprint; expected 'SHA256:' and 43 base64 "
                "characters, as printed by `ssh-keyscan -p PORT HOST | ssh-keygen -lf -`"
            )
        return value

    @model_validator(mode="after")
    def _verified(self) -> SftpOptions:
        if not self.known_hosts and not self.host_key_fingerprint:
            raise ValueError(
                "set known_hosts (a file with the server's key) or host_key_fingerprint (SHA256:...): "
                "audience files are only sent to a server whose identity is checked"
            )
        return self


@register("sftp")
class Sftp:
    kind: ClassVar[str]
    Options = SftpOptions

    def __init__(self, name: str, options: SftpOptions) -> None:
        self.name = name
        self.options = options

    def deliver(self, segment: str, title: str, audience: pd.DataFrame, window: RunWindow) -> Delivery:
        data = render(audience, self.options.columns, self.options.format, title=title)
        cred = get_credential(self.options.connection)
        host, port = self._address(cred)
        transport = self._connect(host, port)
        try:
            self._authenticate(transport, cred, host, port)
            sftp = paramiko.SFTPClient.from_transport(transport)
            if sftp is None:
                raise SftpDeliveryError(f"SFTP server {host}:{port} refused to open an SFTP session")
            channel = sftp.get_channel()
            if channel is not None:
                channel.settimeout(self.options.timeout_s)
            folder = posixpath.join(self.options.remote_dir, window.run_date.isoformat())
            path = upload(sftp, folder, file_name(segment, self.options.format), data)
            log.info("uploaded %s (%d bytes, %d members) to sftp %s:%d", path, len(data), len(audience), host, port)
        except (OSError, paramiko.SSHException) as exc:
            raise SftpDeliveryError(f"upload to SFTP server {host}:{port} failed: {exc}") from exc
        finally:
            transport.close()
        return Delivery(self.name, segment, len(audience), f"sftp://{host}:{port}{_absolute(path)}")

    # -- connection -------------------------------------------------------------------------------

    def _address(self, cred: Credential) -> tuple[str, int]:
        host, port = self.options.host, self.options.port
        if cred.host:
            conn_host, _, conn_port = cred.host.rpartition(":") if ":" in cred.host else (cred.host, "", "")
            host = host or conn_host
            if port is None and conn_port.isdigit():
                port = int(conn_port)
        if not host:
            raise MissingCredentials(
                f"connection {cred.conn_id!r} has no host and the destination sets none; "
                "put the SFTP server in the connection's host (and port) or in the host option"
            )
        return host, port or 22

    def _connect(self, host: str, port: int) -> paramiko.Transport:
        try:
            sock = socket.create_connection((host, port), timeout=self.options.timeout_s)
        except OSError as exc:
            raise SftpDeliveryError(f"cannot reach SFTP server {host}:{port}: {exc}") from exc
        transport = paramiko.Transport(sock)
        try:
            transport.banner_timeout = self.options.timeout_s
            transport.auth_timeout = self.options.timeout_s
            self._prefer_known_key_types(transport, host, port)
            transport.start_client(timeout=self.options.timeout_s)
            self._check_host_key(host, port, transport.get_remote_server_key())
        except HostKeyError:
            transport.close()
            raise
        except (OSError, EOFError, paramiko.SSHException) as exc:
            transport.close()
            raise SftpDeliveryError(f"SSH handshake with {host}:{port} failed: {exc}") from exc
        return transport

    def _known(self, host: str, port: int) -> tuple[str, str, dict[str, paramiko.PKey]]:
        """(known_hosts path, name looked up, {key type: key}) -- empty when the host is not listed."""
        assert self.options.known_hosts is not None
        path = settings.resolve(os.path.expanduser(self.options.known_hosts))
        if not path.is_file():
            raise HostKeyError(
                f"known_hosts file {path} does not exist, so the key of SFTP server {host}:{port} cannot be "
                f"checked. Nothing was uploaded. Create it with the server's key (`ssh-keyscan -p {port} {host} >> "
                f"{path}`, after confirming the fingerprint with its administrator) or set host_key_fingerprint"
            )
        name = host if port == 22 else f"[{host}]:{port}"
        entries = paramiko.HostKeys(str(path)).lookup(name)
        return str(path), name, {t: entries[t] for t in entries} if entries is not None else {}

    def _prefer_known_key_types(self, transport: paramiko.Transport, host: str, port: int) -> None:
        """Ask for a host key type known_hosts has, so a server with several keys is not falsely "unknown"."""
        if not self.options.known_hosts:
            return
        _, _, known = self._known(host, port)
        wanted = {a for t in known for a in (_RSA_ALGORITHMS if t == "ssh-rsa" else (t,))}
        options = transport.get_security_options()
        current = list(options.key_types)
        options.key_types = [k for k in current if k in wanted] + [k for k in current if k not in wanted]

    def _check_host_key(self, host: str, port: int, key: paramiko.PKey) -> None:
        offered = f"{key.get_name()} {key.fingerprint}"
        pinned = self.options.host_key_fingerprint
        if pinned is not None and key.fingerprint != pinned:
            raise HostKeyError(
                f"HOST KEY MISMATCH for SFTP server {host}:{port}: it offered {offered}, but host_key_fingerprint "
                f"is {pinned}. Nothing was uploaded. Either someone is intercepting the connection or the server's "
                "key changed: confirm the new fingerprint with the server's administrator, then update "
                "host_key_fingerprint"
            )
        if not self.options.known_hosts:
            return
        path, name, known = self._known(host, port)
        if not known:
            raise HostKeyError(
                f"unknown host key for SFTP server {host}:{port}: {path} has no entry for {name} "
                f"(it offered {offered}). "
                f"Nothing was uploaded. Confirm that fingerprint with the server's administrator, then add the key "
                f"(`ssh-keyscan -p {port} {host} >> {path}`) or set host_key_fingerprint: {key.fingerprint}"
            )
        expected = known.get(key.get_name())
        if expected is None or expected.asbytes() != key.asbytes():
            listed = ", ".join(f"{k.get_name()} {k.fingerprint}" for k in known.values())
            raise HostKeyError(
                f"HOST KEY MISMATCH for SFTP server {host}:{port}: it offered {offered}, but {path} lists {listed} for "
                f"{name}. "
                "Nothing was uploaded. Either someone is intercepting the connection or the server's key changed: "
                f"confirm with the server's administrator, then replace the entry (`ssh-keygen -R '{name}' "
                f"-f {path}` and add the new key)"
            )

    def _authenticate(self, transport: paramiko.Transport, cred: Credential, host: str, port: int) -> None:
        if not cred.login:
            raise MissingCredentials(f"connection {cred.conn_id!r} has no login for SFTP server {host}:{port}")
        key = _private_key(cred)
        try:
            if key is not None:
                transport.auth_publickey(cred.login, key)
            elif cred.password:
                transport.auth_password(cred.login, cred.password)
            else:
                raise MissingCredentials(
                    f"connection {cred.conn_id!r} has neither a password nor a private key "
                    f"(extra: private_key or key_file) for SFTP server {host}:{port}"
                )
        except paramiko.AuthenticationException as exc:
            how = "private key" if key is not None else "password"
            raise SftpDeliveryError(
                f"SFTP server {host}:{port} refused login {cred.login!r} with the {how} from connection "
                f"{cred.conn_id!r}; check the connection"
            ) from exc
        if not transport.is_authenticated():
            raise SftpDeliveryError(f"SFTP server {host}:{port} did not accept login {cred.login!r}")


def _private_key(cred: Credential) -> paramiko.PKey | None:
    passphrase = cred.extra.get("private_key_passphrase") or None
    if cred.extra.get("key_file"):
        path = os.path.expanduser(str(cred.extra["key_file"]))
        try:
            return paramiko.PKey.from_path(path, password=passphrase)
        except (OSError, paramiko.SSHException) as exc:
            raise MissingCredentials(f"connection {cred.conn_id!r}: cannot load key_file {path}: {exc}") from None
    text = cred.extra.get("private_key")
    if not text:
        return None
    text = str(text).replace("\\n", "\n")  # keys pasted into one-line env values
    for cls in (paramiko.Ed25519Key, paramiko.ECDSAKey, paramiko.RSAKey):
        with contextlib.suppress(paramiko.SSHException, ValueError):
            return cls.from_private_key(io.StringIO(text), password=passphrase)
    raise MissingCredentials(
        f"connection {cred.conn_id!r}: extra.private_key is not an OpenSSH/PEM Ed25519, ECDSA or RSA private key "
        "(or its private_key_passphrase is wrong)"
    )


# -- upload -----------------------------------------------------------------------------------------


def upload(sftp: paramiko.SFTPClient, folder: str, name: str, data: bytes) -> str:
    """Put ``data`` at ``folder/name`` via a temporary name and an atomic rename; returns the path."""
    makedirs(sftp, folder)
    final = posixpath.join(folder, name)
    tmp = posixpath.join(folder, f".{name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        sftp.putfo(io.BytesIO(data), tmp, file_size=len(data), confirm=True)
        _replace(sftp, tmp, final)
    except BaseException:
        with contextlib.suppress(OSError, paramiko.SSHException):
            sftp.remove(tmp)
        raise
    return sftp.normalize(final)


def _replace(sftp: paramiko.SFTPClient, tmp: str, final: str) -> None:
    try:
        sftp.posix_rename(tmp, final)
        return
    except OSError as exc:
        if exc.errno in (errno.ENOENT, errno.EACCES):
            raise
        log.warning("SFTP server has no posix-rename (%s); replacing %s in two steps", exc, final)
    aside = f"{final}.{uuid.uuid4().hex[:8]}.old"
    had_old = _exists(sftp, final)
    if had_old:
        sftp.rename(final, aside)
    try:
        sftp.rename(tmp, final)
    except BaseException:
        if had_old:
            with contextlib.suppress(OSError):
                sftp.rename(aside, final)
        raise
    if had_old:
        with contextlib.suppress(OSError):
            sftp.remove(aside)


def _exists(sftp: paramiko.SFTPClient, path: str) -> bool:
    try:
        sftp.stat(path)
    except FileNotFoundError:
        return False
    except OSError as exc:
        if exc.errno == errno.ENOENT:
            return False
        raise
    return True


def makedirs(sftp: paramiko.SFTPClient, folder: str) -> None:
    current = "/" if folder.startswith("/") else ""
    for part in [p for p in folder.split("/") if p and p != "."]:
        current = posixpath.join(current, part) if current else part
        if not _exists(sftp, current):
            try:
                sftp.mkdir(current)
            except OSError:
                if not _exists(sftp, current):  # another run created it meanwhile: fine
                    raise


def _absolute(path: str) -> str:
    return path if path.startswith("/") else f"/{path}"
