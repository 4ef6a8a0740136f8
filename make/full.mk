# make test-full: every test of make test, plus the slow scenarios that are skipped there (SOULNEAR_TEST_FULL=1):
# the host-loss test of point-in-time recovery with the deployment's own 60 s archive_timeout and a writer
# (tests/integration/test_pitr.py; make test runs it with 10 s). PYTEST_ARGS and MOLECULE_SCENARIOS narrow it like
# make test.

.PHONY: test-full

## Every test, the slow ones too (make test plus about 3 min; docs/pitr.md)
test-full:
	SOULNEAR_TEST_FULL=1 ./scripts/test.sh
