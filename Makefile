# Set-up and test entry points. `make test` and `./esr-local ...` create .venv on first use.
PY ?= python3
VENV := .venv
STAMP := $(VENV)/.installed
# Portable CPU build of llama.cpp (no -march=native), without the multimodal library: ~5 min on 2 cores.
# For a GPU build set CMAKE_ARGS yourself, e.g. CMAKE_ARGS="-DGGML_CUDA=on" or "-DGGML_METAL=on".
CMAKE_ARGS ?= -DGGML_NATIVE=OFF -DLLAVA_BUILD=OFF

.PHONY: venv test bench clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(VENV)/bin/python || $(PY) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --upgrade pip
	CMAKE_ARGS="$(CMAKE_ARGS)" $(VENV)/bin/python -m pip install --quiet -e ".[test]"
	touch $(STAMP)

test: $(STAMP)
	$(VENV)/bin/python -m pytest -q

bench: $(STAMP)
	$(VENV)/bin/python bench/bench_decode.py
	$(VENV)/bin/python bench/bench_goodfire_export.py

clean:
	rm -rf $(VENV) build *.egg-info
