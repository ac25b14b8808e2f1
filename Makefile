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

.PHONY: install services run test test-fast bench clean-data stop

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet torch==2.13.0 $(if $(TORCH_INDEX_URL),--index-url $(TORCH_INDEX_URL))
	$(PY) -m pip install --quiet -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

services: install
	$(PY) manage.py devservices start

run: services
	$(PY) manage.py migrate --noinput
	$(PY) manage.py setup_demo
	$(PY) manage.py run_local

test: services
	$(PY) -m pytest

# The suite without model-training tests, for quick local loops.
test-fast: services
	$(PY) -m pytest -m "not slow"

stop:
	$(PY) manage.py devservices stop

clean-data: stop
	rm -rf .data
