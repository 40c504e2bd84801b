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

test: setup chromium
	$(PY) -m pytest

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

# Ours vs the reference ALPS pipeline (bench/RESULTS.md). bench: stand-in, 4 scenes; bench-full: vit_b random
# weights, thresholds lowered and the gate opened equally on both sides so that masks survive (random weights
# give image-sized masks); tens of minutes on 2 cores.
bench: $(STAMP)
	$(PY) export/export_sam.py --model-type stand-in --cpu --out bench/out/stand_in_repo
	$(PY) bench/bench_pipeline.py --model-repository bench/out/stand_in_repo --name stand-in --images 4
	$(PY) bench/bench_scaling.py

# Models are re-exported on every run so that the figures are those of the current exporter. The int8 row reuses the
# fp32 row's reference (same model, images and prompts): its agreement figures are int8 vs PyTorch fp32.
VIT_B_BENCH := --images 2 --size 512 --pred-iou-thresh 0 --stability-score-thresh 0 --sigma 1.0
bench-full: $(STAMP)
	$(PY) export/export_sam.py --model-type vit_b --random-init --cpu --out bench/out/vit_b_repo
	$(PY) export/export_sam.py --model-type vit_b --random-init --cpu --quantize int8 --out bench/out/vit_b_int8_repo
	$(PY) bench/bench_pipeline.py --model-repository bench/out/vit_b_repo --name vit_b-random-init $(VIT_B_BENCH)
	$(PY) bench/bench_pipeline.py --model-repository bench/out/vit_b_int8_repo --name vit_b-random-init-int8 \
		$(VIT_B_BENCH) --reuse-reference vit_b-random-init
	$(PY) bench/bench_ort_options.py --model-repository bench/out/vit_b_repo --int8-repository bench/out/vit_b_int8_repo

clean:
	rm -rf $(DEMO_DIR) .pytest_cache
