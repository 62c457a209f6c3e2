"""A PostgreSQL cluster of a test's own (initdb into a temporary directory, a spare port), so a test can
restart the database or starve it of connections without touching the machine's shared server; and a TCP proxy
that a test can cut, so the processes behind it lose the database while the test itself keeps it.

PostgreSQL refuses to run as root: as root the cluster belongs to the `postgres` user (runuser)."""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import pytest
from django.conf import settings

from tests.helpers import child_database_url
from tests.processes import free_port


def _bin(name: str) -> str:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    if not found:
        raise RuntimeError(f"PostgreSQL's {name} is not installed (/usr/lib/postgresql/*/bin)")
    return found[-1]


class PrivatePostgres:
    """initdb, start, stop and restart one cluster; `url(db)` for clients. Trust authentication on 127.0.0.1."""

    def __init__(self, *, max_connections: int = 100) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="cg-pg-", dir="/tmp"))
        self.data = self.root / "data"
        self.port = free_port()
        self.max_connections = max_connections
        self.as_postgres = os.geteuid() == 0
        if self.as_postgres:
            entry = pwd.getpwnam("postgres")
            os.chown(self.root, entry.pw_uid, entry.pw_gid)
        self._run(_bin("initdb"), "-D", str(self.data), "-A", "trust", "-U", "postgres", "--no-sync", "-E", "UTF8")

    def _run(self, *argv: str) -> None:
        command = ["runuser", "-u", "postgres", "--", *argv] if self.as_postgres else list(argv)
        subprocess.run(command, check=True, capture_output=True, timeout=120)

    def start(self) -> None:
        options = (
            f"-p {self.port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={self.root} "
            f"-c max_connections={self.max_connections} -c fsync=off -c synchronous_commit=off"
        )
        self._run(_bin("pg_ctl"), "-D", str(self.data), "-o", options, "-l", str(self.root / "log"), "-w", "start")

    def stop(self, mode: str = "fast") -> None:
        self._run(_bin("pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop")

    def restart(self, down_seconds: float = 0.0) -> None:
        """Stop (fast: every connection is cut), stay down a moment, start again."""
        self.stop()
        time.sleep(down_seconds)
        self.start()

    def create_database(self, name: str) -> None:
        import psycopg

        with psycopg.connect(self.url("postgres"), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')

    def url(self, db: str) -> str:
        return f"postgres://postgres@127.0.0.1:{self.port}/{db}"

    def close(self) -> None:
        with contextlib.suppress(subprocess.CalledProcessError):  # not running
            self.stop(mode="immediate")
        shutil.rmtree(self.root, ignore_errors=True)


class TcpProxy:
    """Forwards a spare port on 127.0.0.1 to `target_port`. `cut()` drops every connection and refuses new ones,
    as a database that went away would (what the processes started on `port` see); `resume()` listens again."""

    def __init__(self, target_port: int, target_host: str = "127.0.0.1") -> None:
        self.port = free_port()
        self.target = (target_host, target_port)
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self._listening: threading.Event | None = None
        self.resume()

    def resume(self) -> None:
        server = socket.create_server(("127.0.0.1", self.port))  # SO_REUSEADDR: the same port again
        server.settimeout(0.1)
        self._listening = listening = threading.Event()
        listening.set()
        threading.Thread(target=self._accept, args=(server, listening), daemon=True).start()

    def _accept(self, server: socket.socket, listening: threading.Event) -> None:
        with server:
            while listening.is_set():
                try:
                    client, _ = server.accept()
                except TimeoutError:
                    continue
                try:
                    upstream = socket.create_connection(self.target, timeout=5)
                except OSError:
                    client.close()
                    continue
                client.settimeout(None)
                upstream.settimeout(None)
                with self._lock:
                    self._sockets += [client, upstream]
                for source, sink in ((client, upstream), (upstream, client)):
                    threading.Thread(target=self._pipe, args=(source, sink), daemon=True).start()

    @staticmethod
    def _pipe(source: socket.socket, sink: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                sink.sendall(data)
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)

    def cut(self) -> None:
        if self._listening is not None:
            self._listening.clear()
            self._listening = None
        with self._lock:
            cut, self._sockets = self._sockets, []
        for sock in cut:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()
        time.sleep(0.3)  # the accept loop notices within its 0.1 s timeout and closes the port

    close = cut


def database_proxy() -> tuple[TcpProxy, str]:
    """A TcpProxy to the test database and the DATABASE_URL through it, for a child process (a web server) whose
    database the test can take away; skips the test off PostgreSQL."""
    db = settings.DATABASES["default"]
    if db["ENGINE"] != "django.db.backends.postgresql":
        pytest.skip("the proxy stands between the web server and PostgreSQL (make test provides it)")
    port = int(db["PORT"] or 5432)
    proxy = TcpProxy(port, db["HOST"] or "127.0.0.1")
    return proxy, child_database_url().replace(f":{port}/", f":{proxy.port}/", 1)
