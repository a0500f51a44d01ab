# darkstorage: `make run` mounts the embedded default pool; `make test` runs the whole suite.
SHELL := /bin/bash
# The distribution's own Python 3.11+ where there is one (Debian and Ubuntu build it with
# profile-guided optimisation and link the interpreter statically: a `darkstorage sync`
# rescan of 10,000 files took 10-15% less time than under a shared-library build);
# otherwise whatever python3 is on the PATH.
PYTHON ?= $(shell /usr/bin/python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null && echo /usr/bin/python3 || echo python3)
VENV := .venv
BIN := $(VENV)/bin
MOUNT ?= $(if $(DARKSTORAGE_MOUNT),$(DARKSTORAGE_MOUNT),./mnt)
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
APT_RUN := fuse3 libfuse3-dev pkg-config python3-venv python3-dev gcc xorriso
# The real-input tests copy the installed standard library (thousands of files); Debian and
# Ubuntu ship the standard library's own tests, most of those files, in a package of their own.
STDLIB_TESTS := $(if $(filter /usr/bin/python3,$(PYTHON)),libpython$(shell $(PYTHON) -c 'import sys; print("%d.%d" % sys.version_info[:2])')-testsuite)
APT_TEST := git sqlite3 openssh-server openssl 7zip dmg2img hfsplus genisoimage udftools gdisk qemu-system-x86 isolinux syslinux-common ovmf age mtools dosfstools grub-efi-amd64-bin grub-common $(STDLIB_TESTS)
NPM_DIR := .cache/npm

.PHONY: install run test test-deps lint typecheck bench clean

define apt_install
	@missing=""; for p in $(1); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then echo "installing:$$missing"; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $$missing >/dev/null; fi
endef

# The editable install is a plain path entry (setuptools' "compat" mode): the default mode's
# import hook costs every darkstorage command about 15 ms of start-up. A setuptools without
# that mode gets the default one.
define editable_install
	$(BIN)/pip install -q --config-settings editable_mode=compat -e '$(1)' 2>/dev/null || $(BIN)/pip install -q -e '$(1)'
endef

$(BIN)/darkstorage: pyproject.toml
	$(call apt_install,$(APT_RUN))
	[ -x $(BIN)/python ] || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(call editable_install,.)
	touch $@

install: $(BIN)/darkstorage

run: install
	$(BIN)/darkstorage init
	mkdir -p $(MOUNT)
	$(BIN)/darkstorage mount $(MOUNT) --foreground

# Azurite (the Azure Blob emulator the tests start) from npm, into a project-local folder.
$(NPM_DIR)/.azurite:
	@command -v npm >/dev/null || { echo "installing: nodejs npm"; $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq nodejs npm >/dev/null; }
	npm install --prefix $(NPM_DIR) --no-audit --no-fund --loglevel=error 'azurite@^3.35'
	touch $@

$(VENV)/.test-deps: pyproject.toml $(BIN)/darkstorage $(NPM_DIR)/.azurite
	$(call apt_install,$(APT_TEST))
	$(call editable_install,.[test])
	touch $@

test-deps: $(VENV)/.test-deps

test: test-deps
	$(BIN)/ruff check pool vfs agent sync imaging tests bench
	$(BIN)/mypy
	$(BIN)/pytest -q

lint: test-deps
	$(BIN)/ruff check pool vfs agent sync imaging tests bench
	$(BIN)/ruff format --check pool vfs agent sync imaging tests bench

typecheck: test-deps
	$(BIN)/mypy

bench: install
	$(call apt_install,bindfs rclone unison)
	$(BIN)/python bench/mount.py
	$(BIN)/python bench/sync.py
	$(BIN)/python bench/imaging.py

clean:
	rm -rf $(VENV) build *.egg-info
