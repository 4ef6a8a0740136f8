# Backup and restore targets; the main Makefile includes make/*.mk.
ANSIBLE_PLAYBOOK ?= .venv/bin/ansible-playbook
INVENTORY ?= inventory/sandbox/hosts.yml
# Which backup `make restore` restores: latest or a file name in the backups directory.
BACKUP ?= latest
# The name of the database the restore replaces (soul_bot); required by `make restore`.
CONFIRM ?=

.PHONY: backup restore

## Take a verified backup of the database now
backup:
	$(ANSIBLE_PLAYBOOK) -i $(INVENTORY) playbooks/backup.yml

## Restore a backup: make restore BACKUP=latest|FILE CONFIRM=soul_bot
restore:
	$(ANSIBLE_PLAYBOOK) -i $(INVENTORY) playbooks/restore.yml -e 'backup=$(BACKUP)' -e 'confirm=$(CONFIRM)'

.PHONY: guard-status guard-clear

## The data-loss guard's record, and whether its flag is raised (a raised flag stops deploys and fails health)
guard-status:
	$(ANSIBLE_PLAYBOOK) -i $(INVENTORY) playbooks/guard.yml

## Accept the current database as the real data and lower the data-loss flag: make guard-clear CONFIRM=soul_bot
guard-clear:
	$(ANSIBLE_PLAYBOOK) -i $(INVENTORY) playbooks/guard.yml -e guard_clear=true -e 'confirm=$(CONFIRM)'
