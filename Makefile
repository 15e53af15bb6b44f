# Every target creates the virtualenv first when it is missing (or pyproject.toml changed).
PYTHON ?= python3.11
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: quickstart test test-fast install clean prometheus report-screenshot

# The main job: a real sweep on scikit-learn's digits, embedded Ray, results under ./runs/quickstart.
quickstart: $(STAMP)
	$(BIN)/sweepctl run sweeps/quickstart.yaml

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

# The whole test suite (real Ray, real Prometheus, real data formats); ~5 minutes on 2 cores.
test: $(STAMP)
	$(BIN)/python -m pytest

# Only the tests that start no Ray (seconds).
test-fast: $(STAMP)
	$(BIN)/python -m pytest -m "not slow"

# A screenshot of a sweep's report.html (writes the report first if there is none), with Debian's
# headless Chromium (apt-get install -y chromium):
#   make report-screenshot REPORT_SWEEP=quickstart REPORT_STORAGE=runs REPORT_PNG=docs/report.png
REPORT_SWEEP   ?= quickstart
REPORT_STORAGE ?= runs
REPORT_PNG     ?= $(REPORT_STORAGE)/$(REPORT_SWEEP)/report/screenshot.png
REPORT_HTML    := $(REPORT_STORAGE)/$(REPORT_SWEEP)/report/report.html
report-screenshot: $(STAMP)
	@command -v chromium >/dev/null || { echo "chromium not found: apt-get install -y chromium" >&2; exit 1; }
	test -f $(REPORT_HTML) || $(BIN)/sweepctl report $(REPORT_SWEEP) --storage $(REPORT_STORAGE)
	profile=$$(mktemp -d) && chromium --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
	  --disable-background-networking --disable-component-update --disable-sync --hide-scrollbars \
	  --user-data-dir=$$profile --window-size=1400,3000 --screenshot=$(abspath $(REPORT_PNG)) \
	  file://$(abspath $(REPORT_HTML)) 2>/dev/null; status=$$?; rm -rf $$profile; exit $$status
	@echo "screenshot: $(REPORT_PNG)"

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[test]"
	touch $@

clean:
	rm -rf $(VENV) runs .pytest_cache
