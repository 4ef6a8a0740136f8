SHELL := /bin/bash

.PHONY: test lint

## Run lint and every test (creates the virtualenv and installs what is missing)
test:
	./scripts/test.sh

## Lint only
lint:
	./scripts/lint.sh
