"""Fine-tuning jobs on an OpenAI-compatible API: upload a chat JSONL file, start, follow and cancel a job.

Only the standard library's urllib, so the hosted-generator path needs no SDK. The request
and response shapes are those of OpenAI's /files and /fine_tuning/jobs endpoints.
"""

from __future__ import annotations

import http.client
import json
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable
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
        raise FineTuningError(f"{method} {url} returned {error.code}: {http_error_detail(error)}") from None
    except (OSError, http.client.HTTPException) as error:  # URLError and timeouts are OSErrors
        reason = getattr(error, "reason", error)
        raise FineTuningError(f"could not reach fine-tuning endpoint {url}: {reason}") from None
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


def upload_training_file(*, base_url: str, api_key: str, jsonl_path: str | Path, timeout: float = 300) -> str:
    """Upload a chat JSONL training file (POST /files, purpose fine-tune); returns its file id."""
    jsonl_path = Path(jsonl_path)
    url = _endpoint(base_url, "files")
    body, content_type = _multipart(
        {"purpose": "fine-tune"}, file_field="file", filename=jsonl_path.name, content=jsonl_path.read_bytes()
    )
    file_object = _call(method="POST", url=url, api_key=api_key, body=body, content_type=content_type, timeout=timeout)
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
) -> dict[str, Any]:
    """Start a fine-tuning job (POST /fine_tuning/jobs); returns the job object."""
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
    )
    _require(job, "id", what="a job object", url=url)
    return job


def get_fine_tuning_job(*, base_url: str, api_key: str, job_id: str, timeout: float = 60) -> dict[str, Any]:
    """The current job object (GET /fine_tuning/jobs/{id})."""
    url = _endpoint(base_url, f"fine_tuning/jobs/{urllib.parse.quote(job_id, safe='')}")
    job = _call(method="GET", url=url, api_key=api_key, timeout=timeout)
    _require(job, "status", what="a job object", url=url)
    return job


def cancel_fine_tuning_job(*, base_url: str, api_key: str, job_id: str, timeout: float = 60) -> dict[str, Any]:
    """Ask the API to cancel a job (POST /fine_tuning/jobs/{id}/cancel); returns the job object."""
    url = _endpoint(base_url, f"fine_tuning/jobs/{urllib.parse.quote(job_id, safe='')}/cancel")
    return _call(method="POST", url=url, api_key=api_key, timeout=timeout)


def list_fine_tuning_events(
    *, base_url: str, api_key: str, job_id: str, limit: int = 100, timeout: float = 60
) -> list[dict[str, Any]]:
    """The job's latest events, newest first (GET /fine_tuning/jobs/{id}/events)."""
    query = urllib.parse.urlencode({"limit": limit})
    url = _endpoint(base_url, f"fine_tuning/jobs/{urllib.parse.quote(job_id, safe='')}/events?{query}")
    events = _call(method="GET", url=url, api_key=api_key, timeout=timeout).get("data")
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
) -> dict[str, Any]:
    """Poll a job until it succeeds, fails or is cancelled; returns the final job object.

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
            cancel_fine_tuning_job(base_url=base_url, api_key=api_key, job_id=job_id)
            raise TrainingCancelled()
        job = get_fine_tuning_job(base_url=base_url, api_key=api_key, job_id=job_id)
        status = job["status"]

        metrics: list[dict[str, Any]] = []
        if events_supported and status not in WAITING_STATUSES:
            try:
                events = list_fine_tuning_events(base_url=base_url, api_key=api_key, job_id=job_id)
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
