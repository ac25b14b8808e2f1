"""Helpers shared by the rag tests and the training tests that reuse them: tokenizers and a
reference log-likelihood for tiny models built without any download, and an in-memory
OpenAI fine-tuning API."""

import json
from email.parser import BytesParser
from email.policy import HTTP
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import GPT2LMHeadModel, PreTrainedTokenizerFast


def word_tokenizer(texts: list[str], *, with_pad: bool) -> PreTrainedTokenizerFast:
    """A word-level tokenizer over exactly the words of `texts`, built without any download."""
    pre_tokenizer = pre_tokenizers.Whitespace()
    words = sorted({word for text in texts for word, _ in pre_tokenizer.pre_tokenize_str(text)})
    specials = ["[UNK]", "[EOS]", *(["[PAD]"] if with_pad else [])]
    tokenizer = Tokenizer(models.WordLevel(vocab={t: i for i, t in enumerate([*specials, *words])}, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizer
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, unk_token="[UNK]", eos_token="[EOS]", **({"pad_token": "[PAD]"} if with_pad else {})
    )


def tiny_tokenizer(texts: list[str]) -> PreTrainedTokenizerFast:
    """A word-level tokenizer over exactly the words of `texts`, built without any download."""
    pre_tokenizer = pre_tokenizers.Whitespace()
    words = sorted({word for text in texts for word, _ in pre_tokenizer.pre_tokenize_str(text)})
    vocabulary = {token: index for index, token in enumerate(["[UNK]", "[PAD]", "[EOS]", *words])}
    tokenizer = Tokenizer(models.WordLevel(vocab=vocabulary, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizer
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token="[UNK]", pad_token="[PAD]", eos_token="[EOS]")


def reference_mean_log_prob(model_path: Path, *, prompt: str, answer: str) -> float:
    """The mean log-probability of the answer tokens, computed token by token."""
    tokenizer = PreTrainedTokenizerFast.from_pretrained(model_path)
    model = GPT2LMHeadModel.from_pretrained(model_path).eval()
    prompt_ids = tokenizer(prompt)["input_ids"]
    answer_ids = tokenizer(answer, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([prompt_ids + answer_ids])).logits[0]
    log_probs = [
        torch.log_softmax(logits[len(prompt_ids) + offset - 1], dim=-1)[token].item()
        for offset, token in enumerate(answer_ids)
    ]
    return sum(log_probs) / len(log_probs)


API_KEY = "sk-test-secret"


class JsonReplyHandler(BaseHTTPRequestHandler):
    """A quiet request handler that answers with a body as JSON (the fake APIs' base)."""

    def reply_raw(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:  # keep test output quiet
        pass


class FakeFineTuningApi(JsonReplyHandler):
    """OpenAI's fine-tuning endpoints, in memory; a job advances one status per GET.

    Routes under /v1 behave; /broken/v1 answers HTML; /noevents/v1 has no events endpoint.
    A test can script failures (`fail_next`): the next matching requests get that status first.
    """

    files: dict[str, dict] = {}
    uploads: dict[str, bytes] = {}
    jobs: dict[str, dict] = {}
    job_requests: list[dict] = []
    lifecycle = ["validating_files", "running", "running", "succeeded"]
    # (method, path prefix after /v1, status, extra headers), answered in order before routing.
    failures: list[tuple[str, str, int, dict]] = []

    @classmethod
    def fail_next(cls, method: str, path_prefix: str, status: int, *, times: int = 1, headers: dict | None = None) -> None:
        cls.failures.extend([(method, path_prefix, status, headers or {})] * times)

    def scripted_failure(self, method: str) -> bool:
        path = self.route()
        for index, (failing_method, prefix, status, headers) in enumerate(self.failures):
            if failing_method == method and path.startswith(prefix):
                del FakeFineTuningApi.failures[index]
                body = json.dumps({"error": {"message": f"scripted {status}", "type": "server_error"}}).encode()
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
                return True
        return False

    def do_POST(self) -> None:
        if not self.authorised():
            return
        path = self.route()
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if self.scripted_failure("POST"):
            return
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
        if self.scripted_failure("GET"):
            return
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
