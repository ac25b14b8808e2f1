"""Fine-tuning jobs on an OpenAI-compatible API: upload a chat JSONL file, start, follow and cancel a job.

The request and response shapes are those of OpenAI's /files and /fine_tuning/jobs endpoints.
Calls that fail transiently (429, 408, 5xx, timeouts, dropped connections) are retried with
exponential backoff, or after the server's Retry-After, within a RetryPolicy's bound on attempts
and on total waiting; any other 4xx fails at once with the server's message.

Why urllib and a small retry loop rather than the official `openai` SDK (which has retries with
backoff built in): the SDK retries every request alike, so a job creation whose response timed
out is sent again and may start a second paid job, while here creating a job is retried only
when the server surely did not take it (429, 503, connection refused); its retries are bounded
per request (max_retries) but not in total waiting, and it honours Retry-After only up to a
minute; its sleeps cannot be injected, so tests of the retry path would patch its internals.
Five plain JSON endpoints did not need the SDK and its three extra packages.
"""

from __future__ import annotations

import email.utils
import http.client
import json
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from rag.http_errors import body_snippet, http_error_detail
from rag.training import ProgressCallback, StopCheck, TrainingCancelled

TERMINAL_STATUSES = frozenset({"succeeded", "failed", "cancelled"})
# Statuses before any training step is reported; OpenAI also has "paused" on some accounts.
WAITING_STATUSES = frozenset({"validating_files", "queued"})


class FineTuningError(RuntimeError):
    """A fine-tuning API call failed; the message names the endpoint and never the API key."""


class FineTuningTimeout(FineTuningError):
    """A fine-tuning job was still running when wait_for_job's timeout ran out."""


def _sleep(seconds: float) -> None:
    time.sleep(seconds)


@dataclass(frozen=True)
class RetryPolicy:
    """How one API call is retried after a transient failure: at most `max_attempts` tries and
    `max_total_wait` seconds of waiting between them; waits double from `base_delay` up to
    `max_delay`, or are what the server's Retry-After asks (refused if it asks for more than the
    budget left). `sleep` defaults to this module's `_sleep`, looked up when a call waits."""

    max_attempts: int = 6
    max_total_wait: float = 300.0
    base_delay: float = 1.0
    max_delay: float = 60.0
    sleep: Callable[[float], None] | None = None

    def backoff(self, attempt: int) -> float:
        return min(self.max_delay, self.base_delay * 2 ** (attempt - 1))

    def wait(self, seconds: float) -> None:
        (self.sleep or _sleep)(seconds)


DEFAULT_RETRY = RetryPolicy()
# Answers that mean "try again later"; 503 and 429 also mean the request was not acted on.
TRANSIENT_HTTP_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
NOT_PROCESSED_HTTP_STATUSES = frozenset({429, 503})


class _TransientFailure(Exception):
    def __init__(self, message: str, *, retry_after: float | None = None, processed_maybe: bool = True) -> None:
        super().__init__(message)
        self.retry_after = retry_after
        # False when the server surely did nothing (a refused connection, 429, 503).
        self.processed_maybe = processed_maybe


def _retry_after_seconds(headers) -> float | None:
    """Seconds the server asks us to wait (Retry-After in seconds or as an HTTP date, or retry-after-ms)."""
    if headers is None:
        return None
    milliseconds = headers.get("retry-after-ms")
    if milliseconds:
        try:
            return max(0.0, float(milliseconds) / 1000)
        except ValueError:
            pass
    value = headers.get("Retry-After")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        moment = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return max(0.0, (moment - datetime.now(timezone.utc)).total_seconds())


def _endpoint(base_url: str, path: str) -> str:
    if not base_url.startswith(("http://", "https://")):
        # urllib would also open file:// and ftp:// URLs, which must never be reachable here.
        raise ValueError(f"base_url must start with http:// or https://, got {base_url!r}")
    return f"{base_url.rstrip('/')}/{path.lstrip('/')}"


def _call(
    *,
    method: str,
    url: str,
    api_key: str,
    body: bytes | None = None,
    content_type: str | None = None,
    timeout: float = 60,
    retry: RetryPolicy | None = None,
    repeatable: bool = True,
) -> dict[str, Any]:
    """One API call, retried after transient failures within `retry`'s bounds.

    `repeatable=False` (starting a job): a failure after which the server may have acted
    (a timeout, a 500) is not retried, so one call never starts two jobs.
    """
    retry = retry or DEFAULT_RETRY
    waited = 0.0
    attempt = 1
    while True:
        try:
            return _call_once(method=method, url=url, api_key=api_key, body=body, content_type=content_type, timeout=timeout)
        except _TransientFailure as failure:
            if not repeatable and failure.processed_maybe:
                raise FineTuningError(
                    f"{failure}; not sent again, since the server may have acted on it: check for the job "
                    "on the server before starting the run again"
                ) from None
            delay = failure.retry_after if failure.retry_after is not None else retry.backoff(attempt)
            if attempt >= retry.max_attempts or waited + delay > retry.max_total_wait:
                asked = f" (the server asked to wait {delay:g} s more)" if failure.retry_after is not None else ""
                raise FineTuningError(
                    f"{failure}; gave up after {attempt} attempt{'s' if attempt > 1 else ''} and {waited:g} s of "
                    f"waiting{asked}"
                ) from None
            retry.wait(delay)
            waited += delay
            attempt += 1


