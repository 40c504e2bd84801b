# alps: the two commands a new user needs are `make demo` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
TRITON_VENV := .venv-triton
PY := $(VENV)/bin/python
# The CPU torch wheel lies in /opt/wheels on our machines; elsewhere pip takes torch from the index.
FIND_LINKS := $(if $(wildcard /opt/wheels),--find-links /opt/wheels,)
PIP_FLAGS := --disable-pip-version-check --quiet $(FIND_LINKS)
STAMP := $(VENV)/.installed
TRITON_STAMP := $(TRITON_VENV)/.installed

DEMO_DIR ?= runs/demo
MODEL_REPO ?= model_repository

.PHONY: setup chromium demo test test-slow test-load server bench bench-full clean

setup: $(STAMP) $(TRITON_STAMP)

# Meta's SAM 2.1 (export and tests only). Its sdist requires torch and torchvision; torchvision does not import
# beside the pinned CPU torch (export/tv_shim.py stands in for it), so sam2 goes in without dependencies (its real
# ones, hydra-core and iopath, are in requirements.txt), built against the installed torch, without the optional
# CUDA extension.
SAM2_PIN := sam2==1.1.0

$(STAMP): requirements.txt requirements.lock pyproject.toml Makefile
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || { echo "alps needs Python 3.11 or later" \
	  "(requirements.lock pins numpy 2.4, onnxruntime 1.32...); $(PYTHON) is $$($(PYTHON) -V 2>&1):" \
	  "run make PYTHON=python3.11" >&2; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install $(PIP_FLAGS) -r requirements.txt -c requirements.lock
	SAM2_BUILD_CUDA=0 $(PY) -m pip install $(PIP_FLAGS) --no-deps --no-build-isolation $(SAM2_PIN)
	$(PY) -m pip install $(PIP_FLAGS) --no-deps -e .
	touch $@

# A separate server-side environment: the bundled tritonserver's Python backend stub needs numpy<2.
$(TRITON_STAMP): requirements-triton.txt
	test -x $(TRITON_VENV)/bin/python || $(PYTHON) -m venv $(TRITON_VENV)
	$(TRITON_VENV)/bin/python -m pip install $(PIP_FLAGS) -r requirements-triton.txt
	touch $@

demo: $(STAMP)
	$(PY) -m flows.demo --workdir $(DEMO_DIR) --model-repository $(MODEL_REPO)

# One worker per core and one more (at most 8): about a fifth of the suite's time its tests wait on the servers,
# runs and exports they start, and the extra worker fills it (2 cores: 442 s on 2 workers, 370 s on 3, one run each;
# a fourth, at 6d9b592: 440 s against 450 s on 3, the two cores already 87 % busy).
# Whole files to one worker so module fixtures are built once; exports once per session. Files go out longest
# first (tests/conftest.py, LONGEST_FILES), not by their number of tests.
TEST_WORKERS ?= $(shell n=$$(nproc 2>/dev/null || echo 2); echo $$(( n < 8 ? n + 1 : 8 )))
# glibc hands every block over 32 MiB to mmap and back on free, so each one is faulted in page by page again
# (Meta's reference generator upscales (64, 3, 1024, 1024) float32 masks per batch of prompts). Kept in the heap
# and not trimmed: pytest 450 -> 390 s and 433 -> 410 s on 2 cores (two pairs of runs, the tests' children set
# too), system time 137 -> 80 s and 120 -> 88 s; the machine's peak memory in use 8.6 -> 11.2 GB. The test
# processes only now: what they start runs with glibc's defaults, as a user's does (tests/conftest.py says why);
# 414 s in a fresh clone's CI run so. On vit_b's encoder (onnxruntime) the faults stayed and the peak grew by 1 GB:
# not a lever for `alps run`.
TEST_MALLOC := MALLOC_MMAP_THRESHOLD_=1073741824 MALLOC_TRIM_THRESHOLD_=4294967296
test: setup chromium
	$(TEST_MALLOC) $(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder

# The review page test opens OUT/report/index.html in Debian's headless Chromium. Installed here when missing (as
# root, with apt-get); where it cannot be, `make test` goes on and that test is skipped, saying why.
chromium:
	@command -v chromium >/dev/null || command -v chromium-browser >/dev/null || \
	  { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && apt-get update -q >/dev/null && \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -q -o DPkg::Lock::Timeout=600 chromium >/dev/null; } || \
	  echo "chromium could not be installed (needs root and apt-get): the report page test will be skipped"

test-slow: setup
	$(PY) -m pytest -m slow

# The flow on a machine saturated on purpose (tests/scale/test_load.py): nothing lost, one Prefect API per run.
test-load: setup
	$(PY) -m pytest -m load -s

server: $(STAMP)
	PREFECT_SERVER_ANALYTICS_ENABLED=false $(VENV)/bin/prefect server start --host 127.0.0.1 --port 4200

# Ours vs the reference ALPS pipeline (bench/RESULTS.md), both sides in one run; see bench/README.md.
# bench: the stand-in on 1024-px scenes at Meta's AMG defaults (post-processing-realistic: dozens of masks per image).
bench: $(STAMP)
	$(PY) export/export_sam.py --model-type stand-in --cpu --out bench/out/stand_in_repo
	$(PY) bench/bench_pipeline.py --model-repository bench/out/stand_in_repo --name stand-in --synthetic 3 --size 1024 \
		--note "Post-processing-realistic: the structured STAND-IN (not SAM) at Meta's AMG defaults keeps dozens of masks per image."
	$(PY) bench/bench_scaling.py

# bench-full: vit_b with random weights (network-realistic), exported here in fp32 and int8, both measured against one
# reference run; then onnxruntime settings one at a time. Random weights: predicted IoUs near 0 (none passes 0.88) and
# logits within +-1 (every stability score 0), so the IoU filter is off (every prompt decoded in full, the decoder's
# skipping saves nothing) and Meta's stability filter drops every mask: see bench/README.md. ~30 min on 2 cores.
bench-full: $(STAMP)
	$(PY) bench/bench_pipeline.py --random-init --model-type vit_b --int8 --name vit_b-random-init --synthetic 2 \
		--size 1024 --pred-iou-thresh 0 \
		--note "Network-realistic: vit_b with RANDOM weights on Meta's 32x32 grid; IoU filter off (random predicted IoUs never reach 0.88), Meta's stability filter then drops every (noise) mask."
	$(PY) bench/bench_ort_options.py --model-repository bench/out/vit_b-random-init/repo-fp32 \
		--int8-repository bench/out/vit_b-random-init/repo-int8
	$(PY) bench/results.py --drop vit_b-random-init-int8

clean:
	rm -rf $(DEMO_DIR) .pytest_cache
