# make test-full: every test of make test, plus the slow ones skipped there (SOULNEAR_TEST_FULL=1; pytest's marker
# full and the skips that read the variable): the host-loss test of point-in-time recovery with the deployment's own
# 60 s archive_timeout (tests/integration/module_utils/test_pitr_restore.py; make test runs it with 10 s); the
# leader's fault variants (test_leader.py: killed alone, hung, partition, database away, async failover, clock jump, deliberate failover;
# make test keeps exactly-one-polls, the takeover and the safe redeploy's standby mode); the interrupted and resumed
# PostgreSQL upgrades (test_upgrade.py); the exporters of Debian 12 and 13 against PostgreSQL 17
# (test_metrics_exporter.py); in Molecule, two framework bots deployed as a team would (test_bots.py, ~40
# min) and one poller across the two bot hosts (test_poller.py, ~15 min); and the Molecule scenario of a Debian 13
# host (molecule/trixie after molecule/default; IMAGES_TRIXIE=1 makes the setup build soulnear/sandbox:trixie;
# docs/debian.md). PYTEST_ARGS and MOLECULE_SCENARIOS narrow it like make test (MOLECULE_SCENARIOS=trixie: that
# scenario alone; MOLECULE_SCENARIOS=" ": none).

.PHONY: test-full images-trixie images-pg17

## Every test, the slow ones too (make test plus about 90 min: framework bots, one poller, leader faults, trixie)
test-full:
	SOULNEAR_TEST_FULL=1 IMAGES_TRIXIE=1 MOLECULE_SCENARIOS="$${MOLECULE_SCENARIOS-default trixie}" ./scripts/test.sh

## Images of a Debian 13 host: soulnear/debian:trixie, soulnear/sandbox:trixie (about 1 min)
# For SANDBOX_SUITE=trixie scripts/sandbox.sh and molecule/trixie.
images-trixie:
	IMAGES_TRIXIE=1 ./scripts/images.sh

## PostgreSQL 17 from trixie's packages: soulnear/postgres:17 and its archive (about 1.5 min)
# .cache/images/soulnear-postgres-17.tar (docs/debian.md); 1 min when soulnear/debian:trixie is there.
images-pg17:
	IMAGES_PG17=1 ./scripts/images.sh
