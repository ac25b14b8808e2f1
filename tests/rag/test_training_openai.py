"""Tests for the OpenAI-compatible fine-tuning client against a local fake of the /files and
/fine_tuning/jobs endpoints, with OpenAI's documented request and response shapes."""

import json
import socket
import threading
from email.parser import BytesParser
from email.policy import HTTP
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import pytest

from rag.training import TrainingCancelled
from rag.training.openai_jobs import (
    FineTuningError,
    FineTuningTimeout,
    cancel_fine_tuning_job,
    create_fine_tuning_job,
    get_fine_tuning_job,
    upload_training_file,
    wait_for_job,
)

API_KEY = "sk-test-secret"
TRAINING_JSONL = (
    b'{"messages": [{"role": "system", "content": "You answer."}, {"role": "user", "content": "Context ... Query: q"},'
    b' {"role": "assistant", "content": "a"}]}\n'
)


class FakeFineTuningApi(BaseHTTPRequestHandler):
    """OpenAI's fine-tuning endpoints, in memory; a job advances one status per GET.

    Routes under /v1 behave; /broken/v1 answers HTML; /noevents/v1 has no events endpoint.
    """

    files: dict[str, dict] = {}
    uploads: dict[str, bytes] = {}
    jobs: dict[str, dict] = {}
    job_requests: list[dict] = []
    lifecycle = ["validating_files", "running", "running", "succeeded"]

    def do_POST(self) -> None:
        if not self.authorised():
            return
        path = self.route()
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if path == "/files":
            self.upload(body)
        elif path == "/fine_tuning/jobs":
            request = json.loads(body)
            FakeFineTuningApi.job_requests.append(request)
            if request.get("training_file") not in self.files:
                return self.error(400, f"invalid training_file: {request.get('training_file')}")
            job_id = f"ftjob-{len(self.jobs) + 1}"
            self.jobs[job_id] = {
                "id": job_id,
                "object": "fine_tuning.job",
                "model": request["model"],
                "created_at": 1721764800,
                "finished_at": None,
                "fine_tuned_model": None,
                "organization_id": "org-123",
                "result_files": [],
                "status": "validating_files",
                "validation_file": request.get("validation_file"),
                "training_file": request["training_file"],
                "hyperparameters": request.get("hyperparameters", {"n_epochs": "auto"}),
                "trained_tokens": None,
                "error": None,
                "suffix": request.get("suffix"),
                "polls": 0,
            }
            self.reply(200, self.public(self.jobs[job_id]))
        elif path.startswith("/fine_tuning/jobs/") and path.endswith("/cancel"):
            job = self.jobs.get(path.split("/")[3])
            if job is None:
                return self.error(404, "No such job")
            job["status"] = "cancelled"
            self.reply(200, self.public(job))
        else:
            self.error(404, "Unknown route")

    def do_GET(self) -> None:
        if not self.authorised():
            return
        url = urlparse(self.path)
        if url.path.startswith("/broken/"):
            return self.reply_raw(200, b"<html>gateway</html>")
        path = self.route()
        parts = path.split("/")
        job = self.jobs.get(parts[3]) if len(parts) > 3 else None
        if job is None:
            return self.error(404, "No such job")
        if len(parts) == 4:
            if job["status"] != "cancelled":
                job["polls"] += 1
                job["status"] = self.lifecycle[min(job["polls"] - 1, len(self.lifecycle) - 1)]
                if job["status"] == "succeeded":
                    job["fine_tuned_model"] = f"ft:{job['model']}:org:{job['suffix']}:abc123"
                    job["trained_tokens"] = 5768
            self.reply(200, self.public(job))
        elif parts[4] == "events" and not self.path.startswith("/noevents/"):
            limit = int(parse_qs(url.query).get("limit", ["20"])[0])
            steps = {"validating_files": 0, "running": 5 * (job["polls"] - 1), "succeeded": 10}.get(job["status"], 0)
            events = [
                {
                    "object": "fine_tuning.job.event",
                    "id": f"ftevent-{step}",
                    "created_at": 1721764800 + step,
                    "level": "info",
                    "message": f"Step {step}/10: training loss={1 / step:.2f}",
                    "data": {"step": step, "train_loss": 1 / step, "total_steps": 10},
                    "type": "metrics",
                }
                for step in range(1, steps + 1)
            ]
            events.append(
                {
                    "object": "fine_tuning.job.event",
                    "id": "ftevent-created",
                    "created_at": 1721764800,
                    "level": "info",
                    "message": "Created fine-tuning job",
                    "data": {},
                    "type": "message",
                }
            )
            newest_first = sorted(events, key=lambda event: -event["created_at"])
            self.reply(200, {"object": "list", "data": newest_first[:limit], "has_more": len(newest_first) > limit})
        else:
            self.error(404, "Unknown route")

    def upload(self, body: bytes) -> None:
        # Parse with the standard library's MIME parser, independently of the client's encoder.
        message = BytesParser(policy=HTTP).parsebytes(
            f"Content-Type: {self.headers['Content-Type']}\r\n\r\n".encode() + body
        )
        if not message.is_multipart():
            return self.error(400, "expected multipart/form-data")
        fields = {part.get_param("name", header="content-disposition"): part for part in message.iter_parts()}
        if "file" not in fields or fields.get("purpose") is None:
            return self.error(400, "file and purpose are required")
        purpose = fields["purpose"].get_content().strip()
        if purpose != "fine-tune":
            return self.error(400, f"invalid purpose {purpose}")
        content = fields["file"].get_payload(decode=True)
        file_id = f"file-{len(self.files) + 1}"
        self.uploads[file_id] = content
        self.files[file_id] = {
            "id": file_id,
            "object": "file",
            "bytes": len(content),
            "created_at": 1721764800,
            "filename": fields["file"].get_filename(),
            "purpose": purpose,
        }
        self.reply(200, self.files[file_id])

    def route(self) -> str:
        path = urlparse(self.path).path
        return path.split("/v1", 1)[1]

    def authorised(self) -> bool:
        if self.headers.get("Authorization") != f"Bearer {API_KEY}":
            self.error(401, "Incorrect API key provided")
            return False
        return True

    @staticmethod
    def public(job: dict) -> dict:
        return {key: value for key, value in job.items() if key != "polls"}

    def error(self, status: int, message: str) -> None:
        self.reply(status, {"error": {"message": message, "type": "invalid_request_error", "param": None, "code": None}})

    def reply(self, status: int, payload: dict) -> None:
        self.reply_raw(status, json.dumps(payload).encode())

    def reply_raw(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:  # keep test output quiet
        pass


@pytest.fixture(scope="module")
def server_url():
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeFineTuningApi)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture
def api_url(server_url: str) -> str:
    return f"{server_url}/v1"


