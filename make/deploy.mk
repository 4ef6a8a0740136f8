# Shipping a new bot version, and the database operations around it; the main Makefile includes make/*.mk.
#   make redeploy [SOURCE=dir]            the app step only: new version, backup when migrations are pending, rollback on failure
#   make rollback [VERSION=...]           a kept earlier version (default: the one before the running one)
#   make migrate                          the pending migrations of the running version, backup first
#   make redeploy-clean CONFIRM=soul_bot  a fresh, empty database with every migration (after a verified backup)
INVENTORY ?= inventory/sandbox/hosts.yml
# The bot's source directory `make redeploy` ships (empty: app_source_dir of the inventory, default examples/bot).
SOURCE ?=
# The kept version `make rollback` starts (empty: the one deployed before the running one).
VERSION ?=
# The name of the database a clean redeploy deletes (soul_bot); required by `make redeploy-clean`.
CONFIRM ?=

.PHONY: redeploy rollback migrate redeploy-clean

## Ship a new bot version (the app step only; SOURCE=dir), rolled back automatically when it fails
redeploy:
	$(PLAY) playbooks/redeploy.yml 'app_source_dir?=SOURCE@path'

## Start a kept earlier version: make rollback [VERSION=...]
rollback:
	$(PLAY) playbooks/rollback.yml 'app_rollback_version?=VERSION'

## Apply the pending migrations of the running version (a verified backup first)
migrate:
	$(PLAY) playbooks/migrate.yml

## Fresh database with every migration after a verified backup: make redeploy-clean CONFIRM=soul_bot
redeploy-clean:
	$(PLAY) playbooks/redeploy-clean.yml 'redeploy_clean_confirm=CONFIRM'
