# Operator targets (the old docker-compose workflow), against the inventory in use:
#   make ps | logs-bot | logs-db | health | shell-db | restart-bot | restart | diagnose
#   make health INVENTORY=inventory/production/hosts.yml
# Interactive targets run on the first host of group soulnear through scripts/on-host.sh.
# Container names follow the soulnear role's defaults; override them when your inventory renames them.

INVENTORY ?= inventory/sandbox/hosts.yml
ANSIBLE ?= .venv/bin/ansible
ANSIBLE_PLAYBOOK ?= .venv/bin/ansible-playbook
DB_CONTAINER ?= soulnear_postgres
BOT_CONTAINER ?= soulnear_bot
DB_NAME ?= soul_bot
DB_SUPERUSER ?= postgres
# Where the monitoring role installs soulnear-health (soulnear_bin_dir).
SOULNEAR_BIN ?= /opt/soulnear/bin
# Lines of log history before following.
LOG_LINES ?= 200

ON_HOST = INVENTORY=$(INVENTORY) ANSIBLE=$(ANSIBLE) scripts/on-host.sh

.PHONY: ps logs-bot logs-db health shell-db restart-bot restart diagnose

## Containers of the deployment with their state and health
ps:
	$(ON_HOST) docker ps --all --filter name=$(DB_CONTAINER) --filter name=$(BOT_CONTAINER) \
		--format 'table {{.Names}}\t{{.Status}}\t{{.Image}}\t{{.Ports}}'

## Follow the bot's log (Ctrl-C stops following)
logs-bot:
	$(ON_HOST) docker logs --follow --tail $(LOG_LINES) $(BOT_CONTAINER)

## Follow the database container's log (PostgreSQL's own log is in soulnear_log_dir/postgres/)
logs-db:
	$(ON_HOST) docker logs --follow --tail $(LOG_LINES) $(DB_CONTAINER)

## The health report (playbooks/health.yml); fails when unhealthy
health:
	$(ANSIBLE_PLAYBOOK) -i $(INVENTORY) playbooks/health.yml

## psql as the superuser inside the database container
shell-db:
	$(ON_HOST) docker exec -it $(DB_CONTAINER) psql -U $(DB_SUPERUSER) -d $(DB_NAME)

## Restart the bot and wait until it is healthy
restart-bot:
	$(ON_HOST) $(SOULNEAR_BIN)/soulnear-health restart bot

## Restart the database (waits until it answers), then the bot (waits until it is healthy)
restart:
	$(ON_HOST) $(SOULNEAR_BIN)/soulnear-health restart all

## The diagnostics checklist (playbooks/diagnose.yml); the report lands in ./diagnose-reports/
diagnose:
	$(ANSIBLE_PLAYBOOK) -i $(INVENTORY) playbooks/diagnose.yml
