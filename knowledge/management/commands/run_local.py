"""`manage.py run_local`: web (127.0.0.1:8000), one Celery worker and beat, until Ctrl-C.

The web process is gunicorn, as in production, not `runserver`: runserver starts a thread per
request and each thread keeps its own database connection for CONN_MAX_AGE, so about ten
concurrent clients exhausted PostgreSQL's connections (issue 14's probe). gunicorn's fixed
thread pool bounds the web's connections to WEB_WORKERS x WEB_THREADS.
"""

import signal
import subprocess
import sys
import time

from django.conf import settings
from django.core.management.base import BaseCommand

WEB_WORKERS = 2
WEB_THREADS = 4
# Seconds gunicorn keeps an idle client connection open. Its default, 2 s, races clients that
# reuse a connection after about that long: the server closes it as the next POST goes out, and
# the client sees the connection reset (a POST is not retried). Longer than any client's pause
# between requests makes that race rare; gthread keeps idle connections in its poller, not in
# a thread, so they cost no request slot.
WEB_KEEP_ALIVE_SECONDS = 75


def web_command(python: str, addr: str) -> list[str]:
    """The web server `make run` starts (tests/conftest.py starts the same one)."""
    return [
        python, "-m", "gunicorn", "config.wsgi:application", "--bind", addr,
        "--workers", str(WEB_WORKERS), "--threads", str(WEB_THREADS), "--timeout", "120",
        "--keep-alive", str(WEB_KEEP_ALIVE_SECONDS),
    ]  # fmt: skip


class Command(BaseCommand):
    help = "Run the web server, a Celery worker and Celery beat together; Ctrl-C stops all three."

    def add_arguments(self, parser):
        parser.add_argument("--addr", default="127.0.0.1:8000")

    def handle(self, *args, addr, **options):
        python = sys.executable
        schedule = settings.BASE_DIR / ".data" / "celerybeat-schedule"
        schedule.parent.mkdir(parents=True, exist_ok=True)
        commands = {
            "web": web_command(python, addr),
            "worker": [python, "-m", "celery", "-A", "config", "worker", "-Q", "default,embedding,training",
                       "--concurrency", "1", "--loglevel", "INFO"],
            "beat": [python, "-m", "celery", "-A", "config", "beat", "--schedule", str(schedule), "--loglevel", "INFO"],
        }
        processes = {name: subprocess.Popen(cmd, cwd=settings.BASE_DIR) for name, cmd in commands.items()}
        self.stdout.write(self.style.SUCCESS(f"ragloop is running at http://{addr}/  (Ctrl-C stops it)"))
        stopping = False

        def stop(*_):
            nonlocal stopping
            stopping = True

        signal.signal(signal.SIGINT, stop)
        signal.signal(signal.SIGTERM, stop)
        exit_code = 0
        while not stopping:
            for name, process in processes.items():
                if process.poll() is not None:
                    self.stderr.write(f"{name} exited with code {process.returncode}; stopping the others")
                    exit_code = process.returncode or 1
                    stopping = True
            time.sleep(0.5)
        for process in processes.values():
            if process.poll() is None:
                process.terminate()
        for process in processes.values():
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
        sys.exit(exit_code)
