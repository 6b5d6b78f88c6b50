# CNET developer entry points. `make run` and `make test` work on a fresh machine.
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
TOPOLOGY ?= topologies/jiangsu.yaml
PYTEST_ARGS ?=
# The seed's programs; `make build` puts a launcher of each console script in bin/.
SEED_PROGRAMS = cnet-agent cnet-inference-yolo cnet-inference-opencv cnet-gateway-data
VENV_FROM_ROOT = $(if $(filter /%,$(VENV)),$(VENV),$$root/$(VENV))

.PHONY: setup build configs run stop status test bench lint podman-up podman-down clean

$(BIN)/.installed: setup.py
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $@

setup: $(BIN)/.installed

build: setup $(addprefix bin/,$(SEED_PROGRAMS))  ## install CNET in the venv and the seed's programs in bin/

bin/%: $(BIN)/.installed Makefile
	@mkdir -p bin
	@printf '%s\n' '#!/bin/sh' '# Made by `make build`: the $* console script of $(VENV).' \
	  'root=$$(cd "$$(dirname "$$0")/.." && pwd)' 'exec "$(VENV_FROM_ROOT)/bin/$*" "$$@"' > $@
	@chmod +x $@

configs: setup  ## rewrite configs/config_<node>.yaml from the Jiangsu topology
	$(BIN)/cnet configs topologies/jiangsu.yaml --out configs

run: setup  ## start the default topology in the background and print its URLs
	$(BIN)/cnet cluster up $(TOPOLOGY)

stop: setup  ## stop what `make run` started
	$(BIN)/cnet cluster down $(TOPOLOGY)

status: setup
	$(BIN)/cnet cluster status $(TOPOLOGY)

test: setup  ## the whole suite (container tests need `make podman-up` first, else they skip)
	$(BIN)/pytest $(PYTEST_ARGS)

bench: setup  ## benchmarks, each beside a same-run baseline (not part of `make test`)
	@set -e; for b in tests/bench/bench_*.py; do echo "== $$b"; $(BIN)/python $$b; done

lint: setup
	$(BIN)/ruff check cnet bus services tests

podman-up:  ## a Podman service speaking the Docker Engine API, for container workloads
	bash .ci/podman-up

podman-down:
	bash .ci/podman-down

clean:
	rm -rf $(VENV) bin run test-output .pytest_cache *.egg-info
