# Two commands from a fresh clone; each sets up .venv on first use.
#   make test   the whole test suite
#   make book   the main job: executes the notebooks (papermill, quick profile), builds the book

PYTHON ?= python3
VENV := .venv
RUN := $(VENV)/bin/python
# The torch pair known to install on the project's machines; override for another platform,
# e.g. make test TORCH="torch==2.9.1 torchvision==0.24.1"
TORCH ?= torch==2.14.1 torchvision==0.29.1
# The book: every numbered notebook, executed with this profile (notebooks/profiles/<profile>.yaml,
# then the notebook's own notebooks/profiles/<profile>/<notebook>.yaml where there is one) into
# book/notebooks/, then rendered to book/_build/html. E.g. make book BOOK_PROFILE=smoke
BOOK_PROFILE ?= quick
BOOK_NOTEBOOKS := $(sort $(wildcard notebooks/[0-9]*.ipynb))
# The quick profile's runs, those of every chapter, train first as one plan (printed: the runs
# missing and their time here), in one worker process per CPU core; the chapters then find them
# finished. Other profiles train inside their chapters (the paper profile's runs are jobs).
BOOK_SWEEPS_quick := configs/quick/sweeps/*.yaml configs/localisation/sweeps/*.yaml

.PHONY: test test-fast book clean

$(VENV)/installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(RUN) -m pip install $(TORCH)
	$(RUN) -m pip install -e '.[test,notebooks]'
	touch $@

test: $(VENV)/installed
	$(RUN) -m pytest

test-fast: $(VENV)/installed
	$(RUN) -m pytest -m "not slow"

book: $(VENV)/installed
	mkdir -p book/notebooks
	$(if $(BOOK_SWEEPS_$(BOOK_PROFILE)),$(RUN) -m catkd sweep $(BOOK_SWEEPS_$(BOOK_PROFILE)) --jobs auto)
	set -e; for notebook in $(BOOK_NOTEBOOKS); do \
		own=notebooks/profiles/$(BOOK_PROFILE)/$$(basename $$notebook .ipynb).yaml; \
		$(VENV)/bin/papermill --no-progress-bar -f notebooks/profiles/$(BOOK_PROFILE).yaml \
			$$([ -f $$own ] && echo "-f $$own") $$notebook book/notebooks/$$(basename $$notebook); \
	done
	$(VENV)/bin/jupyter-book build book

clean:
	rm -rf $(VENV) book/_build book/notebooks
