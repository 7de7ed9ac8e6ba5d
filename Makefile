# The two commands a newcomer needs: `make demo` and `make test`. Both set everything up themselves.
SHELL := /bin/bash
export PATH := $(CURDIR)/.venv/bin:$(PATH)
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PY := $(BIN)/python
STAMP := $(VENV)/.installed
# The hashed locks: runtime (what the image installs) and runtime + dev (what `make install` installs).
RUNTIME_LOCK := requirements/runtime.lock
DEV_LOCK := requirements/dev.lock
# Universal: one lock resolves on every platform (Linux x86_64 and aarch64, macOS) from Python 3.11 up.
# `make lock LOCK_FLAGS=--upgrade` moves every pin to the newest release; without it pins stay put.
LOCK_FLAGS ?=
UV_COMPILE := $(BIN)/uv pip compile pyproject.toml --quiet --universal --python-version 3.11 --generate-hashes \
  --custom-compile-command 'make lock' $(LOCK_FLAGS)
PROTOS := $(shell find protos -name '*.proto')

.PHONY: demo run test lint audit protos install lock migrate bench clean web

$(STAMP): $(DEV_LOCK) pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	# Every dependency comes from the lock, each file checked against its hash; then the project alone.
	$(PY) -m pip install --quiet --disable-pip-version-check --require-hashes --requirement $(DEV_LOCK)
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps -e .
	# The lock must satisfy pyproject.toml's runtime requirements: one added there but not locked fails here.
	$(PY) -m pip check
	# The generated code lives in gen/; put it (and the project) on the venv's import path.
	echo "$(CURDIR)/gen" > $$($(PY) -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/stillpoint-gen.pth
	touch $(STAMP)

install: $(STAMP)

# Regenerates both locks from pyproject.toml. The runtime lock is constrained by the dev lock so that the
# image runs the very versions the tests ran.
# Not behind the install stamp: after a new dependency goes into pyproject.toml the install fails its
# `pip check` until the lock has it. uv comes pinned from the dev lock once installed.
lock:
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	test -x $(BIN)/uv || $(PY) -m pip install --quiet --disable-pip-version-check uv
	$(UV_COMPILE) --extra dev --output-file $(DEV_LOCK)
	$(UV_COMPILE) --constraint $(DEV_LOCK) --output-file $(RUNTIME_LOCK)

gen/.stamp: $(PROTOS) $(STAMP)
	rm -rf gen && mkdir -p gen
	$(PY) -m grpc_tools.protoc -I protos --python_out=gen --grpc_python_out=gen \
	  --mypy_out=gen --mypy_grpc_out=only_async:gen $(PROTOS)
	touch gen/.stamp

protos: gen/.stamp

# The page (web/): its npm packages from the committed lock, its gRPC-Web client generated from protos/ by
# Buf with the local protoc-gen-es (offline), and its bundle built by Vite into web/dist/, which the edge
# serves. Each step reruns only when its inputs change. The Buf here is npm's (the same release as the
# lint's), so the edge image's Node stage (Dockerfile) builds the page with the very same commands.
WEB_SOURCES := $(shell find web/src -path web/src/gen -prune -o -type f -print) web/index.html \
  web/vite.config.ts web/tsconfig.json examples/conversation.json
web/node_modules/.stamp: web/package.json web/package-lock.json
	cd web && npm ci --no-audit --no-fund --loglevel=error
	touch $@

web/src/gen/.stamp: $(shell find protos/stillpoint/gateway -name '*.proto') web/buf.gen.yaml web/node_modules/.stamp
	rm -rf web/src/gen
	web/node_modules/.bin/buf generate --template web/buf.gen.yaml --path protos/stillpoint/gateway/v1
	touch $@

web/dist/index.html: web/src/gen/.stamp $(WEB_SOURCES)
	cd web && npm run --silent build
	touch $@

web: web/dist/index.html

lint: protos
	$(BIN)/buf format --diff --exit-code
	$(BIN)/buf lint
	scripts/buf-breaking.sh
	scripts/check-compose.sh
	scripts/check-observability.sh
	scripts/check-kubernetes.sh
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(MAKE) audit

# Known vulnerabilities in every pin of the dev lock (a superset of the runtime lock), from the lock alone.
# AUDIT_UNREACHABLE=warn (the default) lets lint pass, with a loud NOT AUDITED, where the advisory service
# cannot be reached (CI here reaches PyPI's packages but not its advisory API nor OSV); set it to fail where
# the audit must run. Offline: AUDIT_DB=path/to/all.zip, OSV's PyPI advisories (see scripts/audit_lock.py).
AUDIT_UNREACHABLE ?= warn
AUDIT_SERVICE ?= pypi
AUDIT_DB ?=
audit: $(STAMP)
	$(PY) -m scripts.audit_lock $(DEV_LOCK) --service $(AUDIT_SERVICE) --unreachable $(AUDIT_UNREACHABLE) \
	  $(if $(AUDIT_DB),--db $(AUDIT_DB))

# Test files run two at a time (a file's tests stay together, on one worker, in order): most real-process
# tests wait on their services, so the second core is otherwise idle. TEST_WORKERS=0 runs them in one process.
TEST_WORKERS ?= 2
test: protos web
	$(MAKE) lint
	# Debian's Chromium plays every rendered video in the browser tests.
	scripts/ensure-chromium.sh
	$(BIN)/pytest -q -n $(TEST_WORKERS) --dist loadfile

# Upgrades DATABASE_URL (SQLite under var/ by default) to the newest schema; the content service
# refuses to start on an unmigrated database.
migrate: protos
	$(PY) -m services.content.migrate
	$(PY) -m services.gateway.migrate

demo: protos web
	$(PY) -m scripts.demo

# The whole local stack in the foreground, printing the gateway's address and a key for this run; Ctrl-C stops it.
run: protos web
	$(PY) -m scripts.run

# The reference pipeline (the system Stillpoint replaces) vs Stillpoint, on its latency model; writes var/bench/report.{json,md} and a chart.
bench: protos
	$(PY) -m bench

clean:
	rm -rf gen var out web/dist web/src/gen web/node_modules
