# The verbs people and CI use. Each builds .venv by itself when needed.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: serve test lint typecheck train-mnist clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[server,torch,dev]'
	touch $(STAMP)

serve: $(STAMP)  ## run the API and a worker, embedded (no servers needed)
	$(BIN)/inferq serve

test: $(STAMP)  ## run every test (integration tests need RabbitMQ, Redis, PostgreSQL)
	sh scripts/ensure_browser.sh
	$(BIN)/python -m pytest -ra

lint: $(STAMP)
	$(BIN)/ruff check src tests scripts benchmarks

typecheck: $(STAMP)
	$(BIN)/mypy

train-mnist: $(STAMP)  ## retrain the bundled MNIST CNN (reproducible; seeded)
	$(BIN)/python scripts/train_mnist.py

clean:
	rm -rf $(VENV) .inferq .pytest_cache .mypy_cache .ruff_cache
