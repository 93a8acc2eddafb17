# The two commands a newcomer needs:   make demo   and   make test
PY ?= python3
STAMP := .jzi-installed

.PHONY: install demo test test-all bench clean

$(STAMP): pyproject.toml
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[torch,geo,dev,ray]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(PY) -m jzi.export.demo

test: $(STAMP)
	$(PY) -m pytest -q

test-all: $(STAMP)
	$(PY) -m pytest -q -m "slow or not slow"

clean:
	rm -rf $(STAMP) demo-out .pytest_cache
