"""Helpers shared by the management commands: service errors become CLI errors, progress bars."""

import getpass
import sys
import time
from contextlib import contextmanager

from django.core.management.base import CommandError

from knowledge.errors import ServiceError
from knowledge.models import EmbeddingJob


@contextmanager
def service_errors_as_command_errors():
    try:
        yield
    except ServiceError as error:
        raise CommandError(str(error), returncode=2) from error


def actor_argument_add(parser) -> None:
    """`--actor NAME`: who runs the command, for the logs (default: the operating-system user)."""
    parser.add_argument("--actor", default="", help="who is acting, for the logs (default: the operating-system user)")


def cli_actor_name(actor: str = "") -> str:
    """"cli:<name>": how a command's actor reads in promotion logs and notifications."""
    name = (actor or "").strip()
    if not name:
        try:
            name = getpass.getuser()
        except (KeyError, OSError):  # no name for this uid (a bare container)
            name = "unknown"
    return f"cli:{name}"


def progress_bar(done: int, total: int, width: int = 30) -> str:
    share = done / total if total else 1.0
    filled = int(width * share)
    return f"[{'#' * filled}{'.' * (width - filled)}] {share:6.1%} {done}/{total}"


def wait_for_embedding_jobs(job_ids: list[int], *, stream=sys.stderr, poll_seconds: float = 0.5, timeout: float | None = None) -> list[EmbeddingJob]:
    """Block until the jobs finish, drawing one progress bar on the terminal."""
    started = time.monotonic()
    warned = False
    while True:
        jobs = list(EmbeddingJob.objects.filter(pk__in=job_ids))
        done = sum(job.embedded_chunks for job in jobs)
        total = sum(job.total_chunks for job in jobs)
        stream.write(f"\rembedding {progress_bar(done, total)} chunks")
        stream.flush()
        if all(job.is_finished for job in jobs):
            stream.write("\n")
            return jobs
        elapsed = time.monotonic() - started
        if not warned and elapsed > 30 and all(job.status == EmbeddingJob.Status.QUEUED for job in jobs):
            stream.write("\nno worker has picked the job up yet: is a Celery worker running? (`make run` starts one)\n")
            warned = True
        if timeout is not None and elapsed > timeout:
            stream.write("\n")
            raise CommandError(f"Embedding did not finish within {timeout:.0f} s; it goes on in the workers.", returncode=3)
        time.sleep(poll_seconds)
