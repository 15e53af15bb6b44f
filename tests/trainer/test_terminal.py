"""What `sweepctl run` shows on the terminal (trainer/driver/events.py): the live table of the trials
when stdout is a terminal, the plain progress lines anywhere else; and the one column format of
every table printed (service/analysis/tables.py format_column)."""

from __future__ import annotations

import io
import re
import sys
from collections import Counter

import pytest
from rich.console import Console

from service.analysis.tables import format_column, leaderboard, trials_table
from service.core.record import EpochResult, Objective, SweepIndex, TrialRecord
from trainer.driver.progress import LiveTable, Progress, live_progress_wanted, live_table, progress_line


def _record(trial_id: str, status: str, accs: list[float], **config) -> TrialRecord:
    history = [EpochResult(epoch=e, val_acc=a, val_loss=1 - a, train_acc=a, train_loss=(1 - a) / 100)
               for e, a in enumerate(accs, 1)]
    best = max(history, key=lambda h: h.val_acc) if history else None
    return TrialRecord(trial_id=trial_id, status=status, config=config, history=history, best=best,
                       epochs=len(history), seconds=float(len(history)))


def _index(records: list[TrialRecord], wall_seconds: float = 125.0) -> SweepIndex:
    objective = Objective(metric="val_acc", mode="max")
    index = SweepIndex(sweep="term", objective=objective, max_epochs=8, num_trials=len(records),
                       started_at="2025-01-01T00:00:00Z", updated_at="2025-01-01T00:00:00Z",
                       wall_seconds=wall_seconds, trials=[r.summary() for r in records],
                       trial_states=dict(Counter(r.status for r in records)))
    ranked = index.ranked()
    index.best_trial = ranked[0].trial_id if ranked else None
    return index


def _sweep() -> tuple[SweepIndex, dict[str, TrialRecord]]:
    """20 running (one of them the best so far), 8 finished, 2 errors, 3 pending."""
    records = [_record(f"run_{i:02d}", "running", [0.5, 0.5 + i / 100], **{"model.dropout": [0, 0.25][i % 2],
                                                                           "train.optimizer.lr": 0.001})
               for i in range(20)]
    records[7].history.append(EpochResult(epoch=3, val_acc=0.99))  # the best so far: a running trial
    records[7].best, records[7].epochs = records[7].history[-1], 3
    records += [_record(f"fin_{i}", "terminated" if i % 2 else "stopped_early", [0.6, 0.6 + i / 50],
                        **{"model.dropout": 0.25, "train.optimizer.lr": 0.01}) for i in range(8)]
    records += [_record(f"err_{i}", "error", []) for i in range(2)]
    records += [_record(f"pen_{i}", "pending", []) for i in range(3)]
    return _index(records), {r.trial_id: r for r in records}


def _render(renderable, width: int = 160) -> str:
    console = Console(file=io.StringIO(), force_terminal=True, record=True, width=width)
    console.print(renderable)
    return console.export_text()


def test_the_live_table_shows_the_running_trials_the_best_and_the_counts_within_its_row_cap():
    index, records = _sweep()
    text = _render(live_table(index, records, max_rows=15, top_finished=5))
    header = text.splitlines()[0]
    assert header == ("[02:05] 33 trials: 3 pending, 20 running, 4 terminated, 4 stopped early, 2 error | "
                      "best val_acc 0.9900 (trial run_07, epoch 3)")
    rows = [line for line in text.splitlines() if re.match(r"\s*(run_|fin_|err_|pen_|…and)", line)]
    assert len(rows) <= 15
    running = [r.split()[0] for r in rows if r.lstrip().startswith("run_")]
    assert running == [f"run_{i:02d}" for i in range(9)]  # 15 rows - 5 finished - the "…and" row
    assert any(r.strip() == "…and 11 more" for r in rows)
    best_row = next(r for r in rows if r.lstrip().startswith("run_07"))
    assert "3/8" in best_row and "0.9900" in best_row  # epoch/budget, latest and best objective
    finished = [r.split()[0] for r in rows if r.lstrip().startswith("fin_")]
    assert finished == ["fin_7", "fin_6", "fin_5", "fin_4", "fin_3"]  # the top 5 finished, best first
    assert not [r for r in rows if r.lstrip().startswith(("err_", "pen_"))]  # counted in the header only
    assert "5 best of 8 finished" in text
    columns = next(line for line in text.splitlines() if line.lstrip().startswith("trial "))
    assert all(name in columns for name in ("trial", "status", "dropout", "lr", "epoch", "val_acc", "best val_acc"))
    assert "0.00" in rows[0] and "0.25" in rows[1]  # dropout 0 and 0.25: one format in the column


