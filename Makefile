SHELL := /bin/bash

# The inventory the operator targets (the local sandbox by default; e.g. INVENTORY=inventory/production/hosts.yml).
INVENTORY ?= inventory/sandbox/hosts.yml
ANSIBLE ?= .venv/bin/ansible
ANSIBLE_PLAYBOOK ?= .venv/bin/ansible-playbook

.PHONY: help deploy setup sandbox sandbox-down test lint

## Show the targets
help:
	@awk '/^## /{doc=substr($$0,4); next} /^[a-z][a-z-]*:/{if (doc) printf "  %-14s %s\n", $$1, doc; doc=""}' $(MAKEFILE_LIST)

## Set up, create the sandbox when missing, deploy to it and print the health report
deploy:
	./scripts/deploy-sandbox.sh

## Virtualenv, Docker engine and images (idempotent)
setup:
	./scripts/setup.sh

## Create or start the local sandbox host
sandbox:
	./scripts/sandbox.sh up

## Remove the sandbox host and its data
sandbox-down:
	./scripts/sandbox.sh down

## Run lint and every test (creates the virtualenv and installs what is missing)
test:
	./scripts/test.sh

## Lint only
lint:
	./scripts/lint.sh

# Operator targets (ps, logs-bot, health, backup, restore, ...) live in make/*.mk.
-include make/*.mk
