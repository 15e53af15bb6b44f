"""The web pages in a real browser: Playwright driving Debian's chromium against a live uvicorn
serving the app over storage holding a real finished sweep (one trial trains, one raises) and a
running one (its record written by the driver's own RecordWriter while the page is open).

Screenshots: `make ui-screenshots` runs this module with UI_SCREENSHOTS_DIR=docs."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import BASE_SPEC, deep_update
from live_service import serve
from service.control.api import create_app
from service.control.backends import StorageBackend
from service.core.record import EpochResult, Objective, RecordWriter, SweepStore, new_index
from service.core.spec import SweepSpec

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]
TOKEN = "ui-t0ken"
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
FINISHED, RUNNING = "ui-finished", "ui-running"


def expect(locator):
    from playwright.sync_api import expect as playwright_expect

    return playwright_expect(locator)


def _browser_or_fail():
    """The real browser; under CI a missing one fails (never a skip), elsewhere it skips."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        if os.environ.get("CI"):
            pytest.fail("playwright is not installed: .ci/run installs it (pip install -e .[test])")
        pytest.skip("playwright is not installed")
    if not shutil.which(CHROMIUM) and not Path(CHROMIUM).is_file():
        if os.environ.get("CI"):
            pytest.fail(f"no chromium at {CHROMIUM}: .ci/run installs Debian's chromium")
        pytest.skip(f"no chromium at {CHROMIUM} (apt-get install chromium)")
    return sync_playwright


@pytest.fixture(scope="module")
def runs(tmp_path_factory, ray_local):
    """A storage root with a real finished sweep and a running one."""
    from trainer.driver.sweep import run_sweep

    root = tmp_path_factory.mktemp("ui") / "runs"
    spec = deep_update({k: v for k, v in BASE_SPEC.items() if k != "model"}, {
        "name": FINISHED, "storage": {"uri": str(root)}, "resources": {"max_failures": 0},
        "model": {"grid": [
            {"name": "cnn", "num_conv_layers": 1, "filters": 8, "num_fc_layers": 1},
            # its weights file does not exist: the trial raises FileNotFoundError (a traceback in its log)
            {"name": "resnet", "depth": 18, "mode": "frozen", "weights_uri": "/nonexistent/resnet18-weights.pt"},
        ]},
        "train": {"optimizer": {"lr": {"grid": [3e-3, 1e-2]}}},
    })
    index = run_sweep(SweepSpec.model_validate(spec), echo=lambda line: None)
    assert index.status == "finished" and index.trial_states.get("error") == 2, index.trial_states
    return root


class RunningSweep:
    """A sweep whose driver is "running": the record written by the driver's RecordWriter."""

    def __init__(self, root: Path, epochs: int = 4):
        self.store = SweepStore(str(root), RUNNING)
        index = new_index(RUNNING, Objective(metric="val_acc", mode="max"), max_epochs=epochs, num_trials=2, attempt=1)
        self.writer = RecordWriter(self.store, index)
        self.trials = [self.writer.trial(f"trial_{k}", {"optimizer.lr": lr}) for k, lr in enumerate((0.001, 0.01))]
        for record in self.trials:
            self.writer.set_status(record, "running")
        self.epoch(1)

    def epoch(self, epoch: int) -> None:
        for k, record in enumerate(self.trials):
            self.writer.add_result(record, EpochResult(epoch=epoch, val_acc=0.5 + 0.1 * epoch + 0.01 * k,
                                                       val_loss=1.0 / epoch, epoch_seconds=1.0))
            self.writer.changed(record)
        assert self.writer.write_index("running", wall_seconds=float(epoch))


@pytest.fixture(scope="module")
def site(runs):
    running = RunningSweep(runs)
    app = create_app(StorageBackend(str(runs)), token=TOKEN)
    with serve(app) as base:
        yield base, running


@pytest.fixture(scope="module")
def browser():
    sync_playwright = _browser_or_fail()
    with sync_playwright() as p:
        # --no-sandbox: CI runs as root, where chromium's sandbox refuses to start
        # swiftshader: WebGL in software, which parallel coordinates need with no GPU
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--use-angle=swiftshader", "--enable-unsafe-swiftshader"])
        yield browser
        browser.close()


@pytest.fixture
def page(browser, site):
    """A fresh browser context, logged in, recording every request it makes."""
    base, _running = site
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    page.requests = []
    page.on("request", lambda request: page.requests.append(request.url))
    login(page, base, TOKEN)
    yield page
    context.close()


def login(page, base: str, token: str) -> None:
    page.goto(f"{base}/ui/")
    assert "/ui/login" in page.url
    page.fill("#token", token)
    page.click("#login")
    page.wait_for_load_state("networkidle")


def _shoot(page, name: str) -> None:
    folder = os.environ.get("UI_SCREENSHOTS_DIR")
    if folder:
        page.screenshot(path=str(Path(folder) / name), full_page=True)


def test_login_with_a_wrong_token_fails_and_with_the_right_one_succeeds(browser, site):
    base, _ = site
    context = browser.new_context()
    page = context.new_page()
    login(page, base, "not-the-token")
    assert "/ui/login" in page.url
    assert "wrong token" in page.text_content("#login-error")
    page.fill("#token", TOKEN)
    page.click("#login")
    page.wait_for_url(f"{base}/ui/")
    assert page.is_visible("#sweeps")
    cookie = next(c for c in context.cookies() if c["name"] == "sweep_session")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    assert TOKEN not in cookie["value"] and all(TOKEN not in url for url in [page.url])
    context.close()


