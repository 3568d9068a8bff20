# Set-up is idempotent: it (re)creates .venv only when missing and reinstalls when pyproject.toml changes.
PYTHON ?= python3.11
VENV ?= .venv
STAMP := $(VENV)/.xpl-installed

.PHONY: setup demo test test-fast rehearse clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --disable-pip-version-check -e '.[test]'
	$(VENV)/bin/python -c 'from xpl.runtime import build_extensions; build_extensions()'
	@touch $(STAMP)

demo: setup
	$(VENV)/bin/xpl demo --config configs/shapes.yaml

test: setup
	$(VENV)/bin/python -m pytest -q -p no:cacheprovider

test-fast: setup
	$(VENV)/bin/python -m pytest -q -p no:cacheprovider -m "not e2e and not rehearsal"

# The real presets (configs/coco_ovis.yaml, configs/oi_cc.yaml) through the main job on miniatures of their data.
rehearse: setup
	$(VENV)/bin/python -m pytest -q -p no:cacheprovider -s -m rehearsal

clean:
	rm -rf outputs mlflow.db mlruns
