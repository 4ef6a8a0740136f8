SHELL := /bin/bash

# The inventory the operator targets (the local sandbox by default; e.g. INVENTORY=~/soulnear-inventory/hosts.yml).
INVENTORY ?= inventory/sandbox/hosts.yml
# Secrets and sudo for the playbook targets: VAULT_PASSWORD_FILE=path (or ASK_VAULT_PASS=1), BECOME_PASSWORD_FILE=path
# (or ASK_BECOME_PASS=1).
VAULT_PASSWORD_FILE ?=
BECOME_PASSWORD_FILE ?=
ASK_VAULT_PASS ?=
ASK_BECOME_PASS ?=
ANSIBLE ?= .venv/bin/ansible
ANSIBLE_PLAYBOOK ?= .venv/bin/ansible-playbook
VENV_PYTHON ?= .venv/bin/python
# The playbook targets: scripts/play.sh passes the operator's values (below) to Ansible as data.
PLAY = scripts/play.sh

.PHONY: help deploy setup sandbox sandbox-down test lint

## Show the targets
help:
	@awk '/^## /{doc=substr($$0,4); next} /^[a-z][a-z0-9-]*:/{if (doc) printf "  %-14s %s\n", $$1, doc; doc=""}' $(MAKEFILE_LIST)
	@printf '%s\n' '' 'Variables:' \
	  '  INVENTORY=path          the inventory (default: the local sandbox)' \
	  '  VAULT_PASSWORD_FILE=f   the vault password for targets that need secrets (health, backup, restore, ...)' \
	  '  ASK_VAULT_PASS=1        ask for the vault password instead' \
	  '  ASK_BECOME_PASS=1       ask for the sudo password of the SSH user' \
	  '  BECOME_PASSWORD_FILE=f  the sudo password of the SSH user, from a file (no terminal needed)' \
	  'ps, logs-*, shell-db, restart* and lock-status need no secret; they reach the host as Ansible does.'

## Deploy to INVENTORY and print the health report (default: set up, create the sandbox when missing, deploy to it)
deploy:
	./scripts/deploy.sh

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

# Operator values reach the recipes as data (issue 23): each is taken literally (a $(shell ...) or $(...) in it is
# not expanded by make) and exported to the recipe's environment; recipes read them as "$$NAME" or through
# scripts/play.sh (a JSON vars file for Ansible), never pasted into a shell line.
OPERATOR_VARS := INVENTORY VAULT_PASSWORD_FILE BECOME_PASSWORD_FILE ASK_VAULT_PASS ASK_BECOME_PASS CONFIRM TIME \
	BACKUP REPO VERSION SOURCE LOG_LINES ANSIBLE ANSIBLE_PLAYBOOK VENV_PYTHON
$(foreach name,$(OPERATOR_VARS),$(eval override $(name) := $$(value $(name))))
export $(OPERATOR_VARS)
