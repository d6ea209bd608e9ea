# hftfarm: `make run` runs the main job on the default config; `make test` runs the test suite.
# Both create .venv with the pinned dependencies first (needs only python3.11, make and gcc).
PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: run test test-all bench venv clean check-config deps

$(STAMP): requirements.txt
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "make: $(PYTHON) not found (set PYTHON=...)" >&2; exit 2; }
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	@touch $(STAMP)

venv: $(STAMP)

run: $(STAMP)
	$(PY) run.py run --config config.toml

# Debian packages the tests use: promtool (prometheus) checks deploy/prometheus, chromium
# drives the web dashboard, PostgreSQL's server takes the sink's test (tests/pgserver.py starts
# a throwaway one). Quick when they are there; installs them as root otherwise.
DEB_DEPS := promtool:prometheus chromium:chromium
deps:
	@missing=""; for d in $(DEB_DEPS); do command -v $${d%%:*} >/dev/null 2>&1 || missing="$$missing $${d#*:}"; done; \
	ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1 || missing="$$missing postgresql"; \
	if [ -n "$$missing" ]; then \
		if [ "$$(id -u)" != 0 ]; then echo "make deps: need root to install:$$missing" >&2; exit 2; fi; \
		echo "make deps: installing$$missing"; \
		apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q $$missing; \
	fi

# The suite runs on every core (pytest-xdist, at most 4 workers): cold, most of its time is numba
# compiling, which is one core per process. Tests that start processes stay on one worker, one
# after another (tests/conftest.py: _work_unit). TEST_JOBS=0 runs it in this process.
TEST_JOBS ?= auto

test: $(STAMP) deps
	$(PY) -m pytest -q -n $(TEST_JOBS) --maxprocesses=4 --dist loadscope --durations=25

# the slow stress tests at full size, too
test-all: $(STAMP) deps
	$(PY) -m pytest -q -n $(TEST_JOBS) --maxprocesses=4 --dist loadscope --run-slow

bench: $(STAMP)
	$(PY) run.py bench ipc

check-config: $(STAMP)
	$(PY) run.py check-config --config config.toml

clean:
	$(PY) run.py shm clean 2>/dev/null || true
	rm -rf $(VENV) .pytest_cache .numba_cache
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
