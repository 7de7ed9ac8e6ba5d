# The two commands a newcomer needs: `make demo` and `make test`. Both set everything up themselves.
SHELL := /bin/bash
export PATH := $(CURDIR)/.venv/bin:$(PATH)
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PY := $(BIN)/python
STAMP := $(VENV)/.installed
PROTOS := $(shell find protos -name '*.proto')

.PHONY: demo test lint protos install migrate bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check --upgrade pip
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	# The generated code lives in gen/; put it (and the project) on the venv's import path.
	echo "$(CURDIR)/gen" > $$($(PY) -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/stillpoint-gen.pth
	touch $(STAMP)

install: $(STAMP)

gen/.stamp: $(PROTOS) $(STAMP)
	rm -rf gen && mkdir -p gen
	$(PY) -m grpc_tools.protoc -I protos --python_out=gen --grpc_python_out=gen \
	  --mypy_out=gen --mypy_grpc_out=only_async:gen $(PROTOS)
	touch gen/.stamp

protos: gen/.stamp

lint: protos
	$(BIN)/buf format --diff --exit-code
	$(BIN)/buf lint
	scripts/buf-breaking.sh
	scripts/check-compose.sh
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .
	$(BIN)/mypy

test: protos
	$(MAKE) lint
	# Debian's Chromium plays every rendered video in the browser tests.
	scripts/ensure-chromium.sh
	$(BIN)/pytest -q

# Upgrades DATABASE_URL (SQLite under var/ by default) to the newest schema; the content service
# refuses to start on an unmigrated database.
migrate: protos
	$(PY) -m services.content.migrate

demo: protos
	$(PY) -m scripts.demo

# The reference pipeline (the system Stillpoint replaces) vs Stillpoint, on its latency model; writes var/bench/report.{json,md} and a chart.
bench: protos
	$(PY) -m bench

clean:
	rm -rf gen var out
