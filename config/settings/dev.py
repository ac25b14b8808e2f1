"""Settings for `make run` on a laptop: debug on, a fixed insecure key that production refuses."""

from config.settings.base import *  # noqa: F403
from config.settings.base import SECRET_KEY as _SECRET_KEY

DEBUG = True
SECRET_KEY = _SECRET_KEY or "dev-insecure-key-do-not-use-in-production"
# Mail is printed by the process that sends it (the worker), not sent.
# https://docs.djangoproject.com/en/5.2/topics/email/#console-backend
EMAIL_BACKEND = "django.core.mail.backends.console.EmailBackend"
