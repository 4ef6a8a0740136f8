# The fake Telegram Bot API on the local sandbox (scripts/fake-telegram.sh): the bot reaches it as api.telegram.org
# on the deployment's network and trusts its test CA (app_ca_file: the path printed, .cache/fake-telegram/<host>/).
#   make fake-telegram [SANDBOX=name]   build and run it on the sandbox (idempotent)
#   scripts/fake-telegram.sh down|purge [name]   remove it (purge: its image, files and CA too)

# The sandbox container as data (see the Makefile's OPERATOR_VARS): SANDBOX given on the command line or in the
# environment, else scripts/sandbox.sh's SANDBOX_NAME, else soulnear-sandbox (make chaos's own default for SANDBOX,
# its sandbox, does not apply here).
override FAKE_TELEGRAM_SANDBOX := $(if $(filter command line environment,$(origin SANDBOX)),$(value SANDBOX),$(or \
	$(value SANDBOX_NAME),soulnear-sandbox))
export FAKE_TELEGRAM_SANDBOX

.PHONY: fake-telegram

## Run the fake Telegram API on the sandbox as api.telegram.org (SANDBOX=name); prints its CA for app_ca_file
fake-telegram:
	scripts/fake-telegram.sh up "$$FAKE_TELEGRAM_SANDBOX"
	@echo "CA for app_ca_file: $$(scripts/fake-telegram.sh ca "$$FAKE_TELEGRAM_SANDBOX")"
