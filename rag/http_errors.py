"""Readable messages from the HTTP errors of OpenAI-compatible servers (chat and fine-tuning)."""

import json
import urllib.error


def http_error_detail(error: urllib.error.HTTPError) -> str:
    """The server's own message if it gave one, else the start of its body, else the reason."""
    try:
        raw_body = error.read()
    except OSError:
        return str(error.reason or "no details")
    try:
        # OpenAI-style servers put a readable message in {"error": {"message": ...}}.
        message = json.loads(raw_body)["error"]["message"]
        if isinstance(message, str) and message:
            return message[:300]
    except (ValueError, KeyError, TypeError):
        pass
    return body_snippet(raw_body) or str(error.reason)


def body_snippet(raw_body: bytes, limit: int = 200) -> str:
    text = raw_body.decode("utf-8", errors="replace").strip()
    return text if len(text) <= limit else text[:limit] + "..."
