"""A real SFTP server on loopback, serving one local folder, for tests and the sandbox demo.

The ``sftp`` destination is only worth trusting if it has been seen to refuse a host key it does not
know, upload under a temporary name and rename into place. That needs an actual SSH server speaking
the protocol, not a mocked paramiko client. This one is built on paramiko's server classes: a
generated host key (or one you pass), password and/or public-key authentication, a jail under
``root`` (no path escapes it), the OpenSSH ``posix-rename`` extension (switchable off, to exercise a
client's fallback), and a log of the file operations clients performed, so a test can assert that
the final name was never opened for writing.

Run it by hand for the demo::

    python -m tasks.sandbox.sftp --root /tmp/sftp --user marketing --password secret --port 2222
"""

from __future__ import annotations

import argparse
import contextlib
import hmac
import os
import socket
import threading
from collections.abc import Iterable
from pathlib import Path
from types import TracebackType
from typing import Any

import paramiko
from paramiko.sftp import SFTP_OK, SFTP_OP_UNSUPPORTED, SFTP_PERMISSION_DENIED


class _Handle(paramiko.SFTPHandle):
    def __init__(self, path: str, flags: int) -> None:
        super().__init__(flags)
        self.path = path

    def stat(self) -> paramiko.SFTPAttributes | int:
        try:
            return paramiko.SFTPAttributes.from_stat(os.fstat(self.readfile.fileno()))
        except OSError as e:
            return paramiko.SFTPServer.convert_errno(e.errno)

    def chattr(self, attr: paramiko.SFTPAttributes) -> int:
        try:
            paramiko.SFTPServer.set_file_attr(self.path, attr)
        except OSError as e:
            return paramiko.SFTPServer.convert_errno(e.errno)
        return SFTP_OK


class _Auth(paramiko.ServerInterface):
    """Per-connection SSH server side: authentication, and the folder the SFTP subsystem serves."""

    def __init__(self, owner: LocalSFTPServer) -> None:
        self.owner = owner

    def get_allowed_auths(self, username: str) -> str:
        kinds = []
        if self.owner.password is not None:
            kinds.append("password")
        if self.owner.authorized_keys:
            kinds.append("publickey")
        return ",".join(kinds) or "none"

    def check_auth_password(self, username: str, password: str) -> int:
        ok = (
            self.owner.password is not None
            and hmac.compare_digest(username, self.owner.username)
            and hmac.compare_digest(password.encode(), self.owner.password.encode())
        )
        return self._result(ok)

    def check_auth_publickey(self, username: str, key: paramiko.PKey) -> int:
        ok = username == self.owner.username and any(
            k.get_name() == key.get_name() and k.asbytes() == key.asbytes() for k in self.owner.authorized_keys
        )
        return self._result(ok)

    def _result(self, ok: bool) -> int:
        if ok:
            with self.owner._lock:
                self.owner.logins += 1
        return paramiko.AUTH_SUCCESSFUL if ok else paramiko.AUTH_FAILED

    def check_channel_request(self, kind: str, chanid: int) -> int:
        if kind == "session":
            return paramiko.OPEN_SUCCEEDED
        return paramiko.OPEN_FAILED_ADMINISTRATIVELY_PROHIBITED


