# Two commands from a fresh clone; each sets up .venv on first use.
#   make test   the whole test suite
#   make book   the main job (for now: the real-data demo of the conversion and the losses)

PYTHON ?= python3
VENV := .venv
RUN := $(VENV)/bin/python
# The torch pair known to install on the project's machines; override for another platform,
# e.g. make test TORCH="torch==2.9.1 torchvision==0.24.1"
TORCH ?= torch==2.14.1 torchvision==0.29.1

.PHONY: test book clean

$(VENV)/installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(RUN) -m pip install $(TORCH)
	$(RUN) -m pip install -e '.[test,notebooks]'
	touch $@

test: $(VENV)/installed
	$(RUN) -m pytest

book: $(VENV)/installed
	$(RUN) -m catkd.demo

clean:
	rm -rf $(VENV) build