def test_a_small_sweep_fits_without_an_ellipsis_and_without_records_has_no_latest_column():
    records = [_record("a", "running", [0.5]), _record("b", "terminated", [0.7, 0.8])]
    text = _render(live_table(_index(records)))
    assert "…and" not in text and "1 best of 1 finished" in text
    columns = next(line for line in text.splitlines() if line.lstrip().startswith("trial "))
    assert "best val_acc" in columns and "val_acc" not in columns.replace("best val_acc", "")
    assert "(trial b, epoch 2)" in text.splitlines()[0]
    empty = _render(live_table(_index([])))
    assert "0 trials: none created yet | no result yet" in empty


class FakeLog:
    def __init__(self):
        self.lines, self.closed = [], False

    def write(self, text):
        self.lines.append(text.split(" ", 1)[1].rstrip("\n"))  # after the timestamp

    def flush(self, force=False):
        pass

    def close(self):
        self.closed = True


def test_the_live_progress_redraws_the_table_prints_events_above_it_and_ends_cleanly():
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=160)
    log = FakeLog()
    stdout = sys.stdout
    progress = Progress(lambda line: print(line, flush=True), log, live=LiveTable(console=console))
    index, records = _sweep()
    progress.status(index, records)
    assert sys.stdout is not stdout  # printing goes above the table while it shows
    progress.say("trial run_03 failed: ValueError: lr too high")
    progress.status(index, records)  # unchanged: drawn again, not logged again
    progress.close()
    assert sys.stdout is stdout and progress.live.stopped and log.closed
    text = out.getvalue()
    assert "trial run_03 failed: ValueError: lr too high" in text and "run_07" in text
    assert text.rstrip("\n").endswith("\x1b[?25h")  # the cursor shown again
    # The driver log keeps the plain lines: the status line (once) and the event.
    assert log.lines == [progress_line(index), "trial run_03 failed: ValueError: lr too high"]
    progress.stop_display()  # idempotent (the driver's finally calls it again)
    lines = []
    progress.echo = lines.append
    index.wall_seconds = 200
    progress.status(index, records)  # after the end: plain lines, no second table
    assert lines == [progress_line(index)] and progress.live._live is None


def test_an_exception_while_the_table_shows_leaves_the_terminal_plain():
    out = io.StringIO()
    stdout = sys.stdout
    progress = Progress(lambda line: None, None, live=LiveTable(console=Console(file=out, force_terminal=True)))
    index, records = _sweep()
    with pytest.raises(RuntimeError):
        try:
            progress.status(index, records)
            raise RuntimeError("the driver failed")
        finally:
            progress.stop_display()
    assert sys.stdout is stdout and out.getvalue().rstrip("\n").endswith("\x1b[?25h")


