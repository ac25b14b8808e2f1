"""Settings for `make run` on a laptop: debug on, a fixed insecure key that production refuses."""

from config.settings.base import *  # noqa: F403
from config.settings.base import SECRET_KEY as _SECRET_KEY

DEBUG = True
SECRET_KEY = _SECRET_KEY or "dev-insecure-key-do-not-use-in-production"
