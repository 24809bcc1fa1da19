# Every target builds what it needs from nothing but a Python interpreter.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

BENCH  := $(VENV)/.bench-installed

.PHONY: test test-pythons lint run run-queue check bench soak soak-queue package clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

# With branch coverage of the package, in the workers and servers the tests start too; below
# the floor in pyproject.toml ([tool.coverage.report] fail_under) the target fails.
test: $(STAMP)
	$(BIN)/python -m pytest --cov --cov-report=term-missing:skip-covered

# The suite on the other CPythons CI runs, each in .venv-<version>, its interpreter installed
# once by scripts/python.sh. Those in PYTHONS must run; those in OPTIONAL_PYTHONS (Debian
# unstable's, which come and go) are skipped, saying so in one line, when they cannot be had.
PYTHONS          ?= 3.13
OPTIONAL_PYTHONS ?= 3.14

test-pythons:
	@status=0; \
	for version in $(PYTHONS); do \
	  echo "== Python $$version"; scripts/test-python.sh $$version -q || status=1; \
	done; \
	for version in $(OPTIONAL_PYTHONS); do \
	  echo "== Python $$version"; scripts/test-python.sh $$version -q; code=$$?; \
	  if [ $$code -eq 3 ]; then echo "Python $$version cannot be had here; its run is skipped"; \
	  elif [ $$code -ne 0 ]; then status=1; fi; \
	done; \
	exit $$status

lint: $(STAMP)
	$(BIN)/ruff format --check esm_tasks tests docs_src bench
	$(BIN)/ruff check esm_tasks tests docs_src bench
	$(BIN)/mypy esm_tasks docs_src

check: lint test

# A plain `pip install .` into an empty environment must give a typed, working package.
package:
	rm -rf build/package-check
	$(PYTHON) -m venv build/package-check
	build/package-check/bin/python -m pip install --quiet .
	cd build && package-check/bin/python -c "import esm_tasks, importlib.metadata as m, pathlib; \
	  assert (pathlib.Path(esm_tasks.__file__).parent / 'py.typed').is_file(); \
	  assert m.version('esm-tasks') == esm_tasks.__version__; \
	  assert any(e.value == 'esm_tasks.pytest_plugin' for e in m.entry_points(group='pytest11')); \
	  print('installed esm-tasks', esm_tasks.__version__, 'with py.typed and its pytest plugin')"

run: $(STAMP)
	$(BIN)/python -m uvicorn docs_src.demo:app --host 127.0.0.1 --port 8000 --log-level info

# The example in docs_src/scaling_out.py, with two workers, on RabbitMQ at 127.0.0.1:5672.
run-queue: $(STAMP)
	$(BIN)/esm-tasks worker docs_src.scaling_out:app & first=$$!; \
	$(BIN)/esm-tasks worker docs_src.scaling_out:app & second=$$!; \
	trap 'kill -TERM $$first $$second 2>/dev/null; wait' EXIT INT TERM; \
	$(BIN)/python -m uvicorn docs_src.scaling_out:app --host 127.0.0.1 --port 8000

$(BENCH): $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[bench]'
	touch $(BENCH)

# Both run, whatever the first says; either one's miss fails the target.
bench: $(BENCH)
	status=0; for part in bench bench.queue bench.instruments; do \
	  $(BIN)/python -m $$part || status=1; done; exit $$status

soak: $(STAMP)
	$(BIN)/python -m bench.soak

# The queue backend under load with a worker SIGKILLed and the broker stopped, on RabbitMQ
# and Redis, both running on this machine (the soak stops and starts them).
soak-queue: $(STAMP)
	$(BIN)/python -m bench.soak_queue

clean:
	rm -rf $(VENV) .venv-* build dist *.egg-info .coverage .coverage.*
