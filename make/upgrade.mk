# Major upgrade of PostgreSQL (docs/upgrade.md); the main Makefile includes make/*.mk.
# VERSION (the major version to upgrade to) and CONFIRM are operator values of the main Makefile; CONFIRM_LOSS is this
# file's, taken as data the same way (literally, never expanded by make) and exported to scripts/play.sh.
CONFIRM_LOSS ?=
UPGRADE_VARS := CONFIRM_LOSS
$(foreach name,$(UPGRADE_VARS),$(eval override $(name) := $$(value $(name))))
export $(UPGRADE_VARS)

.PHONY: upgrade-postgres upgrade-postgres-rollback upgrade-postgres-confirm upgrade-postgres-status

## Upgrade PostgreSQL to a new major version (postgres_major_version first): make upgrade-postgres VERSION=17 CONFIRM=soul_bot
upgrade-postgres:
	$(PLAY) playbooks/upgrade-postgres.yml 'upgrade_operation:="upgrade"' 'upgrade_version=VERSION' 'upgrade_confirm=CONFIRM'

## Put the old PostgreSQL back while not confirmed: CONFIRM=soul_bot (CONFIRM_LOSS=soul_bot gives up writes made since)
upgrade-postgres-rollback:
	$(PLAY) playbooks/upgrade-postgres.yml 'upgrade_operation:="rollback"' 'upgrade_confirm=CONFIRM' 'upgrade_confirm_loss?=CONFIRM_LOSS'

## Keep the upgrade: drop the old volume and container (no rollback after it): CONFIRM=soul_bot
upgrade-postgres-confirm:
	$(PLAY) playbooks/upgrade-postgres.yml 'upgrade_operation:="confirm"' 'upgrade_confirm=CONFIRM'

## Where the last PostgreSQL upgrade stands, and the version of the data volume
upgrade-postgres-status:
	$(PLAY) playbooks/upgrade-postgres.yml 'upgrade_operation:="status"'
