"""A small HTTP client for the fault tests: every call has a client-side timeout, so a request
the server never answers fails the test instead of hanging it."""

import json
import urllib.error
import urllib.request
from dataclasses import dataclass, field

# Far above what the server's own bounds allow (socket and connect timeouts of a few seconds,
# two publish retries), so reaching it means the server hung.
CLIENT_TIMEOUT_SECONDS = 90


@dataclass
class Answer:
    status: int
    headers: dict = field(default_factory=dict)
    body: str = ""

    def json(self):
        return json.loads(self.body)


def call(method: str, url: str, token: str, payload: dict | None = None, *, raw: bytes | None = None,
         content_type: str = "application/json") -> Answer:  # fmt: skip
    data = raw if raw is not None else (json.dumps(payload).encode() if payload is not None else None)
    request = urllib.request.Request(url, data=data, method=method, headers={
        "Authorization": f"Bearer {token}", **({"Content-Type": content_type} if data is not None else {}),
    })  # fmt: skip
    try:
        with urllib.request.urlopen(request, timeout=CLIENT_TIMEOUT_SECONDS) as response:
            return Answer(response.status, dict(response.headers), response.read().decode())
    except urllib.error.HTTPError as error:
        return Answer(error.code, dict(error.headers), error.read().decode())


def upload(url: str, token: str, name: str, text: str) -> Answer:
    boundary = "ragloopboundary"
    body = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="files"; filename="{name}"\r\n'
        f"Content-Type: text/plain\r\n\r\n{text}\r\n--{boundary}--\r\n"
    ).encode()
    return call("POST", url, token, raw=body, content_type=f"multipart/form-data; boundary={boundary}")


def turn(external_id: str) -> dict:
    return {"external_id": external_id, "query": f"Which enzyme do statins inhibit? ({external_id})",
            "answer": "HMG-CoA reductase.", "passages": []}  # fmt: skip