def _call_once(
    *, method: str, url: str, api_key: str, body: bytes | None, content_type: str | None, timeout: float
) -> dict[str, Any]:
    headers = {"Accept": "application/json"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    if content_type:
        headers["Content-Type"] = content_type
    request = urllib.request.Request(url, data=body, headers=headers, method=method)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            raw_body = response.read()
    except urllib.error.HTTPError as error:
        message = f"{method} {url} returned {error.code}: {http_error_detail(error)}"
        if error.code in TRANSIENT_HTTP_STATUSES:
            raise _TransientFailure(
                message,
                retry_after=_retry_after_seconds(error.headers),
                processed_maybe=error.code not in NOT_PROCESSED_HTTP_STATUSES,
            ) from None
        raise FineTuningError(message) from None
    except (OSError, http.client.HTTPException) as error:  # URLError and timeouts are OSErrors
        reason = getattr(error, "reason", error)
        refused = isinstance(reason, ConnectionRefusedError)  # nothing was sent
        raise _TransientFailure(f"could not reach fine-tuning endpoint {url}: {reason}", processed_maybe=not refused) from None
    try:
        payload = json.loads(raw_body)
    except ValueError:
        payload = None
    if not isinstance(payload, dict):
        raise FineTuningError(f"{method} {url} returned a response that is not a JSON object: {body_snippet(raw_body)}")
    return payload


def _require(payload: dict[str, Any], key: str, *, what: str, url: str) -> Any:
    value = payload.get(key)
    if not isinstance(value, str) or not value:
        raise FineTuningError(f"{url} returned {what} without an {key!r}: {body_snippet(json.dumps(payload).encode())}")
    return value


def _multipart(fields: dict[str, str], *, file_field: str, filename: str, content: bytes) -> tuple[bytes, str]:
    boundary = f"ragloop-{uuid.uuid4().hex}"
    safe_filename = filename.replace('"', "_").replace("\r", "_").replace("\n", "_")
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode()
        for name, value in fields.items()
    ]
    parts.append(
        f'--{boundary}\r\nContent-Disposition: form-data; name="{file_field}"; filename="{safe_filename}"\r\n'
        "Content-Type: application/jsonl\r\n\r\n".encode()
        + content
        + b"\r\n"
    )
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


def upload_training_file(
    *, base_url: str, api_key: str, jsonl_path: str | Path, timeout: float = 300, retry: RetryPolicy | None = None
) -> str:
    """Upload a chat JSONL training file (POST /files, purpose fine-tune); returns its file id.

    Retried like a read: a duplicate upload only leaves an unused file behind."""
    jsonl_path = Path(jsonl_path)
    url = _endpoint(base_url, "files")
    body, content_type = _multipart(
        {"purpose": "fine-tune"}, file_field="file", filename=jsonl_path.name, content=jsonl_path.read_bytes()
    )
    file_object = _call(
        method="POST", url=url, api_key=api_key, body=body, content_type=content_type, timeout=timeout, retry=retry
    )
    return _require(file_object, "id", what="a file object", url=url)


def create_fine_tuning_job(
    *,
    base_url: str,
    api_key: str,
    training_file: str,
    model: str,
    suffix: str | None = None,
    hyperparameters: dict[str, Any] | None = None,
    validation_file: str | None = None,
    seed: int | None = None,
    timeout: float = 60,
    retry: RetryPolicy | None = None,
) -> dict[str, Any]:
    """Start a fine-tuning job (POST /fine_tuning/jobs); returns the job object.

    Sent again only after answers that say the server did not act (429, 503, connection refused)."""
    url = _endpoint(base_url, "fine_tuning/jobs")
    request_body: dict[str, Any] = {"training_file": training_file, "model": model}
    optional = {"suffix": suffix, "hyperparameters": hyperparameters, "validation_file": validation_file, "seed": seed}
    request_body.update({key: value for key, value in optional.items() if value is not None})
    job = _call(
        method="POST",
        url=url,
        api_key=api_key,
        body=json.dumps(request_body).encode("utf-8"),
        content_type="application/json",
        timeout=timeout,
        retry=retry,
        repeatable=False,
    )
    _require(job, "id", what="a job object", url=url)
    return job


