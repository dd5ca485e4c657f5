# Two commands do all the set-up (see README):
#   make reproduce   create .venv if missing, install, run every notebook on the bundled model
#   make test        create .venv if missing, install, run the test suite (notebooks included)
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
MODEL ?= tiny-ioi
PROFILE ?= smoke
OUT ?= reproduce-out

.PHONY: install test reproduce bench clean

$(VENV)/.installed: pyproject.toml constraints/ci.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints/ci.txt -e ".[dev]"
	$(PY) -m ipykernel install --sys-prefix --name python3 >/dev/null
	touch $@

install: $(VENV)/.installed

test: install
	$(PY) -m pytest
	$(PY) -m pytest -m browser

reproduce: install
	$(VENV)/bin/saetools reproduce --model $(MODEL) --profile $(PROFILE) --out $(OUT)

bench: install
	for f in bench/bench_*.py; do $(PY) $$f || exit 1; done

clean:
	rm -rf $(VENV) $(OUT) .pytest_cache
