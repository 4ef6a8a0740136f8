# make collection: library/, module_utils/soulnear/ and plugins/ built as the Ansible collection soulnear.deploy
# (scripts/collection.sh: the import paths rewritten, the host commands left out); `scripts/collection.sh --sanity`
# also runs ansible-test sanity on the built tree.

.PHONY: collection

## Build the modules as an installable Ansible collection: .cache/collection/soulnear-deploy-<version>.tar.gz
collection:
	./scripts/collection.sh
