# Several bot hosts, one bot (docs/topologies.md, "Several bot hosts, one bot"): move the bot to another bot host on
# purpose - the host that runs it stops it cleanly, then hands the lease to HOST, whose leader starts its bot.
#   make failover              to any other bot host
#   make failover HOST=bot2    to that bot host (its inventory name)
# HOST counts on the command line only (a shell may export a HOST of its own); it reaches Ansible as data through
# scripts/play.sh (failover_to), never as a shell word.
FAILOVER_TO := $(if $(filter command line,$(origin HOST)),$(value HOST))
export FAILOVER_TO

.PHONY: failover

## Move the bot to another bot host, the old bot stopped first: make failover [HOST=name]
failover:
	$(PLAY) playbooks/failover.yml 'failover_to?=FAILOVER_TO'
