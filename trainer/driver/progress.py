"""What the driver shows and logs as a sweep runs: the progress line (terminal and the driver log in
storage), and on a terminal the live table of the trials redrawn in place (rich), like Ray Tune's
status table. Fed by trainer/driver/events.py with the index the record writer keeps; reads nothing."""

from __future__ import annotations

import os
import sys
import time
from typing import Callable

from service.core.record import SegmentedLog, SweepIndex, now_iso


class Progress:
    """The progress line on the terminal and in the driver log (logs/driver/ in storage).
    Status lines at most every ``interval`` seconds; events (errors, restarts, exploits) at once.

    ``live`` (stdout is a terminal: ``live_progress_wanted``): the terminal shows a table of the
    trials redrawn in place (``LiveTable``) instead of one status line per change; events print
    above it, and the driver log keeps the plain lines either way. ``close`` (or ``stop_display``)
    ends the table, leaving its last state on the terminal."""

    def __init__(self, echo: Callable[[str], None], log: SegmentedLog | None, *, interval: float = 2.0,
                 fenced: Callable[[], bool] = lambda: False, live: "bool | LiveTable" = False):
        self.echo, self.log, self.interval = echo, log, interval
        self.fenced = fenced  # another driver owns the sweep: the terminal only, nothing to storage
        self._last_status = ""
        self._log_failed = False
        self.live: LiveTable | None = (live if isinstance(live, LiveTable) else LiveTable()) if live else None

    def say(self, line: str) -> None:
        self.echo(line)  # while the live table shows, stdout is drawn above it
        self._log(line)

    def _log(self, line: str) -> None:
        if self.log is not None and not self.fenced():
            try:
                self.log.write(f"{now_iso()} {line}\n")
            except Exception as err:  # storage outage: the terminal still has it (said once)
                if not self._log_failed:
                    self._log_failed = True
                    self.echo(f"warning: could not write the driver log ({err}); the terminal has it")

    def status(self, index: SweepIndex, records: dict | None = None) -> None:
        """``records``: the driver's in-memory trial records by id (their latest epoch), for the
        live table; nothing is read from storage."""
        line = progress_line(index)
        live = self.live is not None and not self.live.stopped
        if live:
            self.live.update(index, records)
        if line != self._last_status:
            self._last_status = line
            if live:
                self._log(line)
            else:
                self.say(line)

    def maybe_flush(self) -> None:
        if self.log is not None and not self.fenced():
            try:
                self.log.flush(force=False)
            except Exception:
                pass  # retried at the next flush

    def stop_display(self) -> None:
        """End the live table (idempotent; the terminal is left as a plain one): at the end of the
        sweep, and on every way out of the driver (an interrupt, an exception)."""
        if self.live is not None:
            self.live.stop()

    def close(self) -> None:
        self.stop_display()
        if self.log is not None and not self.fenced():
            try:
                self.log.close()
            except Exception as err:
                self.echo(f"warning: could not write the driver log ({err})")


PLAIN_PROGRESS_ENV = "SWEEP_PLAIN_PROGRESS"  # set (1): plain progress lines even on a terminal


def live_progress_wanted(stream=None) -> bool:
    """The live table when ``stream`` (stdout) is a terminal and SWEEP_PLAIN_PROGRESS is not set;
    plain lines otherwise (CI, `kubectl logs`, a pipe, tests capturing output, TERM=dumb: no cursor
    movement, where rich would show the table only at the end)."""
    if os.environ.get(PLAIN_PROGRESS_ENV, "").strip().lower() not in ("", "0", "false", "no"):
        return False
    if os.environ.get("TERM", "").lower() in ("dumb", "unknown"):
        return False
    stream = sys.stdout if stream is None else stream
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


class LiveTable:
    """The trials in progress and the best so far as a table redrawn in place (``rich.live.Live``,
    like Ray Tune's status table), at most ``refresh_per_second``. Started by the first ``update``;
    ``stop`` ends it for good (its last state stays on the terminal). While it runs, what is printed
    to stdout/stderr appears above it."""

    def __init__(self, *, console=None, max_rows: int = 15, top_finished: int = 5, refresh_per_second: float = 2):
        self.console, self.max_rows, self.top_finished = console, max_rows, top_finished
        self.refresh_per_second = refresh_per_second
        self.stopped = False
        self._live = None

    def update(self, index: SweepIndex, records: dict | None = None) -> None:
        if self.stopped:
            return
        view = _LiveView(index, records, max_rows=self.max_rows, top_finished=self.top_finished)
        if self._live is None:
            from rich.live import Live

            self._live = Live(view, console=self.console, refresh_per_second=self.refresh_per_second,
                              transient=False, redirect_stdout=True, redirect_stderr=True)
            try:
                self._live.start(refresh=True)
            except BaseException:
                self.stop()
                raise
        else:
            self._live.update(view)  # drawn by Live's refresh thread, at its bounded rate

    def stop(self) -> None:
        self.stopped = True
        live, self._live = self._live, None
        if live is not None:
            try:
                live.stop()  # a last draw, the cursor shown again, stdout/stderr restored
            except Exception:
                pass


class _LiveView:
    """One state of the live table: rows built once per index (in Tune's thread); only the clock of
    the header moves between index writes (rendered by Live's refresh thread)."""

    def __init__(self, index: SweepIndex, records: dict | None, *, max_rows: int, top_finished: int):
        # The header's fields as of now (the writer updates its index in place; its best trial kept).
        self.index = index.model_copy(update={"trials": [index.best] if index.best is not None else []})
        self.table = trials_live_table(index, records, max_rows=max_rows, top_finished=top_finished)
        self.since, self.ticking = time.monotonic(), index.status == "running"

    def __rich__(self):
        from rich.console import Group
        from rich.text import Text

        elapsed = self.index.wall_seconds + (time.monotonic() - self.since if self.ticking else 0.0)
        return Group(Text(progress_line(self.index, elapsed=elapsed), style="bold"), self.table)