class _Folder(paramiko.SFTPServerInterface):
    """SFTP operations on ``owner.root``; remote paths are absolute from the jail root ("/")."""

    def __init__(self, server: _Auth, *args: Any, **kwargs: Any) -> None:
        super().__init__(server, *args, **kwargs)
        self.owner = server.owner

    def _local(self, path: str) -> str:
        virtual = os.path.normpath("/" + path.replace("\\", "/"))
        return os.path.join(self.owner.root, virtual.lstrip("/"))

    def _log(self, op: str, *paths: str) -> None:
        self.owner.record(op, *(self.canonicalize(p) for p in paths))

    def canonicalize(self, path: str) -> str:
        return os.path.normpath("/" + path.replace("\\", "/")).replace("//", "/")

    def list_folder(self, path: str) -> list[paramiko.SFTPAttributes] | int:
        local = self._local(path)
        try:
            out = []
            for name in os.listdir(local):
                attr = paramiko.SFTPAttributes.from_stat(os.lstat(os.path.join(local, name)))
                attr.filename = name
                out.append(attr)
            return out
        except OSError as e:
            return paramiko.SFTPServer.convert_errno(e.errno)

    def stat(self, path: str) -> paramiko.SFTPAttributes | int:
        try:
            return paramiko.SFTPAttributes.from_stat(os.stat(self._local(path)))
        except OSError as e:
            return paramiko.SFTPServer.convert_errno(e.errno)

    def lstat(self, path: str) -> paramiko.SFTPAttributes | int:
        try:
            return paramiko.SFTPAttributes.from_stat(os.lstat(self._local(path)))
        except OSError as e:
            return paramiko.SFTPServer.convert_errno(e.errno)

    def open(self, path: str, flags: int, attr: paramiko.SFTPAttributes) -> _Handle | int:
        local = self._local(path)
        if os.path.islink(local):
            return SFTP_PERMISSION_DENIED
        try:
            mode = getattr(attr, "st_mode", None)
            fd = os.open(local, flags, mode if mode is not None else 0o644)
        except OSError as e:
            return paramiko.SFTPServer.convert_errno(e.errno)
        if flags & os.O_WRONLY:
            fmode = "ab" if flags & os.O_APPEND else "wb"
        elif flags & os.O_RDWR:
            fmode = "a+b" if flags & os.O_APPEND else "r+b"
        else:
            fmode = "rb"
        self._log("open-write" if flags & (os.O_WRONLY | os.O_RDWR) else "open-read", path)
        handle = _Handle(local, flags)
        f = os.fdopen(fd, fmode)
        handle.readfile = f
        handle.writefile = f
        return handle

    def remove(self, path: str) -> int:
        try:
            os.remove(self._local(path))
        except OSError as e:
            return paramiko.SFTPServer.convert_errno(e.errno)
        self._log("remove", path)
        return SFTP_OK

    def rename(self, oldpath: str, newpath: str) -> int:
        """Plain SFTP rename: refuses to overwrite, as the SFTP v3 draft and OpenSSH do."""
        old, new = self._local(oldpath), self._local(newpath)
        if os.path.exists(new):
            return paramiko.SFTPServer.convert_errno(17)  # EEXIST -> SFTP_FAILURE
        try:
            os.rename(old, new)
        except OSError as e:
            return paramiko.SFTPServer.convert_errno(e.errno)
        self._log("rename", oldpath, newpath)
        return SFTP_OK

    def posix_rename(self, oldpath: str, newpath: str) -> int:
        if not self.owner.posix_rename:
            return SFTP_OP_UNSUPPORTED
        try:
            os.replace(self._local(oldpath), self._local(newpath))
        except OSError as e:
            return paramiko.SFTPServer.convert_errno(e.errno)
        self._log("posix-rename", oldpath, newpath)
        return SFTP_OK

    def mkdir(self, path: str, attr: paramiko.SFTPAttributes) -> int:
        try:
            os.mkdir(self._local(path))
        except OSError as e:
            return paramiko.SFTPServer.convert_errno(e.errno)
        self._log("mkdir", path)
        return SFTP_OK

    def rmdir(self, path: str) -> int:
        try:
            os.rmdir(self._local(path))
        except OSError as e:
            return paramiko.SFTPServer.convert_errno(e.errno)
        self._log("rmdir", path)
        return SFTP_OK

    def chattr(self, path: str, attr: paramiko.SFTPAttributes) -> int:
        try:
            paramiko.SFTPServer.set_file_attr(self._local(path), attr)
        except OSError as e:
            return paramiko.SFTPServer.convert_errno(e.errno)
        return SFTP_OK


