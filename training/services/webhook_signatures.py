"""Signing and verifying webhook requests as the Standard Webhooks spec does
(https://github.com/standard-webhooks/standard-webhooks/blob/main/spec/standard-webhooks.md).

Plain standard library, no Django: a receiver can copy `webhook_verify` as it is. The reference
library (`standardwebhooks` on PyPI) does the same; the tests check our signatures with it, but
the application does not depend on it for a dozen lines of HMAC.
"""

import base64
import hashlib
import hmac
import secrets
import time

SECRET_PREFIX = "whsec_"
SECRET_BYTES = 24
# How far a request's timestamp may be from the receiver's clock (the spec's replay window).
TIMESTAMP_TOLERANCE_SECONDS = 5 * 60


class WebhookVerificationError(Exception):
    """The request was not signed with the secret, was changed, or is too old or too new."""


def webhook_secret_generate() -> str:
    """A new endpoint secret: "whsec_" + base64 of 24 random bytes."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode()


def _key(secret: str) -> bytes:
    encoded = secret.removeprefix(SECRET_PREFIX)
    try:
        key = base64.b64decode(encoded, validate=True)
    except ValueError:
        raise ValueError("A webhook secret is 'whsec_' followed by base64.") from None
    if not key:
        raise ValueError("A webhook secret may not be empty.")
    return key


def webhook_signature(*, secret: str, message_id: str, timestamp: int, body: str) -> str:
    """The `webhook-signature` header value: "v1," + base64 HMAC-SHA256 of "{id}.{timestamp}.{body}"."""
    signed = f"{message_id}.{timestamp}.{body}".encode()
    digest = hmac.new(_key(secret), signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def webhook_headers(*, secret: str, message_id: str, body: str, timestamp: int | None = None) -> dict[str, str]:
    """The three signature headers of one delivery attempt (the timestamp is the attempt's)."""
    timestamp = int(time.time()) if timestamp is None else timestamp
    return {
        "webhook-id": message_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": webhook_signature(secret=secret, message_id=message_id, timestamp=timestamp, body=body),
    }


def webhook_verify(*, secret: str, headers: dict[str, str], body: bytes | str, now: float | None = None) -> None:
    """Raise WebhookVerificationError unless `body` and `headers` were signed with `secret` within
    the tolerance. `headers` may be any mapping; names are matched case-insensitively."""
    body = body.decode() if isinstance(body, bytes) else body
    lowered = {name.lower(): value for name, value in headers.items()}
    message_id = lowered.get("webhook-id")
    timestamp = lowered.get("webhook-timestamp")
    signatures = lowered.get("webhook-signature")
    if not (message_id and timestamp and signatures):
        raise WebhookVerificationError("Missing webhook-id, webhook-timestamp or webhook-signature header.")
    try:
        sent_at = int(timestamp)
    except ValueError:
        raise WebhookVerificationError("The webhook-timestamp header is not a number of seconds.") from None
    now = time.time() if now is None else now
    if abs(now - sent_at) > TIMESTAMP_TOLERANCE_SECONDS:
        raise WebhookVerificationError("The webhook-timestamp is too far from now (a replay, or a wrong clock).")
    expected = webhook_signature(secret=secret, message_id=message_id, timestamp=sent_at, body=body).encode()
    # The header may carry several space-separated signatures (during a secret rotation).
    for candidate in signatures.split(" "):
        if hmac.compare_digest(expected, candidate.encode()):
            return
    raise WebhookVerificationError("No signature matches the body.")
