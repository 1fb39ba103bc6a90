# The two commands of the README: `make demo` and `make test`. Both install what they need into
# .venv on first use (about 1.5 minutes) and skip the install afterwards until pyproject.toml changes.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test lint crd clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@echo "installing trainforge[dev] into $(VENV) (log: $(VENV)/install.log)"
	@$(BIN)/python -m pip install --disable-pip-version-check -q -e '.[dev]' >$(VENV)/install.log 2>&1 \
		|| { grep -v "^WARNING: Location" $(VENV)/install.log | tail -40; exit 1; }
	@touch $@

install: $(STAMP)

demo: install
	$(BIN)/trainforge validate examples/*.yaml
	$(BIN)/python examples/preempt_resume.py examples/digits-ddp.yaml

lint: install
	$(BIN)/ruff check .

test: lint
	$(BIN)/python -m pytest

crd: install
	$(BIN)/trainforge crd -o charts/trainforge/crds/trainingjobs.trainforge.dev.yaml

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache trainforge-runs
