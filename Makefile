# gmemcload: every entry point of the project.  `make help` lists them.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# The compiled encoder, built beside gmemcload.py (see setup.py).
NATIVE := native_encoder$(shell $(PYTHON) -c \
	'import sysconfig; print(sysconfig.get_config_var("EXT_SUFFIX"))')
PORTS := 33013 33014 33015 33016
DATA := data
RUN_DIR := .run
BENCH_FILES ?= 3
BENCH_LINES ?= 500000
# Lines of a real-size file row (a minute file has 3420000); 0: no row.
BENCH_REAL ?= 0

.PHONY: help install build-tools memcached run stop test lint fuzz bench mutants proto clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | \
		awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

install: $(STAMP) $(NATIVE)  ## create .venv with the pinned requirements, build the compiled encoder

$(STAMP): requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -r requirements.txt
	touch $(STAMP)

build-tools:  ## install a C compiler, Python's headers and zlib's if missing
	@command -v gcc >/dev/null && [ -f /usr/include/zlib.h ] && \
	$(PYTHON) -c 'import os, sys, sysconfig; sys.exit(not os.path.exists(\
		os.path.join(sysconfig.get_paths()["include"], "Python.h")))' || { \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && \
		$$SUDO apt-get install -y -qq gcc python3-dev zlib1g-dev \
			>/dev/null; }

$(NATIVE): native_encoder.pyx setup.py $(STAMP)
	@$(MAKE) --no-print-directory build-tools
	$(PY) setup.py --quiet build_ext --inplace || { \
		echo 'make install: the compiled encoder (native_encoder.pyx)' \
			'did not build; see the compiler output above' >&2; \
		exit 1; }

memcached:  ## install Debian's memcached if it is missing
	@command -v memcached >/dev/null || { \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && \
		$$SUDO apt-get install -y -qq memcached >/dev/null; }
	@command -v memcached >/dev/null

run: install memcached  ## load a generated sample into memcached on 33013-33016
	@mkdir -p $(RUN_DIR)
	@for port in $(PORTS); do \
		if (exec 3<>/dev/tcp/127.0.0.1/$$port) 2>/dev/null; then \
			echo "memcached already up on 127.0.0.1:$$port"; \
		else \
			memcached -d -l 127.0.0.1 -p $$port -U 0 -m 256 \
				$$( [ "$$(id -u)" = 0 ] && echo -u root ) \
				-P $(CURDIR)/$(RUN_DIR)/memcached-$$port.pid && \
			echo "started memcached on 127.0.0.1:$$port"; \
		fi; \
	done
	@ls $(DATA)/*.tsv.gz >/dev/null 2>&1 || \
		$(PY) tests/generate.py $(DATA) --files 3 --lines 100000 \
			--after-processed
	$(PY) gmemcload.py --pattern '$(DATA)/*.tsv.gz'

stop:  ## stop the memcached daemons that `make run` started
	@for pidfile in $(RUN_DIR)/memcached-*.pid; do \
		[ -f "$$pidfile" ] && kill "$$(cat $$pidfile)" && rm -f "$$pidfile"; \
	done; true

lint: install  ## check PEP 8 (pycodestyle, setup.cfg) and real mistakes (pyflakes)
	$(VENV)/bin/pycodestyle gmemcload.py tests
	$(VENV)/bin/pyflakes gmemcload.py tests

test: install memcached lint  ## lint, then run every test
	$(VENV)/bin/pytest -q tests

fuzz: install  ## run the property tests with many more examples (slow)
	HYPOTHESIS_PROFILE=fuzz $(VENV)/bin/pytest -q tests/test_properties.py \
		tests/test_native.py tests/test_fast_path.py

bench: install memcached  ## measure speed and correctness (BENCH_FILES, BENCH_LINES, BENCH_REAL)
	$(PY) tests/bench.py --files $(BENCH_FILES) --lines $(BENCH_LINES) \
		--real-size $(BENCH_REAL)

mutants: install memcached  ## break each guarantee on purpose; fail if a test misses it
	$(PY) tests/mutants.py

proto:  ## regenerate proto/appsinstalled_pb2.py with protoc
	@command -v protoc >/dev/null || { \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && \
		$$SUDO apt-get install -y -qq protobuf-compiler >/dev/null; }
	protoc --python_out=proto -Iproto proto/appsinstalled.proto

clean:  ## remove .venv, caches and generated data
	rm -rf $(VENV) .pytest_cache $(DATA) .bench $(RUN_DIR) build \
		native_encoder.c native_encoder.*.so
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
