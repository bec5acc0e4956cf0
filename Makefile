# metatts: two commands for a newcomer.
#   make quickstart   run the main job on the embedded default data
#   make test         run the test suite
# Both create .venv in the repo root if missing and install what they need,
# Debian packages included (as root; otherwise the exact apt-get line is printed).

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.metatts-installed
DEB_PACKAGES := flite festival festvox-kallpc16k festvox-kdlpc16k festvox-us-slt-hts \
                espeak-ng sox chromium
DEB_STAMP := $(VENV)/.metatts-debian
# Two pytest-xdist workers, one test file each at a time (module fixtures stay
# shared): compilation is mostly single-threaded, so one process leaves a core
# idle. PYTEST_ARGS= runs everything in one process.
PYTEST_ARGS ?= -n 2 --dist loadfile

.PHONY: test quickstart install system-deps clean

install: $(STAMP)

$(PY):
	$(PYTHON) -m venv $(VENV)

# torch==2.13.0 (evaluation extra) resolves to the CPU wheel in PIP_FIND_LINKS on this machine kind.
$(STAMP): setup.cfg pyproject.toml | $(PY)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test,audio,evaluation]'
	touch $@

system-deps: $(DEB_STAMP)

$(DEB_STAMP): Makefile | $(PY)
	@missing=""; for p in $(DEB_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = "0" ]; then \
	    echo "Installing Debian packages:$$missing"; \
	    (apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q $$missing) >/dev/null || { \
	      echo "apt-get failed; run: apt-get update && apt-get install -y$$missing"; exit 1; }; \
	  else \
	    echo "metatts needs Debian packages that are not installed:$$missing"; \
	    echo "Run as root:  apt-get update && apt-get install -y$$missing"; \
	    exit 1; \
	  fi; \
	fi
	@touch $@

test: $(STAMP) $(DEB_STAMP)
	$(PY) -m pytest -q $(PYTEST_ARGS)

# Builds the embedded corpus (cached in ~/.cache/metatts), trains a transfer
# baseline and a meta-learned Tacotron on it, adapts both to held-out speakers
# and writes runs/quickstart/report/index.html. About 11 minutes on an idle
# 2-core CPU after the install.
quickstart: $(STAMP) $(DEB_STAMP)
	$(PY) experiments/main.py --config experiments/configs/quickstart.py --workdir runs/quickstart

clean:
	rm -rf $(VENV) runs .pytest_cache
