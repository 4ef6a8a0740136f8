# Operator targets (the old docker-compose workflow), against the inventory in use:
#   make ps | logs-bot | logs-db | health | shell-db | restart-bot | restart | diagnose
#   make health INVENTORY=path/to/your/hosts.yml
# Interactive targets run the host's `soulnear` command (installed by the soulnear role, which fills
# in the deployment's container and database names) on the first host of group soulnear, reached the
# way Ansible reaches it (scripts/on-host.sh).

INVENTORY ?= inventory/sandbox/hosts.yml
# Lines of log history before following.
LOG_LINES ?= 200

ON_HOST = scripts/on-host.sh
# Several bot hosts, one bot: the bot lease's line (which host runs the bot), from the host's soulnear-health next to
# its soulnear command; nothing where the bot does not move between hosts.
export LEASE_LINE := h=$$(readlink -f /usr/local/sbin/soulnear 2>/dev/null) && h=$${h%/*}/soulnear-health \
	&& [ -x "$$h" ] && "$$h" leader status --brief

.PHONY: ps logs-bot logs-db health shell-db restart-bot restart diagnose lock-status unlock

## Containers of the deployment with their state and health, and which bot host runs the bot
ps:
	$(ON_HOST) soulnear ps
	@$(ON_HOST) sh -c "$$LEASE_LINE" || true

## Follow the bot's log (Ctrl-C stops following)
logs-bot:
	$(ON_HOST) soulnear logs bot "$$LOG_LINES"

## Follow the database container's log (PostgreSQL's own log is in soulnear_log_dir/postgres/)
logs-db:
	$(ON_HOST) soulnear logs db "$$LOG_LINES"

## The health report (playbooks/health.yml); fails when unhealthy
health:
	$(PLAY) playbooks/health.yml

## psql as the superuser inside the database container
shell-db:
	$(ON_HOST) soulnear shell-db

## Restart the bot and wait until it is healthy
restart-bot:
	$(ON_HOST) soulnear restart bot

## Restart the database (waits until it answers), then the bot (waits until it is healthy)
restart:
	$(ON_HOST) soulnear restart all

## The diagnostics checklist (playbooks/diagnose.yml); the report lands in ./diagnose-reports/
diagnose:
	$(PLAY) playbooks/diagnose.yml

## Who holds the deploy lock (a deploy, redeploy or restore in progress), and since when
lock-status:
	$(PLAY) playbooks/lock.yml

## Release a deploy lock left by a killed run: make unlock CONFIRM=yes
unlock:
	$(PLAY) playbooks/lock.yml 'soulnear_unlock=CONFIRM|no'