IN_PROGRESS = ("running", "paused")
DONE = ("terminated", "stopped_early")


def live_table(index: SweepIndex, records: dict | None = None, *, max_rows: int = 15, top_finished: int = 5):
    """The live table as a rich renderable: the header line (elapsed, trials by state, the best
    objective with its trial and epoch), then the table (``trials_live_table``)."""
    from rich.console import Group
    from rich.text import Text

    return Group(Text(progress_line(index), style="bold"),
                 trials_live_table(index, records, max_rows=max_rows, top_finished=top_finished))


def trials_live_table(index: SweepIndex, records: dict | None = None, *, max_rows: int = 15, top_finished: int = 5):
    """The running (and paused) trials, then the best ``top_finished`` finished ones: trial id,
    status, the searched values, epoch/budget, the latest and the best objective. At most
    ``max_rows`` rows (the trials in progress beyond them: one "…and N more" row). ``records``:
    trial id → TrialRecord, for the latest epoch (without it, the latest column is left out).
    A rich renderable; on a terminal too narrow for every searched value, the last ones are left
    out rather than cut."""
    from service.analysis.tables import format_column, metric_kind

    metric, best_id = index.objective.metric, index.best_trial
    active = sorted((t for t in index.trials if t.status in IN_PROGRESS),
                    key=lambda t: (IN_PROGRESS.index(t.status), t.trial_id))
    finished = [t for t in index.ranked() if t.status in DONE]
    shown_finished = finished[:max(0, min(top_finished, max_rows - 1))]
    room = max(1, max_rows - len(shown_finished))
    shown_active = active if len(active) <= room else active[:room - 1]
    shown = shown_active + shown_finished

    keys = list(dict.fromkeys(k for t in shown for k in t.config))
    short = [k.split(".")[-1] for k in keys]
    columns = [("trial", "left", [t.trial_id for t in shown]),
               ("status", "left", [t.status.replace("_", " ") for t in shown])]
    columns += [(s if short.count(s) == 1 else k, "right", format_column([t.config.get(k) for t in shown]))
                for s, k in zip(short, keys)]
    budgets = [t.config.get("train.epochs", index.max_epochs) for t in shown]  # its own, when searched
    columns.append(("epoch", "right", [f"{t.epochs}/{budget}" for t, budget in zip(shown, budgets)]))
    if records is not None:
        def last(t):
            history = getattr(records.get(t.trial_id), "history", None)
            return history[-1].metric(metric) if history else None
        columns.append((metric, "right", format_column([last(t) for t in shown], metric_kind(metric))))
    columns.append((f"best {metric}", "right",
                    format_column([t.best.metric(metric) if t.best else None for t in shown], metric_kind(metric))))
    # Too narrow a terminal: the searched values leave first (the last first), then the latest objective.
    droppable = [*range(1 + len(keys), 1, -1), *([len(columns) - 2] if records is not None else [])]
    return _TrialRows(columns, droppable=droppable, active=len(shown_active),
                      more=len(active) - len(shown_active), best=[t.trial_id == best_id for t in shown],
                      caption=f"{len(shown_finished)} best of {len(finished)} finished" if finished else None)


class _TrialRows:
    """The live table's cells (formatted once); the rich Table is laid out at each draw, for the
    terminal's width then: the columns that do not fit are left out (``droppable``, in that order)."""

    def __init__(self, columns: list[tuple[str, str, list[str]]], *, droppable: list[int], active: int,
                 more: int, best: list[bool], caption: str | None):
        self.columns, self.droppable, self.active, self.more, self.best = columns, droppable, active, more, best
        self.caption = caption

    def table(self, drop: int = 0):
        from rich import box
        from rich.table import Table

        dropped = set(self.droppable[:drop])
        columns = [c for i, c in enumerate(self.columns) if i not in dropped]
        table = Table(box=box.SIMPLE_HEAD, header_style="bold", caption=self.caption, caption_justify="left",
                      pad_edge=False)
        for name, justify, _ in columns:
            table.add_column(name, justify=justify, no_wrap=True, overflow="ellipsis")
        rows = list(zip(*(cells for _, _, cells in columns)))
        for i, cells in enumerate(rows):
            if i == self.active and (self.active or self.more):
                if self.more:
                    table.add_row(f"…and {self.more} more", style="dim")
                table.add_section()
            table.add_row(*cells, style="bold green" if self.best[i] else None)
        if self.more and len(rows) == self.active:
            table.add_row(f"…and {self.more} more", style="dim")
        return table

    def __rich_console__(self, console, options):
        from rich.measure import Measurement

        unbounded = options.update(max_width=10**6)  # the table's natural width, not clamped to the terminal's
        for drop in range(len(self.droppable) + 1):
            table = self.table(drop)
            if Measurement.get(console, unbounded, table).maximum <= options.max_width:
                break
        yield table


def progress_line(index: SweepIndex, elapsed: float | None = None) -> str:
    order = ("pending", "running", "paused", "terminated", "stopped_early", "error", "rejected")
    counts = ", ".join(f"{index.trial_states[s]} {s.replace('_', ' ')}" for s in order if index.trial_states.get(s))
    best, metric = index.best, index.objective.metric
    best_text = (f"best {metric} {best.best.metric(metric):.4f} (trial {best.trial_id}, epoch {best.best.epoch})"
                 if best is not None else "no result yet")
    elapsed = int(index.wall_seconds if elapsed is None else elapsed)
    return f"[{elapsed // 60:02d}:{elapsed % 60:02d}] {index.num_trials} trials: {counts or 'none created yet'} | {best_text}"
