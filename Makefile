# `make demo` and `make test` install everything on first use (tools/install.sh, idempotent).
# STACK=classic|onedl: that stack's venv (.venv-classic, .venv-onedl) and its stack suite (docs/stack.md)
STACK ?= pinned
ifeq ($(STACK),pinned)
VENV ?= .venv
else
VENV ?= .venv-$(STACK)
endif
PY := $(VENV)/bin/python
PYTEST_ARGS ?=
# one pytest-xdist worker per core, a test file per worker at a time (its module fixtures built once)
PYTEST_WORKERS ?= auto

.PHONY: help install demo demo-seg test clean

# The first target is what a bare `make` runs: the list of targets.
help:
	@echo 'make install    create $(VENV) with the $(STACK) stack (run by demo / demo-seg / test on first use; docs/stack.md)'
	@echo 'make test STACK=classic   the stack suite on torch 2.1 + mmcv 2.1.0 (its own .venv-classic; STACK=onedl: the onedl fork)'
	@echo 'make demo       the paper'"'"'s detection pipeline in miniature on generated data: Mask R-CNN, box / mask AP (CPU)'
	@echo 'make demo-seg   the segmentation half: UperNet on generated data, mIoU (CPU; docs/demos.md)'
	@echo 'make test       the whole test suite (CPU, no downloads); one worker per core (PYTEST_WORKERS=1: serial); PYTEST_ARGS="..." passes options to pytest'
	@echo 'make clean      remove $(VENV), build outputs, .pytest_cache, work_dirs/ and the demos'"'"' data/shapes_*'
	@echo 'make help       this list (also what a bare `make` prints)'

install:
	STACK=$(STACK) VENV=$(VENV) bash tools/install.sh

demo: install
	$(PY) tools/demo.py

demo-seg: install
	$(PY) tools/demo_seg.py

test: install
	CONVNEXT_STACK=$(STACK) $(PY) -m pytest tests -n $(PYTEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

clean:
	rm -rf .venv .venv-classic .venv-onedl .venv*.lock build *.egg-info .pytest_cache work_dirs data/shapes_coco data/shapes_ade20k
