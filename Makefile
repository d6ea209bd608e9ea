# hftfarm: `make run` runs the main job on the default config; `make test` runs the test suite.
# Both create .venv with the pinned dependencies first (needs only python3.11, make and gcc).
PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: run test test-all bench venv clean check-config

$(STAMP): requirements.txt
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "make: $(PYTHON) not found (set PYTHON=...)" >&2; exit 2; }
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	@touch $(STAMP)

venv: $(STAMP)

run: $(STAMP)
	$(PY) run.py run --config config.toml

# Debian packages the tests need, installed if missing (idempotent; a non-root user needs sudo)
DEB_POSTGRES = command -v /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq postgresql; }

test: $(STAMP)
	@$(DEB_POSTGRES)
	$(PY) -m pytest -q --durations=25

# the slow stress tests at full size, too
test-all: $(STAMP)
	$(PY) -m pytest -q --run-slow

bench: $(STAMP)
	$(PY) run.py bench ipc

check-config: $(STAMP)
	$(PY) run.py check-config --config config.toml

clean:
	$(PY) run.py shm clean 2>/dev/null || true
	rm -rf $(VENV) .pytest_cache .numba_cache
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
