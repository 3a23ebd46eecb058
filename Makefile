# `make demo` and `make test` install everything on first use (tools/install.sh, idempotent).
VENV ?= .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: install demo demo-seg test clean

install:
	VENV=$(VENV) bash tools/install.sh

demo: install
	$(PY) tools/demo.py

demo-seg: install
	$(PY) tools/demo_seg.py

test: install
	$(PY) -m pytest tests $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache work_dirs data/shapes_coco data/shapes_ade20k
