# The two commands: `make demo` and `make test`. Both create .venv and install the pinned
# dependency set on first use; later runs reuse it (the stamp depends on the lock file).
PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.keras-turbo-installed

.PHONY: install demo test bench clean chromium

install: $(STAMP)

$(STAMP): requirements.lock pyproject.toml
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "error: $(PYTHON) not found (keras-turbo needs Python 3.11)"; exit 2; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.lock
	$(PY) -m pip install --quiet --no-deps -e .
	touch $(STAMP)

demo: install
	$(VENV)/bin/keras-turbo demo

# The report test renders report.html in Debian's headless Chromium; install it where apt can
# (root, package index reachable). Where it cannot, that one test skips and says why.
chromium:
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
	  (apt-get install -y -q chromium >/dev/null 2>&1 || (apt-get update -q >/dev/null 2>&1 && apt-get install -y -q chromium >/dev/null 2>&1)) \
	  || echo "note: chromium not installed; the report rendering test will be skipped"; }

# Two workers (pytest-xdist), each file on one of them so a module's fixtures are built once:
# on 2 cores a lone pytest keeps about 1.15 of them busy (Python, conversions, subprocesses
# between TensorFlow's multi-threaded kernels); two workers cut the suite from about 16 to 10 min.
test: install chromium
	$(PY) -m pytest -q -n 2 --dist loadfile --durations=25 tests

bench: install
	$(PY) benchmarks/runtimes.py

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info src/*.egg-info
