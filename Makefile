# One command each, on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN = $(VENV)/bin

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e ".[test]"
	touch $@

# Byte-compile tailor's own modules: an editable install leaves them uncompiled, and where
# PYTHONDONTWRITEBYTECODE is set every Ray worker compiled them again (about 0.3 CPU-s each).
setup: $(BIN)/.installed
	$(BIN)/python -m compileall -q operators pipelines

demo: setup
	$(BIN)/tailor demo --out demo

# The browser tests (tests/test_browse.py) drive Debian's headless Chromium; only `make test` installs it.
browser:
	@test -x /usr/bin/chromium || (apt-get update -q && DEBIAN_FRONTEND=noninteractive \
		apt-get install -y -q chromium chromium-driver) \
		|| echo "make: could not install chromium (apt-get as root); the browser tests will fail"

test: setup browser
	$(BIN)/python -m pytest -q -ra -n 2 --dist loadfile

lint: setup
	$(BIN)/ruff check operators pipelines tests benchmarks

.PHONY: setup demo test lint browser
