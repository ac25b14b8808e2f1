# ragloop: `make run` starts the platform with a demo knowledge base; `make test` runs the suite.
# Both set everything up on a fresh machine that has Python 3.11+ (nothing outside this folder
# is written, apart from pip's cache).

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
# Optional: a PyTorch wheel index for CPU builds (e.g. https://download.pytorch.org/whl/cpu);
# without it pip takes torch==2.13.0 from its configured indexes.
TORCH_INDEX_URL ?=

.PHONY: install services run test test-fast browser clean-data stop

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet torch==2.13.0 $(if $(TORCH_INDEX_URL),--index-url $(TORCH_INDEX_URL))
	$(PY) -m pip install --quiet -e ".[test]"
	# Without its `ninja` dependency, which would overwrite django-ninja's package (pyproject.toml).
	$(PY) -m pip install --quiet --no-deps nncf==3.4.0
	touch $(STAMP)

install: $(STAMP)

services: install
	$(PY) manage.py devservices start

run: services
	$(PY) manage.py migrate --noinput
	$(PY) manage.py setup_demo
	$(PY) manage.py run_local

test: services browser
	$(PY) -m pytest

# The browser tests drive Debian's Chromium through Playwright (Playwright's own browser
# download is not used). Installed here when missing and we may; otherwise those tests skip
# with a loud reason.
browser:
	@if command -v chromium >/dev/null 2>&1; then echo "chromium: $$(command -v chromium)"; \
	elif [ "$$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then \
	  echo "installing Debian chromium for the browser tests"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	else echo "WARNING: chromium is not installed and cannot be installed here: browser tests will be SKIPPED"; fi

# The suite without model-training tests, for quick local loops.
test-fast: services
	$(PY) -m pytest -m "not slow"

stop:
	$(PY) manage.py devservices stop

clean-data: stop
	rm -rf .data
