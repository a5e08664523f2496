# make demo  : set up, start sandbox VM vm1, deploy MLflow to it, deep health check
# make test  : set up, lint, unit tests, Molecule (postgresql_external), end-to-end over SSH
SHELL := /bin/bash
VENV := .venv
BIN := $(CURDIR)/$(VENV)/bin
export PATH := $(BIN):$(PATH)
export CONTAINERS_CONF := $(CURDIR)/cli/mlops_provision/sandbox/containers.conf
# One wheelhouse and one image cache shared by the demo, Molecule and the e2e tests.
export MLOPS_PROVISION_CACHE ?= $(HOME)/.cache/mlops-provision
export ANSIBLE_CONFIG := $(CURDIR)/ansible.cfg
# What users install (scripts/install_built.sh): the wheel in a venv outside the checkout, and
# pipx's install of it. The demo, the e2e tests and the benchmarks run these, not .venv's.
export MLOPS_PROVISION_INSTALLED_ROOT ?= $(HOME)/.cache/mlops-provision-installed
INSTALLED_CLI := $(MLOPS_PROVISION_INSTALLED_ROOT)/venv/bin/mlops-provision
PIPX_CLI := $(MLOPS_PROVISION_INSTALLED_ROOT)/pipx/bin/mlops-provision
# The end-to-end tests run as a user's install would: no project ansible.cfg.
AS_INSTALLED := env -u ANSIBLE_CONFIG MLOPS_PROVISION_CLI=$(INSTALLED_CLI) MLOPS_PROVISION_PIPX_CLI=$(PIPX_CLI) \
    MLOPS_PROVISION_COLLECTION_DIR=$(CURDIR)/.cache/dist/collection
# The mlflow clients of tests and benchmarks send no usage telemetry anywhere.
export MLFLOW_DISABLE_TELEMETRY := true
export DO_NOT_TRACK := true

.PHONY: setup installed demo test lint unit molecule molecule-all e2e e2e-scale-out images bench clean-sandboxes

setup:
	@bash scripts/setup.sh

installed: setup
	@bash scripts/install_built.sh

images: setup
	mlops-provision sandbox image --distro debian12
	mlops-provision sandbox image --distro debian13

demo: installed
	$(INSTALLED_CLI) sandbox up --name vm1
	$(INSTALLED_CLI) deploy --host vm1
	$(INSTALLED_CLI) health --host vm1 --deep

lint: setup
	ruff check cli tests scripts molecule
	mypy
	yamllint --strict .
	ansible-lint --profile production

unit: setup
	pytest -q --durations=10 tests/unit

# The scenario whose ground the end-to-end tests do not cover: the role applied on its own, on
# Debian 13, with PostgreSQL on a separate host: converge and verify (the end-to-end tests prove
# that a second deploy changes nothing; `make molecule-all` runs every scenario's full sequence,
# idempotence included). default (Debian 12 + 13, SQLite), tls, s3, azure and postgresql (same
# ground as tests/e2e through the CLI on Debian 12) run there too.
MOLECULE_SCENARIOS ?= postgresql_external
# The first destroy clears what an interrupted run left (every scenario names its containers
# and network molecule-*, and Molecule's state may still say created); on a clean machine it
# is skipped (12 s and as many CPU-seconds).
molecule: images
	cd $(CURDIR) && for s in $(MOLECULE_SCENARIOS); do \
	    if podman ps -a --format '{{.Names}}' | grep -q '^molecule-' \
	       || podman network ls --format '{{.Name}}' | grep -q '^molecule-' \
	       || grep -qs '^created: true' $$HOME/.ansible/tmp/molecule.*.$$s/state.yml; then \
	        molecule destroy -s $$s || exit 1; fi; \
	    molecule converge -s $$s && molecule verify -s $$s; rc=$$?; \
	    molecule destroy -s $$s; [ $$rc = 0 ] || exit 1; done

molecule-all: images
	cd $(CURDIR) && molecule test --all

# Two lanes at once (the shared-server modules, and the rest); E2E_LANES=1 for one session.
# Prints each lane's output, the slowest tests and the time per module (docs/testing.md).
e2e: images installed
	$(AS_INSTALLED) bash scripts/e2e_lanes.sh $(E2E_ARGS)

# Several servers behind HAProxy, rolls under load, the upgrade with one migration
# (tests/e2e/test_scale_out.py): 15-27 minutes alone on 2 cores (about 2,200 CPU-seconds), more
# than the 50-minute budget of `make test` has room for (docs/testing.md), so kept out of it.
e2e-scale-out: images installed
	$(AS_INSTALLED) pytest -q --durations=15 tests/e2e/test_scale_out.py

# Prints each stage's time at the end; docs/testing.md records them.
test:
	@bash scripts/timed_stages.sh setup images installed lint+unit+molecule+e2e

bench: images installed
	MLOPS_PROVISION_CLI=$(INSTALLED_CLI) python scripts/bench.py $(BENCH_ARGS)

clean-sandboxes: setup
	for n in $$(mlops-provision sandbox list | awk 'NR>1 {print $$1}'); do mlops-provision sandbox down --name $$n; done
