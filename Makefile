# One command to install, one to test. Every target bootstraps itself on a fresh clone.
#   make install   create .venv with torch, detectron2 and this project (editable, test and
#                  export extras), and the toy-world project projects/toyworld (editable)
#   make lint      ruff check (lint and import order, settings in pyproject.toml)
#   make test      install if needed, then run the test suite
#   make test-gpu  on a GPU machine (< 5 min): the gpu-marked tests and the GPU benchmark, report
#                  in GPU_REPORT (default output/gpu/report.md); without a GPU: says so, fails
#   make toyworld  RegionCLIP end to end on a generated world (~13 min on 2 cores): results
#                  table in docs/TOYWORLD.md, detector package in projects/toyworld/weights;
#                  VOCAB and IMAGES set the picture grid of stage 6 (FORCE=1 reruns everything)
#   make demo      detect a vocabulary with the shipped toy detector (under a minute);
#                  VOCAB="star,red circle" and IMAGES=file-or-folder are optional
#   make web-demo  the web page (Gradio) with the shipped toy detector on http://127.0.0.1:7860;
#                  PORT and HOST choose where, WEB_ARGS passes more flags (docs/DEPLOY.md)
# Variables: PYTHON (interpreter that creates the venv), VENV (its location).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
STAMP := $(VENV)/.regionclip-installed
PYTEST_ARGS ?=
GPU_REPORT ?= output/gpu/report.md

TOYWORLD_OUT ?= output/toyworld
TOYWORLD_SIZE ?= default
DEMO_OUT ?= output/demo
VOCAB ?=
IMAGES ?=
PORT ?=
HOST ?=
WEB_ARGS ?=

.PHONY: install lint test test-gpu clean-venv toyworld demo web-demo

install: $(STAMP)

# Re-runs only when the dependency lists change; each step is a no-op when already satisfied.
$(STAMP): pyproject.toml requirements.txt tools/install_detectron2.sh projects/toyworld/setup.py
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PY) -c "import torch, torchvision" 2>/dev/null \
		&& echo "[install] torch $$($(PY) -c 'import torch; print(torch.__version__)') already installed" \
		|| $(PY) -m pip install $(TORCH_SPEC)
	@bash tools/install_detectron2.sh $(PY)
	$(PY) -m pip install -e ".[test,export,web]"
	$(PY) -m pip install --no-deps -e projects/toyworld
	@$(PY) -c "import regionclip, toyworld; print('[install] regionclip', regionclip.__version__, 'and toyworld ready')"
	@touch $(STAMP)

lint: install
	$(VENV)/bin/ruff check .

test: install
	$(PY) -m pytest $(PYTEST_ARGS)

test-gpu: install
	$(PY) tools/gpu_check.py --report $(GPU_REPORT)

toyworld: install
	$(PY) tools/toyworld.py --output $(TOYWORLD_OUT) --size $(TOYWORLD_SIZE) \
		--ship-weights projects/toyworld/weights --doc docs/TOYWORLD.md $(if $(FORCE),--force) \
		$(if $(VOCAB),--vocab "$(VOCAB)") $(if $(IMAGES),--images "$(IMAGES)")

demo: install
	$(PY) tools/toyworld.py demo --output $(DEMO_OUT) $(if $(VOCAB),--vocab "$(VOCAB)") \
		$(if $(IMAGES),--images "$(IMAGES)")

web-demo: install
	$(PY) tools/web_demo.py $(if $(PORT),--port $(PORT)) $(if $(HOST),--host $(HOST)) $(WEB_ARGS)

clean-venv:
	rm -rf $(VENV)