def test_the_sweeps_page_lists_both_sweeps(page, site):
    base, _ = site
    names = page.eval_on_selector_all("#sweeps tbody tr", "rows => rows.map(r => r.dataset.sweep)")
    assert set(names) == {FINISHED, RUNNING}
    running_row = page.text_content(f'#sweeps tr[data-sweep="{RUNNING}"]')
    assert "running" in running_row and "2 running" in running_row


def test_sorting_by_the_objective_puts_the_records_best_trial_first_and_shows_its_metric(page, site, runs):
    base, _ = site
    index = SweepStore(str(runs), FINISHED).read_index()
    page.goto(f"{base}/ui/sweeps/{FINISHED}")
    page.wait_for_selector("#trials tbody tr")
    page.click('#trials th[data-key="trial_id"]')  # away from the record's order first
    page.click('#trials th[data-key="best.val_acc"]')
    first = page.get_attribute("#trials tbody tr:first-child", "data-trial")
    assert first == index.best_trial
    shown = page.get_attribute("#best", "data-value")
    assert float(shown) == index.best.best.val_acc
    assert f"{index.best.best.val_acc:.4f}" in page.text_content("#best")
    page.wait_for_selector("#curves .main-svg")  # Plotly drew the learning curves
    _shoot(page, "ui-sweep.png")


def test_a_running_sweeps_page_shows_a_new_epoch_without_a_reload(page, site):
    base, running = site
    page.goto(f"{base}/ui/sweeps/{RUNNING}")
    page.wait_for_selector("#epochs-run")
    assert page.text_content("#epochs-run").startswith("2 of 8 epochs")
    page.evaluate("window.notReloaded = true")
    running.epoch(2)
    # (Playwright's locator waits: the pages' CSP forbids the eval a wait_for_function would need)
    expect(page.locator("#epochs-run")).to_have_text(re.compile(r"^4 of 8 epochs"), timeout=15000)
    assert page.evaluate("window.notReloaded") is True


def test_a_failed_trials_page_shows_its_log_with_the_traceback(page, site, runs):
    base, _ = site
    index = SweepStore(str(runs), FINISHED).read_index()
    failed = next(t for t in index.trials if t.status == "error")
    page.goto(f"{base}/ui/sweeps/{FINISHED}/trials/{failed.trial_id}")
    expect(page.locator("#log")).to_contain_text("Traceback", timeout=15000)
    log = page.text_content("#log")
    assert "FileNotFoundError" in log and "resnet18-weights.pt" in log
    assert "FileNotFoundError" in page.text_content("#trial-error")
    good = index.best
    page.goto(f"{base}/ui/sweeps/{FINISHED}/trials/{good.trial_id}")
    page.wait_for_selector("#epochs tbody tr")
    assert len(page.query_selector_all("#epochs tbody tr")) == good.epochs
    digests = page.query_selector_all("#checkpoints .digest")
    assert digests and all(re.fullmatch(r"[0-9a-f]{64}", d.text_content()) for d in digests)
    assert page.text_content("#pull").startswith(f"sweepctl pull {FINISHED} --trial {good.trial_id}")
    page.wait_for_selector("#trial-curves .main-svg")
    _shoot(page, "ui-trial.png")


def test_no_page_loads_anything_from_outside_the_server(page, site):
    base, _ = site
    for path in ("/ui/", f"/ui/sweeps/{FINISHED}", f"/ui/sweeps/{RUNNING}"):
        page.goto(base + path)
        page.wait_for_load_state("networkidle")
    assert page.requests and all(url.startswith(base + "/") for url in page.requests), \
        [u for u in page.requests if not u.startswith(base + "/")]
    assert any(url.endswith("/ui/static/plotly.min.js") for url in page.requests)


def test_without_a_session_a_page_redirects_to_login_and_the_api_answers_401(browser, site):
    base, _ = site
    context = browser.new_context()
    page = context.new_page()
    page.goto(f"{base}/ui/sweeps/{FINISHED}")
    assert page.url == f"{base}/ui/login?next=/ui/sweeps/{FINISHED}"
    assert context.request.get(f"{base}/sweeps").status == 401
    assert context.request.get(f"{base}/ui/data/sweeps/{FINISHED}", max_redirects=0).status == 303
    assert context.request.get(f"{base}/healthz").status == 200
    context.close()


# ============================================================================ sweepctl ui
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_sweepctl_ui_serves_the_pages_over_storage_with_no_token_on_loopback(runs):
    import urllib.request

    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SWEEP_SERVICE_")}
    ui = subprocess.Popen([sys.executable, "-m", "service.cli", "ui", "--storage", str(runs), "--port", str(port)],
                          cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/ui/sweeps/{FINISHED}") as response:
                    html = response.read().decode()
                break
            except OSError:
                assert ui.poll() is None and time.monotonic() < deadline, ui.stdout.read() if ui.poll() is not None else "no answer"
                time.sleep(0.3)
        assert FINISHED in html and "read-only" in html
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/ui/") as response:
            listing = response.read().decode()
        assert FINISHED in listing and RUNNING in listing
    finally:
        ui.terminate()
        ui.wait(timeout=30)


def test_sweepctl_ui_refuses_another_address_without_a_token(runs):
    env = {k: v for k, v in os.environ.items() if not k.startswith("SWEEP_SERVICE_")}
    refused = subprocess.run([sys.executable, "-m", "service.cli", "ui", "--storage", str(runs), "--host", "0.0.0.0"],
                             cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert refused.returncode == 2
    assert "without a token" in refused.stderr and "SWEEP_SERVICE_TOKEN" in refused.stderr
    assert "Traceback" not in refused.stderr
