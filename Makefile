# Set-up and test entry points. `make test` and `./esr-local ...` create .venv on first use.
PY ?= python3
VENV := .venv
STAMP := $(VENV)/.installed
# Portable CPU build of llama.cpp (no -march=native), without the multimodal library: ~5 min on 2 cores.
# For a GPU build set CMAKE_ARGS yourself, e.g. CMAKE_ARGS="-DGGML_CUDA=on" or "-DGGML_METAL=on".
# `make venv NATIVE=1`: build llama.cpp for this machine's CPU (-DGGML_NATIVE=ON: AVX-512 etc. where present);
# the venv then runs only on CPUs like this one. Back to portable: `make clean venv`.
ifeq ($(NATIVE),1)
CMAKE_ARGS ?= -DGGML_NATIVE=ON -DLLAVA_BUILD=OFF
NATIVE_STAMP := $(VENV)/.native
PIP_CACHE := --no-cache-dir
else
CMAKE_ARGS ?= -DGGML_NATIVE=OFF -DLLAVA_BUILD=OFF
endif

.PHONY: venv test bench clean mutate mutate-sql

venv: $(STAMP) $(NATIVE_STAMP)

# One line per phase. -qq hides pip's notices and the build backend's informational warnings; errors still show
# (pip's --log would bring the backend warnings back to the console, so none is kept).
$(STAMP): pyproject.toml
	@test -x $(VENV)/bin/python || { echo "esr-local set-up: creating $(VENV)"; $(PY) -m venv $(VENV); }
	@echo "esr-local set-up: updating pip"
	@$(VENV)/bin/python -m pip install --quiet --quiet --disable-pip-version-check --upgrade pip
	@echo "esr-local set-up: installing esr-local and its dependencies (compiles llama.cpp on first use, ~5 min)"
	@CMAKE_ARGS="$(CMAKE_ARGS)" $(VENV)/bin/python -m pip install --quiet --quiet --disable-pip-version-check $(PIP_CACHE) -e ".[test]"
	@touch $(STAMP) $(NATIVE_STAMP)
	@echo "esr-local set-up: done"

# An existing venv switched to a native build: recompile llama-cpp-python (never from pip's wheel cache,
# which holds the portable build).
# (The test: a fresh set-up above has just built it natively.)
$(VENV)/.native:
	@test -f $@ || { echo "esr-local set-up: rebuilding llama-cpp-python for this CPU (GGML_NATIVE=ON, ~5 min)" && \
		CMAKE_ARGS="$(CMAKE_ARGS)" $(VENV)/bin/python -m pip install --quiet --quiet --disable-pip-version-check \
		--no-cache-dir --force-reinstall --no-deps --no-binary llama-cpp-python "llama-cpp-python==0.3.36" && touch $@; }

test: $(STAMP)
	. tools/ensure_chromium.sh && $(VENV)/bin/python -m pytest -q

bench: $(STAMP)
	$(VENV)/bin/python bench/bench_decode.py
	$(VENV)/bin/python bench/bench_goodfire_export.py

# Mutation testing of the protocol modules (slow; not in CI). MODULES="metrics parse" for a subset.
# Results: a per-module table on stdout, to copy into MUTATION.md; work folders under mutants/.
# One mutant at a time by default (the model-backed modules each load SmolLM2); MUTATE_CHILDREN=2 on free cores.
MUTATE_CHILDREN ?= 1
mutate: $(STAMP)
	$(VENV)/bin/python -c "import mutmut" 2>/dev/null || $(VENV)/bin/python -m pip install --quiet -e ".[test,mutate]"
	ESR_LOCAL_THREADS=1 $(VENV)/bin/python tools/mutate.py --max-children $(MUTATE_CHILDREN) $(MODULES)

# The store's view SQL (mutmut cannot reach it): one pytest process per SQL mutant; results in mutants/sql/.
mutate-sql: $(STAMP)
	ESR_LOCAL_THREADS=1 $(VENV)/bin/python tools/mutate_sql.py

clean:
	rm -rf $(VENV) build *.egg-info
