# The two commands a new user needs: `make demo` and `make test`. Both set up .venv on first use.
PYTHON ?= python3
VENV ?= .venv
EXTRAS ?= dev
PY := $(VENV)/bin/python
comma := ,
STAMP := $(VENV)/.installed-$(subst $(comma),-,$(EXTRAS))
PYTEST_ARGS ?=

.PHONY: install demo test test-quick test-fast parity plan bench lint docs clean

install: $(STAMP)

$(STAMP): setup.py
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[$(EXTRAS)]"
	@touch $(STAMP)

demo: install
	$(PY) -m baichuan_audio_jax demo --out demo_out

# Tests run on TEST_WORKERS processes (pytest-xdist; a module's tests stay on one worker).
TEST_WORKERS ?= 2
XDIST = -n $(TEST_WORKERS) --dist loadscope

# Everything: every layer (unit, parity, integration), the long end-to-end runs included. What CI runs.
test: install
	$(PY) -m pytest -q $(XDIST) tests $(PYTEST_ARGS)

# Everything but the long end-to-end runs marked slow (preemption, divergence, every mesh shape, the demo).
test-quick: install
	$(PY) -m pytest -q $(XDIST) tests -m "not slow" $(PYTEST_ARGS)

# The unit layer only: fast, no fixtures needed (docs/architecture.md).
test-fast: install
	$(PY) -m pytest -q $(XDIST) tests/unit -m "not parity" $(PYTEST_ARGS)

parity: install
	$(PY) -m baichuan_audio_jax parity --fixtures ../shared/parity

# `make plan CONFIG=configs/baichuan_audio_7b.py TOPOLOGY=v5p:4x4x4`: AOT-compile the train step
# for a TPU slice from this machine. libtpu lives in its own environment (.venv-tpu, `tpu` extra).
CONFIG ?= configs/baichuan_audio_7b.py
TOPOLOGY ?= v5p:4x4x4
PLAN_ARGS ?=
TPU_VENV ?= .venv-tpu
TPU_STAMP := $(TPU_VENV)/.installed-tpu

$(TPU_STAMP): setup.py
	@test -x $(TPU_VENV)/bin/python || $(PYTHON) -m venv $(TPU_VENV)
	$(TPU_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(TPU_VENV)/bin/python -m pip install --quiet -e ".[tpu]"
	@touch $(TPU_STAMP)

plan: $(TPU_STAMP)
	$(TPU_VENV)/bin/python -m baichuan_audio_jax plan --config $(CONFIG) --topology $(TOPOLOGY) $(PLAN_ARGS)

bench: install
	$(PY) benchmarks/train_step.py

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports

# `make docs`: the documentation site (docs/ + API pages from the docstrings) built into site/.
DOCS_STAMP := $(VENV)/.installed-docs

$(DOCS_STAMP): setup.py
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -e ".[docs]"
	@touch $(DOCS_STAMP)

docs: $(DOCS_STAMP)
	$(VENV)/bin/mkdocs build --strict --site-dir site

clean:
	rm -rf $(VENV) $(TPU_VENV) demo_out site .pytest_cache
