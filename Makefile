# Two commands from a fresh clone; each sets up .venv on first use.
#   make test   the whole test suite
#   make book   the main job: executes the notebooks (papermill, quick profile), builds the book
#   make publish   pushes the built book to the gh-pages branch (GitHub Pages)

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
# The chapters then execute: the one that times training steps (5) alone, so that its timings
# are those of a quiet machine, then the others BOOK_JOBS at a time, each kernel with its share
# of the cores as threads (a chapter's work, reading runs and data, CAMs of a few models and
# figures, keeps one core busy, not all), the longest first, so that the short ones fill in
# beside them rather than run after them: 6, 7 and 2 (86, 48 and 40 s of cells in a first
# build on the AVX2 path, the others 8-15 s). make fails if any chapter fails.
BOOK_JOBS ?= 2
ifeq ($(shell echo '$(BOOK_JOBS)' | grep -xE '[1-9][0-9]*'),)
$(error BOOK_JOBS is the number of chapters executed at a time, a positive integer; got '$(BOOK_JOBS)')
endif
BOOK_THREADS := $(shell n=$$(( $$(nproc) / $(BOOK_JOBS) )); echo $$(( n > 0 ? n : 1 )))
BOOK_TIMED := $(filter %_efficiency.ipynb,$(BOOK_NOTEBOOKS))
BOOK_LONGEST := $(foreach chapter,localisation beyond_gap cat_properties,\
	$(filter %_$(chapter).ipynb,$(BOOK_NOTEBOOKS)))
# papermill for the chapter {} (xargs puts it there): the profile's parameters, then the
# chapter's own, then the teacher of a variant.
EXECUTE_CHAPTER = sh -c 'notebook={}; \
	own=notebooks/profiles/$(BOOK_PROFILE)/$$(basename $$notebook .ipynb).yaml; \
	exec $(VENV)/bin/papermill --no-progress-bar -f notebooks/profiles/$(BOOK_PROFILE).yaml \
		$$([ -f $$own ] && echo "-f $$own") $(PAPERMILL_TEACHER) \
		$$notebook $(BOOK_DIR)/notebooks/$$(basename $$notebook)'
# The whole book with another teacher: make book TEACHER=resnet56 [TEACHER_CHECKPOINT=file].
# Every chapter gets -p teacher (and -p teacher_checkpoint), the pre-training sweep --teacher, so
# that it trains the very runs the chapters read. Their run folders are new anyway (named by a
# hash of the config); the executed notebooks and the built book go to the variant's own folder
# (copies of the book's pages beside them), so the default book in book/ stays as it was. Its
# chapters compare their claims and list those that did not hold, without stopping: the text's
# thresholds were set with the configs' teachers.
TEACHER ?=
TEACHER_CHECKPOINT ?=
ifneq ($(TEACHER_CHECKPOINT),)
ifeq ($(TEACHER),)
$(error TEACHER_CHECKPOINT needs TEACHER, the model it holds: make book TEACHER=resnet56 TEACHER_CHECKPOINT=FILE)
endif
endif
VARIANT := $(if $(TEACHER),teacher-$(TEACHER))
BOOK_DIR := $(if $(VARIANT),book/_variants/$(VARIANT),book)
PAPERMILL_TEACHER := $(if $(TEACHER),-p teacher $(TEACHER))
PAPERMILL_TEACHER += $(if $(TEACHER_CHECKPOINT),-p teacher_checkpoint $(TEACHER_CHECKPOINT))
SWEEP_TEACHER := $(if $(TEACHER),--teacher $(TEACHER))
SWEEP_TEACHER += $(if $(TEACHER_CHECKPOINT),--teacher-checkpoint $(TEACHER_CHECKPOINT))
# A variant's pages are copies of book/'s, refreshed at every build; its title names the teacher,
# so that a reader of the published variant knows which book it is.
VARIANT_CONFIG = sed 's/^title: "\(.*\)"$$/title: "\1 (teacher: $(TEACHER))"/' \
	book/_config.yml > $(BOOK_DIR)/_config.yml
# make publish: the built HTML onto the gh-pages branch of PUBLISH_REMOTE with ghp-import (the
# Jupyter Book v1 way; -n: no Jekyll, which would hide _static/). The default book replaces the
# whole branch; a variant goes under PUBLISH_PREFIX (its folder name), keeping the rest, so the
# default book stays at the site's root and the variant is at <site>/teacher-<name>/.
PUBLISH_REMOTE ?= origin
PUBLISH_BRANCH ?= gh-pages
PUBLISH_HTML ?= $(BOOK_DIR)/_build/html
PUBLISH_PREFIX ?= $(VARIANT)
GHP_IMPORT ?= $(VENV)/bin/ghp-import

.PHONY: test test-fast book publish clean

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
	mkdir -p $(BOOK_DIR)/notebooks
	$(if $(VARIANT),cp book/_toc.yml book/*.md $(BOOK_DIR)/)
	$(if $(VARIANT),$(VARIANT_CONFIG))
	$(if $(BOOK_SWEEPS_$(BOOK_PROFILE)),$(RUN) -m catkd sweep $(BOOK_SWEEPS_$(BOOK_PROFILE)) \
		--jobs auto $(SWEEP_TEACHER))
	printf '%s\n' $(BOOK_TIMED) | xargs -I {} $(EXECUTE_CHAPTER)
	printf '%s\n' $(BOOK_LONGEST) $(filter-out $(BOOK_TIMED) $(BOOK_LONGEST),$(BOOK_NOTEBOOKS)) | \
		OMP_NUM_THREADS=$(BOOK_THREADS) xargs -P $(BOOK_JOBS) -I {} $(EXECUTE_CHAPTER)
	$(VENV)/bin/jupyter-book build $(BOOK_DIR)

# ghp-import builds on the fetched <remote>/gh-pages where there is one: fetched first, so that a
# variant is added to the branch as published, not to a stale copy (no branch yet: nothing to
# fetch).
publish:
	@test -f $(PUBLISH_HTML)/index.html || { echo "make publish: no built book in" \
		"$(PUBLISH_HTML); run make book$(if $(TEACHER), TEACHER=$(TEACHER)) first" >&2; exit 1; }
	@test -x $(GHP_IMPORT) || { echo "make publish: $(GHP_IMPORT) is missing; make book" \
		"installs it (the notebooks extra)" >&2; exit 1; }
	git fetch -q $(PUBLISH_REMOTE) $(PUBLISH_BRANCH) 2>/dev/null || true
	$(GHP_IMPORT) -n -p -f -r $(PUBLISH_REMOTE) -b $(PUBLISH_BRANCH) \
		$(if $(PUBLISH_PREFIX),-x $(PUBLISH_PREFIX)) \
		-m "Publish the book$(if $(VARIANT), ($(VARIANT)))" $(PUBLISH_HTML)

clean:
	rm -rf $(VENV) book/_build book/notebooks book/_variants