def test_without_a_terminal_the_plain_lines_are_unchanged(monkeypatch):
    monkeypatch.delenv("SWEEP_PLAIN_PROGRESS", raising=False)
    monkeypatch.setenv("TERM", "xterm-256color")

    class Tty(io.StringIO):
        def isatty(self):
            return True

    assert live_progress_wanted(io.StringIO()) is False  # a pipe, CI, kubectl logs, pytest's capture
    assert live_progress_wanted(Tty()) is True
    monkeypatch.setenv("SWEEP_PLAIN_PROGRESS", "1")
    assert live_progress_wanted(Tty()) is False
    monkeypatch.setenv("SWEEP_PLAIN_PROGRESS", "0")
    assert live_progress_wanted(Tty()) is True
    monkeypatch.setenv("TERM", "dumb")  # no cursor movement: rich would draw the table only at the end
    assert live_progress_wanted(Tty()) is False

    lines, log = [], FakeLog()
    progress = Progress(lines.append, log, live=live_progress_wanted(io.StringIO()))
    assert progress.live is None
    index, records = _sweep()
    progress.status(index, records)
    progress.status(index, records)  # unchanged: said once
    progress.say("trial run_03 failed: ValueError: lr too high")
    progress.close()
    expected = ["[02:05] 33 trials: 3 pending, 20 running, 4 terminated, 4 stopped early, 2 error | "
                "best val_acc 0.9900 (trial run_07, epoch 3)", "trial run_03 failed: ValueError: lr too high"]
    assert lines == expected and log.lines == expected


# ----------------------------------------------------------------------------- one column format
def test_a_column_of_numbers_has_one_format():
    assert format_column([0, 0.25, 0.5]) == ["0.00", "0.25", "0.50"]  # a hyperparameter: as written, aligned
    assert format_column([0.001, 0.003, 0.01]) == ["0.001", "0.003", "0.010"]
    assert format_column([1e-05, 0.1]) == ["1.000e-05", "1.000e-01"]  # too many decimals: all scientific
    assert format_column([32, 64, None]) == ["32", "64", "-"]  # whole numbers stay whole
    assert format_column([0.75, 0.9, None], "accuracy") == ["0.7500", "0.9000", "-"]
    assert format_column([2.302585, 0.5123], "metric") == ["2.3026", "0.5123"]  # 4 significant digits at least
    assert format_column([0.0003497, 0.5123], "metric") == ["3.497e-04", "5.123e-01"]
    assert format_column([{"name": "cnn", "filters": 32}, True]) == ["cnn(filters=32)", "True"]


def _column(table: str, name: str) -> list[str]:
    """The cells under ``name`` in a text table (header, dashes, rows)."""
    lines = table.splitlines()[1:]
    header, dashes = lines[0], lines[1]
    spans = [(m.start(), m.end()) for m in re.finditer(r"-+", dashes)]
    index = [header[a:b].strip() for a, b in spans].index(name)
    a, b = spans[index]
    return [line[a:b].strip() for line in lines[2:]]


def test_the_leaderboard_and_the_trials_table_format_each_column_one_way():
    records = []
    for i, (dropout, loss) in enumerate([(0, 0.0003497), (0.25, 0.05123), (0.5, 0.5)]):
        r = _record(f"t{i}", "terminated", [0.9 - i / 10], **{"model.dropout": dropout, "model.filters": 32})
        r.history[0].train_loss = loss
        r.best = r.history[0]
        records.append(r)
    index = _index(records)
    board = leaderboard(index, top=5)
    assert _column(board, "dropout") == ["0.00", "0.25", "0.50"]
    assert _column(board, "filters") == ["32", "32", "32"]
    assert _column(board, "train_loss") == ["3.497e-04", "5.123e-02", "5.000e-01"]
    assert _column(board, "val_acc") == ["0.9000", "0.8000", "0.7000"]
    assert _column(board, "val_loss") == ["0.1000", "0.2000", "0.3000"]
    body = {"sweep": "term", "status": "finished", "total": 3, "objective": {"metric": "val_acc"},
            "trials": [t.model_dump(mode="json") for t in index.ranked()]}
    table = trials_table(body)
    assert _column(table, "dropout") == ["0.00", "0.25", "0.50"]
    assert _column(table, "val_acc") == ["0.9000", "0.8000", "0.7000"]
