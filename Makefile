SHELL := /bin/bash

# The inventory the operator targets (the local sandbox by default; e.g. INVENTORY=~/soulnear-inventory/hosts.yml).
INVENTORY ?= inventory/sandbox/hosts.yml
# Secrets and sudo for the playbook targets: VAULT_PASSWORD_FILE=path (or ASK_VAULT_PASS=1), ASK_BECOME_PASS=1.
VAULT_PASSWORD_FILE ?=
ANSIBLE_OPTS := $(if $(VAULT_PASSWORD_FILE),--vault-password-file '$(VAULT_PASSWORD_FILE)') \
	$(if $(ASK_VAULT_PASS),--ask-vault-pass) $(if $(ASK_BECOME_PASS),--ask-become-pass)
ANSIBLE ?= .venv/bin/ansible
ANSIBLE_PLAYBOOK ?= .venv/bin/ansible-playbook $(ANSIBLE_OPTS)

.PHONY: help deploy setup sandbox sandbox-down test lint

## Show the targets
help:
	@awk '/^## /{doc=substr($$0,4); next} /^[a-z][a-z-]*:/{if (doc) printf "  %-14s %s\n", $$1, doc; doc=""}' $(MAKEFILE_LIST)
	@printf '%s\n' '' 'Variables:' \
	  '  INVENTORY=path          the inventory (default: the local sandbox)' \
	  '  VAULT_PASSWORD_FILE=f   the vault password for targets that need secrets (health, backup, restore, ...)' \
	  '  ASK_VAULT_PASS=1        ask for the vault password instead' \
	  '  ASK_BECOME_PASS=1       ask for the sudo password of the SSH user' \
	  'ps, logs-*, shell-db, restart* and lock-status need no secret; they reach the host as Ansible does.'

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
