# Backup and restore targets; the main Makefile includes make/*.mk.
INVENTORY ?= inventory/sandbox/hosts.yml
# Which backup `make restore` restores: latest or a file name in the backups directory.
BACKUP ?= latest
# The name of the database the restore replaces (soul_bot); required by `make restore`.
CONFIRM ?=
# A point in time to restore the database server to, with its zone ('2026-11-29 14:05:00+00'), or latest
# (pgBackRest, docs/pitr.md); empty restores the logical backup BACKUP.
TIME ?=
# With TIME: only this pgBackRest repository (1 the local one, 2 the offsite one); empty picks one whose window holds TIME.
REPO ?=

.PHONY: backup restore backups

## Take a verified backup of the database now
backup:
	$(PLAY) playbooks/backup.yml

## Restore a backup: make restore BACKUP=latest|FILE CONFIRM=soul_bot, or a point in time: TIME='...'|latest
restore:
	$(PLAY) playbooks/restore.yml 'restore_confirm=CONFIRM' 'restore_time?=TIME' 'restore_repo?=REPO' 'restore_backup=BACKUP|latest'

## The logical dumps, the physical backups and the recovery window of point-in-time recovery
backups:
	$(ON_HOST) soulnear backups

.PHONY: guard-status guard-clear

## The data-loss guard's record, and whether its flag is raised (a raised flag stops deploys and fails health)
guard-status:
	$(PLAY) playbooks/guard.yml

## Accept the current database as the real data and lower the data-loss flag: make guard-clear CONFIRM=soul_bot
guard-clear:
	$(PLAY) playbooks/guard.yml 'restore_guard_clear:=true' 'restore_confirm=CONFIRM'
