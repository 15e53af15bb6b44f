"""Fuzz the sweep service's API from its own OpenAPI document with schemathesis, as `st run` does:
every operation, every phase (examples, coverage: undeclared methods, missing headers, boundary
values; fuzzing: random valid and invalid requests; stateful: submit → status → cancel chains), all
of schemathesis' checks. Prints the API calls made, the 5xx answers and the conformance failures
(an undeclared status, a body or content type other than declared, a 405 without Allow, ...);
exits 1 if there is any.

    .venv/bin/python bench/fuzz_api.py [--examples 40] [--seed 0] [--json out.json]

The app is the real one (create_app: auth, roles, name rules, the OpenAPI document) over a real
LocalBackend in a temporary workdir, with the token of an admin. Only two things differ from
production, so that no Ray starts and nothing leaves the temporary directory: a sweep's process is
`sleep 30` (started like the real one: its own session, the process token in its environment, so
cancel's pid/start-time/token check is the real one), and every sweep's storage is a directory
under the workdir (a spec's storage.uri, s3:// included, is replaced: a fuzzed URI reaches no
network). tests/service/test_api_fuzz.py runs the same at a CI size (--examples 10).

The coverage phase is left out for POST /sweeps only: its body's schema is the spec's (~150
components, a search primitive possible at nearly every leaf), and schemathesis' coverage phase
enumerates a boundary case per keyword and combination: over 75,000 bodies in a minute without
finishing. Its fuzzing and stateful phases send POST /sweeps random valid and invalid bodies.

Why 422 counts as an accepted answer to a schema-valid POST /sweeps (schemathesis'
positive_data_acceptance): the body's JSON Schema is the spec's, but the loader checks more than a
JSON Schema can say (cross-field rules: a PBT mutation of a weight-shaping field, grace_period
within the epochs, at most 10,000 trials), so a body valid by the schema may still be refused,
with the problems listed. Likewise DELETE /sweeps/{name}/data's ?confirm= must repeat {name}
(a 422 otherwise), which a schema cannot say either. Two more departures, both because of what the API promises: DELETE
/sweeps/{name} is a cancel (the sweep stays, as cancelled: use_after_free is off), and the stateful
phase follows the links the document declares (POST /sweeps → its status and its cancel, a cancel → its resume) rather
than guessing links from names (a guessed POST → GET /sweeps/{name}/best is a 404 by design until a
trial reports). Everything else is schemathesis' defaults.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from service.control.backends import LocalBackend  # noqa: E402

ADMIN_TOKEN = "fuzz-admin-token-0123456789abcdef"


class FuzzBackend(LocalBackend):
    """LocalBackend whose sweeps are `sleep` processes and whose storage stays in the workdir."""

    def __init__(self, workdir: Path):
        super().__init__(workdir, grace_seconds=1.0)
        self.storage_root = self.workdir.parent / "storage"

    def storage_uri(self, spec) -> str:
        return str(self.storage_root)

    def _start(self, command, log_path, env):
        return super()._start(["sleep", "30"], log_path, env)

    def stop_all(self) -> None:
        for process in list(self._processes.values()):
            if process.poll() is None:
                process.kill()
            process.wait()


def fuzz_app(workdir: Path):
    from service.control.api import create_app

    backend = FuzzBackend(workdir / "local")
    return create_app(backend, token=ADMIN_TOKEN, tokens_file=""), backend


def config(examples: int, seed: int | None):
    import schemathesis

    return schemathesis.Config.from_dict({
        "headers": {"Authorization": f"Bearer {ADMIN_TOKEN}"},
        "generation": {"max-examples": examples, "database": "none"},  # a run repeats with its seed
        # The stateful phase follows the links the document declares (POST /sweeps → its status,
        # its cancel), not links guessed from names: a guessed POST → GET /sweeps/{name}/best is
        # a 404 by design until a trial has reported (the sweep exists, its results do not yet).
        "phases": {"stateful": {"inference": {"algorithms": []}}},
        # DELETE /sweeps/{name} cancels, it does not erase: the sweep stays, answered as cancelled
        # (its trials and results are kept, resubmitting its spec resumes it). That is the API's
        # contract, so "still there after DELETE" is not a failure here.
        "checks": {"use_after_free": {"enabled": False}},
        "seed": seed,
        "workers": 1,
        "operations": [{
            "include-name": "POST /sweeps",
            "checks": {"positive_data_acceptance": {"expected-statuses": ["2xx", "401", "403", "409", "422"]}},
            "phases": {"coverage": {"enabled": False}},
        }, {
            # ?confirm= must repeat the path's {name}, which no JSON Schema can say: a valid name that
            # is another one is refused with a 422, as the document declares.
            "include-name": "DELETE /sweeps/{name}/data",
            "checks": {"positive_data_acceptance": {"expected-statuses": ["2xx", "401", "403", "404", "409", "422"]}},
        }],
    })


def run(examples: int = 40, seed: int | None = 0, workdir: Path | None = None) -> dict:
    """One schemathesis run over every operation; what it found, counted."""
    import schemathesis
    from schemathesis.engine import events, from_schema

    with tempfile.TemporaryDirectory() as tmp:
        app, backend = fuzz_app(Path(workdir or tmp))
        schema = schemathesis.openapi.from_asgi("/openapi.json", app, config=config(examples, seed))
        calls, statuses, phases, operations = 0, collections.Counter(), collections.Counter(), set()
        failures, samples, errors = collections.Counter(), {}, []
        started = time.monotonic()
        try:
            for event in from_schema(schema).execute():
                if isinstance(event, events.ScenarioFinished):
                    for interaction in event.recorder.interactions.values():
                        if interaction.response is not None:
                            calls += 1
                            statuses[interaction.response.status_code] += 1
                            phases[str(event.phase.value)] += 1
                    operations |= {node.value.operation.label for node in event.recorder.cases.values()}
                    for checks in event.recorder.checks.values():
                        for check in checks:
                            if check.status.name != "FAILURE":
                                continue
                            key = f"{event.recorder.label}: {check.name}"
                            failures[key] += 1
                            if key not in samples and check.failure_info is not None:
                                failure = check.failure_info.failure
                                samples[key] = f"{failure.title}: {str(failure.message)[:400]}"
                elif isinstance(event, (events.NonFatalError, events.FatalError)):
                    errors.append(str(getattr(event, "value", None) or getattr(event, "exception", event))[:400])
        finally:
            backend.stop_all()
        return {
            "examples": examples, "seed": seed, "seconds": round(time.monotonic() - started, 1),
            "calls": calls, "statuses": dict(sorted(statuses.items())), "phases": dict(phases),
            "operations": sorted(operations),
            "server_errors": sum(n for code, n in statuses.items() if code >= 500),
            "conformance_failures": sum(failures.values()),
            "failures": dict(failures), "samples": samples, "errors": errors,
        }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--examples", type=int, default=40, help="hypothesis examples per operation and phase")
    parser.add_argument("--seed", type=int, default=0, help="schemathesis' seed (a run repeats with it)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    os.environ.setdefault("HYPOTHESIS_STORAGE_DIRECTORY", str(Path(tempfile.gettempdir()) / "sweep-fuzz-hypothesis"))
    result = run(args.examples, args.seed)
    print(f"schemathesis over the sweep service's OpenAPI document: {result['calls']} API calls in "
          f"{result['seconds']} s (--examples {args.examples}, --seed {args.seed})")
    print(f"operations: {len(result['operations'])}; calls by phase: "
          + ", ".join(f"{phase} {n}" for phase, n in result["phases"].items()))
    print("statuses: " + ", ".join(f"{code} ×{n}" for code, n in result["statuses"].items()))
    print(f"5xx answers: {result['server_errors']}")
    print(f"conformance failures: {result['conformance_failures']}")
    for key, count in sorted(result["failures"].items()):
        print(f"  {count:4d}  {key}\n        {result['samples'].get(key, '')}")
    for error in result["errors"]:
        print(f"  error: {error}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 1 if result["server_errors"] or result["conformance_failures"] or result["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
