"""Production settings (docker-compose): refuses to start without a real secret and external
services, and sends HTTPS-only headers by default."""

import math
import os
from collections import Counter

from django.core.exceptions import ImproperlyConfigured

from config.settings.base import *  # noqa: F403
from config.settings.base import SECRET_KEY

# Keys that have been published (this repository's own, Django's startproject prefix, common
# placeholders): a key anyone can read signs sessions anyone can forge.
KNOWN_KEY_PREFIXES = ("django-insecure-", "dev-insecure", "test-insecure", "bench-insecure", "build-only", "changeme", "change-me")
MIN_KEY_LENGTH = 50  # Django's own deploy check (security.W009) asks for 50 characters
MIN_KEY_BITS = 128


def secret_key_problem(key: str) -> str | None:
    """Why `key` must not sign production sessions, or None. Its entropy is estimated from its
    own character frequencies (Shannon), so a long key of few distinct characters fails too."""
    if not key:
        return "it is not set"
    if key.lower().startswith(KNOWN_KEY_PREFIXES):
        return "it is a published placeholder"
    if len(key) < MIN_KEY_LENGTH:
        return f"it has {len(key)} characters; at least {MIN_KEY_LENGTH} are needed"
    counts = Counter(key)
    bits = -sum(n * math.log2(n / len(key)) for n in counts.values())
    if bits < MIN_KEY_BITS or len(counts) < 10:
        return f"it is too predictable (about {bits:.0f} bits; at least {MIN_KEY_BITS} from a random generator)"
    return None


_problem = secret_key_problem(SECRET_KEY)
if _problem:
    raise ImproperlyConfigured(
        f"DJANGO_SECRET_KEY is unsafe: {_problem}. Generate one with "
        "python -c 'import secrets; print(secrets.token_urlsafe(50))'."
    )
if not os.environ.get("DATABASE_URL") or not os.environ.get("REDIS_URL"):
    raise ImproperlyConfigured("Set DATABASE_URL and REDIS_URL; production does not use embedded services.")

DEBUG = False
# https://whitenoise.readthedocs.io/en/stable/django.html#add-compression-and-caching-support
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedManifestStaticFilesStorage"},
}
SESSION_COOKIE_SECURE = os.environ.get("DJANGO_SECURE_COOKIES", "true").lower() == "true"
CSRF_COOKIE_SECURE = SESSION_COOKIE_SECURE
# HTTPS only, by default (docs/deployment.md). Behind a proxy that terminates TLS and forwards
# plain HTTP, set DJANGO_SECURE_PROXY_SSL_HEADER=true so requests it marks https are known to be
# (https://docs.djangoproject.com/en/5.2/ref/settings/#secure-proxy-ssl-header); only for a
# proxy that sets X-Forwarded-Proto itself. DJANGO_SECURE_SSL_REDIRECT=false leaves redirection
# to the proxy.
SECURE_SSL_REDIRECT = os.environ.get("DJANGO_SECURE_SSL_REDIRECT", "true").lower() == "true"
# https://docs.djangoproject.com/en/5.2/ref/middleware/#http-strict-transport-security
SECURE_HSTS_SECONDS = int(os.environ.get("DJANGO_SECURE_HSTS_SECONDS", str(365 * 24 * 3600)))
# HSTS for every subdomain too, and the preload flag (which lets the domain be submitted to the
# browsers' preload list; sending it submits nothing). Both on by default so `check --deploy
# --fail-level WARNING` passes (tests/test_config.py runs it as CI does). A domain whose
# subdomains are not all HTTPS sets DJANGO_SECURE_HSTS_INCLUDE_SUBDOMAINS=false (and then
# preload, which requires it, goes off too); that choice is the operator's, so the two checks
# that would only repeat it (security.W005, W021) are silenced with it.
# https://docs.djangoproject.com/en/5.2/ref/settings/#secure-hsts-include-subdomains
# https://docs.djangoproject.com/en/5.2/ref/settings/#secure-hsts-preload
SECURE_HSTS_INCLUDE_SUBDOMAINS = os.environ.get("DJANGO_SECURE_HSTS_INCLUDE_SUBDOMAINS", "true").lower() == "true"
SECURE_HSTS_PRELOAD = SECURE_HSTS_INCLUDE_SUBDOMAINS and os.environ.get("DJANGO_SECURE_HSTS_PRELOAD", "true").lower() == "true"
SILENCED_SYSTEM_CHECKS = [
    *([] if SECURE_HSTS_INCLUDE_SUBDOMAINS else ["security.W005"]),
    *([] if SECURE_HSTS_PRELOAD else ["security.W021"]),
]
if os.environ.get("DJANGO_SECURE_PROXY_SSL_HEADER", "false").lower() == "true":
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")

# Outgoing mail (the admins' notifications) through an SMTP server named by the environment.
# https://docs.djangoproject.com/en/5.2/topics/email/#smtp-backend
# Without EMAIL_HOST the mail is printed to the worker's log instead of sent.
EMAIL_HOST = os.environ.get("EMAIL_HOST", "")
EMAIL_BACKEND = (
    "django.core.mail.backends.smtp.EmailBackend" if EMAIL_HOST else "django.core.mail.backends.console.EmailBackend"
)
EMAIL_PORT = int(os.environ.get("EMAIL_PORT", "587"))
EMAIL_HOST_USER = os.environ.get("EMAIL_HOST_USER", "")
EMAIL_HOST_PASSWORD = os.environ.get("EMAIL_HOST_PASSWORD", "")
# https://docs.djangoproject.com/en/5.2/ref/settings/#email-use-tls (STARTTLS, port 587) and
# #email-use-ssl (implicit TLS, port 465); only one may be on.
EMAIL_USE_SSL = os.environ.get("EMAIL_USE_SSL", "false").lower() == "true"
EMAIL_USE_TLS = not EMAIL_USE_SSL and os.environ.get("EMAIL_USE_TLS", "true").lower() == "true"
EMAIL_TIMEOUT = int(os.environ.get("EMAIL_TIMEOUT", "30"))
