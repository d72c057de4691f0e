# The front door: `make demo` runs the reference deployment, `make test` runs every check.
PYTHON ?= python3
VENV ?= .venv
BIN := $(abspath $(VENV))/bin
STAMP := $(abspath $(VENV))/.installed-$(shell cksum pyproject.toml | cut -d' ' -f1)
# Django 6 needs Python >= 3.12: a second venv, with the newest Python here
VENV6 ?= .venv-django6
STAMP6 := $(abspath $(VENV6))/.installed-$(shell cksum pyproject.toml | cut -d' ' -f1)
PORT ?= 8000

.PHONY: install demo test lint typecheck pytest pytest-django6 bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

install: $(STAMP)

$(STAMP6): pyproject.toml
	rm -rf $(VENV6)
	python=$$(.ci/newest-python) && $$python -m venv $(VENV6)
	$(VENV6)/bin/python -m pip install --quiet --upgrade pip
	$(VENV6)/bin/python -m pip install --quiet -e '.[dev]' 'Django>=6,<7'
	touch $(STAMP6)

demo: install
	cd worker && $(BIN)/python manage.py migrate --noinput
	@echo "layerq demo: open http://127.0.0.1:$(PORT)/"
	cd worker && PORT=$(PORT) PATH="$(BIN):$$PATH" $(BIN)/honcho start -f ../Procfile

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: install
	$(BIN)/mypy --strict layerq

pytest: install
	$(BIN)/pytest

# The whole suite again on Django 6.x (and Python >= 3.12); `make pytest` is
# Django 5.2 LTS on Python 3.11.
pytest-django6: $(STAMP6)
	$(VENV6)/bin/pytest

# The two pytest runs mostly wait on subprocesses, sockets and timers (about a
# third of their wall time is CPU), so they run side by side; -O keeps each
# run's output together.
test: lint typecheck
	$(MAKE) --no-print-directory -j2 -O pytest pytest-django6

bench: install
	$(BIN)/python -m bench.run

clean:
	rm -rf $(VENV) $(VENV6) .pytest_cache .mypy_cache .ruff_cache
