# Every target builds what it needs from nothing but a Python interpreter.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

BENCH  := $(VENV)/.bench-installed
DOCS   := $(VENV)/.docs-installed
BROWSER := $(VENV)/.browser-installed

# The Swagger UI the API page loads (esm_tasks/openapi.py names it), fetched from the npm
# registry for the browser tests, which serve it in place of the CDN.
SWAGGER_UI_VERSION := $(shell sed -n 's|.*swagger-ui-dist@\([0-9.]*\)".*|\1|p' esm_tasks/openapi.py)
SWAGGER_UI := build/swagger-ui-dist@$(SWAGGER_UI_VERSION)/package/swagger-ui-bundle.js
# The diagrams' script the site's theme loads (mermaid 12), likewise.
MERMAID := build/mermaid@12/package/dist/mermaid.min.js

.PHONY: test test-pythons test-browser lint run run-queue check bench soak soak-queue package docs docs-serve clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

# With branch coverage of the package, in the workers and servers the tests start too; below
# the floor in pyproject.toml ([tool.coverage.report] fail_under) the target fails. coverage
# runs pytest, rather than a pytest plugin starting it: pytest imports esm_tasks (its pytest
# plugin) before any plugin of its own could start measuring.
test: $(STAMP)
	$(BIN)/python -m coverage erase
	$(BIN)/python -m coverage run -m pytest
	$(BIN)/python -m coverage combine --quiet
	$(BIN)/python -m coverage report --skip-covered

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
	$(BIN)/ruff format --check esm_tasks tests docs_src bench tools
	$(BIN)/ruff check esm_tasks tests docs_src bench tools
	$(BIN)/mypy esm_tasks docs_src tools

$(DOCS): $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[docs]'
	touch $(DOCS)

# Strict: a broken link or anchor, a missing snippet, or a page missing from the nav (or
# listed there and missing) fails the build.
docs: $(DOCS)
	$(BIN)/python -m tools.check_docs
	$(BIN)/zensical build --strict --clean

docs-serve: $(DOCS)
	$(BIN)/zensical serve --dev-addr 127.0.0.1:8001

$(BROWSER): $(DOCS)
	$(BIN)/python -m pip install --quiet -e '.[browser]'
	touch $(BROWSER)

$(SWAGGER_UI):
	rm -rf build/swagger-ui-dist@$(SWAGGER_UI_VERSION)
	mkdir -p build/swagger-ui-dist@$(SWAGGER_UI_VERSION)
	cd build/swagger-ui-dist@$(SWAGGER_UI_VERSION) && \
	  npm pack --silent swagger-ui-dist@$(SWAGGER_UI_VERSION) >/dev/null && \
	  tar xzf swagger-ui-dist-$(SWAGGER_UI_VERSION).tgz

$(MERMAID):
	rm -rf build/mermaid@12
	mkdir -p build/mermaid@12
	cd build/mermaid@12 && npm pack --silent mermaid@12 >/dev/null && \
	  tar xzf mermaid-*.tgz package/dist/mermaid.min.js && rm mermaid-*.tgz

# Headless Chromium (Debian's `chromium`) opens the demo's API page, and the site, which
# the tests build as `make docs` does.
test-browser: $(BROWSER) $(SWAGGER_UI) $(MERMAID)
	$(BIN)/python -m pytest tests/browser

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
	rm -rf $(VENV) .venv-* build dist site .cache *.egg-info .coverage .coverage.*