@pytest.fixture
def training_file(api_url: str, tmp_path: Path) -> str:
    path = tmp_path / "train.jsonl"
    path.write_bytes(TRAINING_JSONL)
    return upload_training_file(base_url=api_url, api_key=API_KEY, jsonl_path=path)


def test_upload_sends_the_jsonl_bytes_as_a_fine_tune_file(api_url: str, tmp_path: Path):
    path = tmp_path / "kb-7 snapshot.jsonl"
    path.write_bytes(TRAINING_JSONL * 3)

    file_id = upload_training_file(base_url=api_url + "/", api_key=API_KEY, jsonl_path=path)

    assert FakeFineTuningApi.uploads[file_id] == TRAINING_JSONL * 3
    assert FakeFineTuningApi.files[file_id]["purpose"] == "fine-tune"
    assert FakeFineTuningApi.files[file_id]["filename"] == "kb-7 snapshot.jsonl"


def test_a_job_runs_to_success_with_progress_from_its_metrics(api_url: str, training_file: str):
    job = create_fine_tuning_job(
        base_url=api_url,
        api_key=API_KEY,
        training_file=training_file,
        model="gpt-4o-mini-2024-07-18",
        suffix="kb-7",
        hyperparameters={"n_epochs": 2},
    )
    reported: list[tuple[float, dict]] = []
    sleeps: list[float] = []

    final = wait_for_job(
        base_url=api_url,
        api_key=API_KEY,
        job_id=job["id"],
        poll_seconds=7,
        progress=lambda fraction, metrics: reported.append((fraction, metrics)),
        sleep=sleeps.append,
    )

    assert FakeFineTuningApi.job_requests[-1] == {
        "training_file": training_file,
        "model": "gpt-4o-mini-2024-07-18",
        "suffix": "kb-7",
        "hyperparameters": {"n_epochs": 2},
    }
    assert (job["object"], job["status"]) == ("fine_tuning.job", "validating_files")
    assert final["status"] == "succeeded"
    assert final["fine_tuned_model"] == "ft:gpt-4o-mini-2024-07-18:org:kb-7:abc123"
    assert sleeps == [7, 7, 7]  # validating_files -> running -> running -> succeeded
    step_reports = [metrics for _, metrics in reported if "step" in metrics]
    assert [metrics["step"] for metrics in step_reports] == list(range(1, 11))
    assert step_reports[1]["loss"] == pytest.approx(0.5)
    fractions = [fraction for fraction, _ in reported]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    assert reported[0] == (0.0, {"status": "validating_files"})


