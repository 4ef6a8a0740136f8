# make chaos: the fault scenarios and security checks of issue 10 on a disposable sandbox of its own
# (scripts/chaos.py; SANDBOX=name picks the sandbox container, CHAOS_ARGS passes options, e.g.
# CHAOS_ARGS="--only 1,5 --keep", "-e soulnear_pitr_enabled=false"). Prints the table: fault, recovered, time to
# recover, rows acknowledged, rows lost (docs/chaos.md).
VENV_PYTHON ?= .venv/bin/python
SANDBOX ?= soulnear-chaos
CHAOS_ARGS ?=

# The sandbox's name as data (see the Makefile's OPERATOR_VARS); CHAOS_ARGS are options of scripts/chaos.py on purpose.
override CHAOS_SANDBOX := $(value SANDBOX)
export CHAOS_SANDBOX

.PHONY: chaos

## Inject the faults into a sandbox of its own and print what recovered and what was lost (~25 min)
chaos:
	"$$VENV_PYTHON" scripts/chaos.py --name "$$CHAOS_SANDBOX" --table .cache/chaos-table.md $(CHAOS_ARGS)
