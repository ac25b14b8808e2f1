"""Tests for the OpenAI-compatible fine-tuning client against a local fake of the /files and
/fine_tuning/jobs endpoints, with OpenAI's documented request and response shapes, including its
bounded retries after transient failures (sleeps are recorded, never slept)."""

import socket
import threading
from http.server import ThreadingHTTPServer
from pathlib import Path

import pytest

from rag.training import TrainingCancelled
from rag.training.openai_jobs import (
    FineTuningError,
    FineTuningTimeout,
    RetryPolicy,
    _retry_after_seconds,
    cancel_fine_tuning_job,
    create_fine_tuning_job,
    get_fine_tuning_job,
    upload_training_file,
    wait_for_job,
)
from tests.rag.conftest import API_KEY, FakeFineTuningApi

TRAINING_JSONL = (
    b'{"messages": [{"role": "system", "content": "You answer."}, {"role": "user", "content": "Context ... Query: q"},'
    b' {"role": "assistant", "content": "a"}]}\n'
)


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


@pytest.fixture(autouse=True)
def no_scripted_failures_left():
    FakeFineTuningApi.failures.clear()
    yield
    FakeFineTuningApi.failures.clear()


def never_sleep(seconds: float) -> None:
    raise AssertionError(f"slept {seconds} s, but this call must not be retried")


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

    sleeps: list[float] = []
    with pytest.raises(FineTuningError, match=r"could not reach fine-tuning endpoint http://127\.0\.0\.1.*gave up after 2 attempts"):
        get_fine_tuning_job(
            base_url=f"http://127.0.0.1:{closed_port}/v1", api_key=API_KEY, job_id="j", timeout=5,
            retry=RetryPolicy(max_attempts=2, sleep=sleeps.append),
        )  # fmt: skip
    assert sleeps == [1.0]
    with pytest.raises(ValueError, match="must start with http"):
        get_fine_tuning_job(base_url="file:///etc", api_key=API_KEY, job_id="j")


# --- transient failures --------------------------------------------------------------------


def test_a_429_is_retried_after_the_wait_its_retry_after_asks(api_url: str, training_file: str):
    job = create_fine_tuning_job(base_url=api_url, api_key=API_KEY, training_file=training_file, model="m")
    FakeFineTuningApi.fail_next("GET", "/fine_tuning/jobs/", 429, headers={"Retry-After": "7"})
    sleeps: list[float] = []

    polled = get_fine_tuning_job(base_url=api_url, api_key=API_KEY, job_id=job["id"], retry=RetryPolicy(sleep=sleeps.append))

    assert polled["id"] == job["id"] and sleeps == [7.0]
    assert not FakeFineTuningApi.failures


def test_without_retry_after_the_waits_double_and_a_persistent_500_gives_up_after_the_bound(api_url: str, training_file: str):
    job = create_fine_tuning_job(base_url=api_url, api_key=API_KEY, training_file=training_file, model="m")
    FakeFineTuningApi.fail_next("GET", "/fine_tuning/jobs/", 500, times=4)
    sleeps: list[float] = []

    with pytest.raises(FineTuningError) as raised:
        get_fine_tuning_job(base_url=api_url, api_key=API_KEY, job_id=job["id"], retry=RetryPolicy(max_attempts=4, sleep=sleeps.append))

    assert str(raised.value).endswith(
        f"/v1/fine_tuning/jobs/{job['id']} returned 500: scripted 500; gave up after 4 attempts and 7 s of waiting"
    )
    assert sleeps == [1.0, 2.0, 4.0]


def test_the_total_wait_is_bounded_too_and_a_retry_after_past_it_gives_up_at_once(api_url: str, training_file: str):
    job = create_fine_tuning_job(base_url=api_url, api_key=API_KEY, training_file=training_file, model="m")
    FakeFineTuningApi.fail_next("GET", "/fine_tuning/jobs/", 503, headers={"Retry-After": "3600"})

    with pytest.raises(FineTuningError, match=r"returned 503.*gave up after 1 attempt and 0 s of waiting \(the server asked to wait 3600 s more\)"):
        get_fine_tuning_job(base_url=api_url, api_key=API_KEY, job_id=job["id"], retry=RetryPolicy(max_total_wait=600, sleep=never_sleep))

    FakeFineTuningApi.fail_next("GET", "/fine_tuning/jobs/", 502, times=3)
    sleeps: list[float] = []
    with pytest.raises(FineTuningError, match="gave up after 3 attempts and 3 s"):
        get_fine_tuning_job(
            base_url=api_url, api_key=API_KEY, job_id=job["id"], retry=RetryPolicy(max_total_wait=6, sleep=sleeps.append)
        )  # 1 + 2 waited; the next 4 would pass 6
    assert sleeps == [1.0, 2.0]


def test_retry_after_in_milliseconds_or_as_a_date():
    from email.message import Message

    headers = Message()
    headers["retry-after-ms"] = "250"
    assert _retry_after_seconds(headers) == 0.25
    headers = Message()
    headers["Retry-After"] = "Wed, 21 Oct 2015 07:28:00 GMT"  # in the past: no wait
    assert _retry_after_seconds(headers) == 0.0
    assert _retry_after_seconds(Message()) is None


def test_other_4xx_answers_fail_at_once_with_the_server_message(api_url: str, training_file: str):
    FakeFineTuningApi.fail_next("GET", "/fine_tuning/jobs/", 403)
    with pytest.raises(FineTuningError, match=r"returned 403: scripted 403$"):
        get_fine_tuning_job(base_url=api_url, api_key=API_KEY, job_id="ftjob-1", retry=RetryPolicy(sleep=never_sleep))
    with pytest.raises(FineTuningError, match="returned 400: invalid training_file"):
        create_fine_tuning_job(
            base_url=api_url, api_key=API_KEY, training_file="file-missing", model="m", retry=RetryPolicy(sleep=never_sleep)
        )


def test_starting_a_job_is_sent_again_only_when_the_server_surely_did_not_take_it(api_url: str, training_file: str):
    created_before = len(FakeFineTuningApi.jobs)
    FakeFineTuningApi.fail_next("POST", "/fine_tuning/jobs", 429)
    sleeps: list[float] = []
    job = create_fine_tuning_job(
        base_url=api_url, api_key=API_KEY, training_file=training_file, model="m", retry=RetryPolicy(sleep=sleeps.append)
    )
    assert sleeps == [1.0] and len(FakeFineTuningApi.jobs) == created_before + 1 and job["id"] in FakeFineTuningApi.jobs

    FakeFineTuningApi.fail_next("POST", "/fine_tuning/jobs", 500)
    with pytest.raises(FineTuningError, match="returned 500: scripted 500; not sent again, since the server may have acted on it"):
        create_fine_tuning_job(
            base_url=api_url, api_key=API_KEY, training_file=training_file, model="m", retry=RetryPolicy(sleep=never_sleep)
        )
    assert len(FakeFineTuningApi.jobs) == created_before + 1


def test_waiting_for_a_job_rides_out_failed_polls(api_url: str, training_file: str):
    job = create_fine_tuning_job(base_url=api_url, api_key=API_KEY, training_file=training_file, model="m")
    FakeFineTuningApi.fail_next("GET", f"/fine_tuning/jobs/{job['id']}", 502, times=2)
    retry_sleeps: list[float] = []

    final = wait_for_job(
        base_url=api_url, api_key=API_KEY, job_id=job["id"], poll_seconds=0, sleep=lambda seconds: None,
        retry=RetryPolicy(sleep=retry_sleeps.append),
    )  # fmt: skip

    assert final["status"] == "succeeded" and retry_sleeps == [1.0, 2.0]