def test_a_server_without_events_still_reports_status(server_url: str, training_file: str):
    job = create_fine_tuning_job(base_url=f"{server_url}/v1", api_key=API_KEY, training_file=training_file, model="m")
    statuses = []

    final = wait_for_job(
        base_url=f"{server_url}/noevents/v1",
        api_key=API_KEY,
        job_id=job["id"],
        poll_seconds=0,
        progress=lambda fraction, metrics: statuses.append(metrics["status"]),
    )

    assert final["status"] == "succeeded"
    assert statuses == ["validating_files", "running", "running", "succeeded"]


def test_stopping_cancels_the_job_on_the_server(api_url: str, training_file: str):
    job = create_fine_tuning_job(base_url=api_url, api_key=API_KEY, training_file=training_file, model="m")
    polls = []

    with pytest.raises(TrainingCancelled):
        wait_for_job(
            base_url=api_url,
            api_key=API_KEY,
            job_id=job["id"],
            poll_seconds=0,
            should_stop=lambda: len(polls) >= 2,
            progress=lambda fraction, metrics: polls.append(metrics),
        )

    assert get_fine_tuning_job(base_url=api_url, api_key=API_KEY, job_id=job["id"])["status"] == "cancelled"


def test_cancel_returns_the_cancelled_job(api_url: str, training_file: str):
    job = create_fine_tuning_job(base_url=api_url, api_key=API_KEY, training_file=training_file, model="m")

    cancelled = cancel_fine_tuning_job(base_url=api_url, api_key=API_KEY, job_id=job["id"])

    assert (cancelled["id"], cancelled["status"]) == (job["id"], "cancelled")


def test_waiting_past_the_timeout_is_an_error(api_url: str, training_file: str):
    job = create_fine_tuning_job(base_url=api_url, api_key=API_KEY, training_file=training_file, model="m")

    with pytest.raises(FineTuningTimeout, match=rf"job {job['id']} was still validating_files after 0 seconds"):
        wait_for_job(base_url=api_url, api_key=API_KEY, job_id=job["id"], poll_seconds=0, timeout=0)


def test_http_errors_carry_the_server_message_but_not_the_key(api_url: str, training_file: str):
    with pytest.raises(FineTuningError, match=r"POST .*/v1/fine_tuning/jobs returned 401: Incorrect API key") as raised:
        create_fine_tuning_job(base_url=api_url, api_key="sk-wrong-secret", training_file=training_file, model="m")
    assert "sk-wrong-secret" not in str(raised.value)

    with pytest.raises(FineTuningError, match="returned 400: invalid training_file: file-missing"):
        create_fine_tuning_job(base_url=api_url, api_key=API_KEY, training_file="file-missing", model="m")
    with pytest.raises(FineTuningError, match=r"GET .*/fine_tuning/jobs/ftjob-none returned 404: No such job"):
        get_fine_tuning_job(base_url=api_url, api_key=API_KEY, job_id="ftjob-none")


def test_non_json_responses_are_reported(server_url: str):
    with pytest.raises(FineTuningError, match="returned a response that is not a JSON object: <html>gateway</html>"):
        get_fine_tuning_job(base_url=f"{server_url}/broken/v1", api_key=API_KEY, job_id="ftjob-1")


def test_unreachable_servers_and_bad_urls_are_reported(tmp_path: Path):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]

    with pytest.raises(FineTuningError, match=r"could not reach fine-tuning endpoint http://127\.0\.0\.1"):
        get_fine_tuning_job(base_url=f"http://127.0.0.1:{closed_port}/v1", api_key=API_KEY, job_id="j", timeout=5)
    with pytest.raises(ValueError, match="must start with http"):
        get_fine_tuning_job(base_url="file:///etc", api_key=API_KEY, job_id="j")
