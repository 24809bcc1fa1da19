# Every target builds what it needs from nothing but a Python interpreter.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

BENCH  := $(VENV)/.bench-installed

.PHONY: test lint run run-queue check bench soak soak-queue package clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest

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

# The example in docs_src/scaling_out.py, with two workers, on RabbitMQ at 127.0.0.1:5672
# (BROKER=rabbitmq, the default) or Redis at 127.0.0.1:6379 (BROKER=redis); BROKER_URL, if
# set, names another. PORT: where the app is served (8000).
BROKER ?= rabbitmq
PORT   ?= 8000
BROKER_URL_rabbitmq := amqp://guest:guest@127.0.0.1:5672/
BROKER_URL_redis    := redis://127.0.0.1:6379/0

run-queue: $(STAMP)
	@test -n "$(BROKER_URL_$(BROKER))" || \
	  { echo "make run-queue: BROKER is rabbitmq or redis, got '$(BROKER)'" >&2; exit 2; }
	export BROKER_URL="$${BROKER_URL:-$(BROKER_URL_$(BROKER))}"; \
	$(BIN)/esm-tasks worker docs_src.scaling_out:app & first=$$!; \
	$(BIN)/esm-tasks worker docs_src.scaling_out:app & second=$$!; \
	trap 'kill -TERM $$first $$second 2>/dev/null; wait' EXIT INT TERM; \
	$(BIN)/python -m uvicorn docs_src.scaling_out:app --host 127.0.0.1 --port $(PORT)

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
	rm -rf $(VENV) build dist *.egg-info