class LocalSFTPServer:
    """An SFTP server on ``host`` (loopback by default) serving ``root``; use as a context manager.

    ``port=0`` picks a free port (read ``.port`` after ``start``). Without ``host_key`` a fresh ECDSA
    key is generated (fast, and accepted by every client). ``known_hosts_line`` and ``fingerprint``
    are what a client must be told to trust this server.
    """

    def __init__(
        self,
        root: Path | str,
        *,
        username: str = "marketing",
        password: str | None = None,
        authorized_keys: Iterable[paramiko.PKey] = (),
        host_key: paramiko.PKey | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        posix_rename: bool = True,
    ) -> None:
        self.root = str(Path(root).resolve())
        self.username = username
        self.password = password
        self.authorized_keys = list(authorized_keys)
        self.host_key: paramiko.PKey = host_key or paramiko.ECDSAKey.generate()
        self.host = host
        self.port = port
        self.posix_rename = posix_rename
        self.operations: list[tuple[str, ...]] = []  # (op, path[, new path]) in the order performed
        self.logins = 0
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._transports: list[paramiko.Transport] = []
        self._channels: list[paramiko.Channel] = []
        self._stopping = threading.Event()

    @property
    def fingerprint(self) -> str:
        """``SHA256:...`` exactly as ``ssh-keygen -lf`` prints it."""
        return str(self.host_key.fingerprint)

    @property
    def known_hosts_line(self) -> str:
        name = self.host if self.port == 22 else f"[{self.host}]:{self.port}"
        return f"{name} {self.host_key.get_name()} {self.host_key.get_base64()}"

    def record(self, op: str, *paths: str) -> None:
        with self._lock:
            self.operations.append((op, *paths))

    def start(self) -> LocalSFTPServer:
        os.makedirs(self.root, exist_ok=True)
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, self.port))
        sock.listen(16)
        sock.settimeout(0.2)
        self._sock = sock
        self.port = sock.getsockname()[1]
        self._thread = threading.Thread(target=self._accept_loop, name=f"sftp-{self.port}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self._sock is not None:
            self._sock.close()
        with self._lock:
            transports, self._transports = self._transports, []
            self._channels.clear()
        for t in transports:
            t.close()

    def __enter__(self) -> LocalSFTPServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def _accept_loop(self) -> None:
        assert self._sock is not None
        while not self._stopping.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        transport = paramiko.Transport(conn)
        with self._lock:
            self._transports.append(transport)
        transport.add_server_key(self.host_key)
        transport.set_subsystem_handler("sftp", paramiko.SFTPServer, _Folder)
        auth = _Auth(self)
        try:
            transport.start_server(server=auth)
        except (paramiko.SSHException, EOFError, OSError):  # a client that hung up after seeing the host key
            transport.close()
            return
        channel = transport.accept(timeout=30)
        if channel is None:
            transport.close()
            return
        with self._lock:  # paramiko closes a channel that is garbage-collected: keep it until stop()
            self._channels.append(channel)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", required=True, help="folder to serve")
    parser.add_argument("--user", default="marketing")
    parser.add_argument("--password", default=os.environ.get("SFTP_PASSWORD"))
    parser.add_argument("--port", type=int, default=2222)
    parser.add_argument("--host-key", help="private key file for the host key (default: a new one per start)")
    args = parser.parse_args(argv)
    if not args.password:
        parser.error("give --password (or SFTP_PASSWORD): without it nobody could log in")
    host_key = paramiko.PKey.from_path(args.host_key) if args.host_key else None
    server = LocalSFTPServer(args.root, username=args.user, password=args.password, host_key=host_key, port=args.port)
    with server:
        print(f"SFTP on 127.0.0.1:{server.port}, serving {server.root}", flush=True)
        print(f"host key fingerprint: {server.fingerprint}", flush=True)
        print(f"known_hosts line:     {server.known_hosts_line}", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            threading.Event().wait()


if __name__ == "__main__":
    main()
