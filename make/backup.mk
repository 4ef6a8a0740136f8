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