def get_fine_tuning_job(
    *, base_url: str, api_key: str, job_id: str, timeout: float = 60, retry: RetryPolicy | None = None
) -> dict[str, Any]:
    """The current job object (GET /fine_tuning/jobs/{id})."""
    url = _endpoint(base_url, f"fine_tuning/jobs/{urllib.parse.quote(job_id, safe='')}")
    job = _call(method="GET", url=url, api_key=api_key, timeout=timeout, retry=retry)
    _require(job, "status", what="a job object", url=url)
    return job


def cancel_fine_tuning_job(
    *, base_url: str, api_key: str, job_id: str, timeout: float = 60, retry: RetryPolicy | None = None
) -> dict[str, Any]:
    """Ask the API to cancel a job (POST /fine_tuning/jobs/{id}/cancel); returns the job object."""
    url = _endpoint(base_url, f"fine_tuning/jobs/{urllib.parse.quote(job_id, safe='')}/cancel")
    return _call(method="POST", url=url, api_key=api_key, timeout=timeout, retry=retry)


def list_fine_tuning_events(
    *, base_url: str, api_key: str, job_id: str, limit: int = 100, timeout: float = 60, retry: RetryPolicy | None = None
) -> list[dict[str, Any]]:
    """The job's latest events, newest first (GET /fine_tuning/jobs/{id}/events)."""
    query = urllib.parse.urlencode({"limit": limit})
    url = _endpoint(base_url, f"fine_tuning/jobs/{urllib.parse.quote(job_id, safe='')}/events?{query}")
    events = _call(method="GET", url=url, api_key=api_key, timeout=timeout, retry=retry).get("data")
    if not isinstance(events, list):
        raise FineTuningError(f"{url} returned an event list without 'data'")
    return [event for event in events if isinstance(event, dict)]


def wait_for_job(
    *,
    base_url: str,
    api_key: str,
    job_id: str,
    poll_seconds: float = 30,
    timeout: float | None = None,
    should_stop: StopCheck | None = None,
    progress: ProgressCallback | None = None,
    sleep: Callable[[float], None] = time.sleep,
    retry: RetryPolicy | None = None,
) -> dict[str, Any]:
    """Poll a job until it succeeds, fails or is cancelled; returns the final job object.

    Each poll is retried within `retry` after a transient failure, so a blip of the API does not
    end the wait (the job runs on regardless); past the bound the FineTuningError is raised.

    progress gets the fraction of training steps done and {"status", "step", "loss"} from the
    job's metrics events (servers without an events endpoint report status only). When
    should_stop says so, the job is cancelled on the server and TrainingCancelled raised (or
    the cancel request's FineTuningError, so a job that may still be running is never
    reported as stopped); a job still running after `timeout` seconds raises
    FineTuningTimeout and keeps running.
    """
    deadline = None if timeout is None else time.monotonic() + timeout
    seen_events: set[str] = set()
    events_supported = True
    fraction = 0.0
    while True:
        if should_stop is not None and should_stop():
            cancel_fine_tuning_job(base_url=base_url, api_key=api_key, job_id=job_id, retry=retry)
            raise TrainingCancelled()
        job = get_fine_tuning_job(base_url=base_url, api_key=api_key, job_id=job_id, retry=retry)
        status = job["status"]

        metrics: list[dict[str, Any]] = []
        if events_supported and status not in WAITING_STATUSES:
            try:
                events = list_fine_tuning_events(base_url=base_url, api_key=api_key, job_id=job_id, retry=retry)
            except FineTuningError:
                # Many OpenAI-compatible servers implement jobs but not events; status still works.
                events_supported = False
                events = []
            for event in reversed(events):  # oldest first, so the curve is in step order
                event_id = str(event.get("id", ""))
                data = event.get("data")
                if event_id in seen_events or event.get("type") != "metrics" or not isinstance(data, dict):
                    continue
                seen_events.add(event_id)
                metrics.append(data)
        for data in metrics:
            step, total_steps = data.get("step"), data.get("total_steps")
            if isinstance(step, int) and isinstance(total_steps, int) and total_steps > 0:
                fraction = max(fraction, min(step / total_steps, 1.0))
            if progress is not None:
                progress(fraction, {"status": status, "step": step, "loss": data.get("train_loss")})

        if status in TERMINAL_STATUSES:
            if progress is not None:
                progress(1.0 if status == "succeeded" else fraction, {"status": status})
            return job
        if not metrics and progress is not None:
            progress(fraction, {"status": status})
        if deadline is not None and time.monotonic() >= deadline:
            raise FineTuningTimeout(f"fine-tuning job {job_id} was still {status} after {timeout:g} seconds")
        sleep(poll_seconds)
