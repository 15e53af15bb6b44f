"""The GPU check: one command that proves mixed precision, packing with the memory guard and
throughput on a real GPU, in under 8 minutes (``make gpu-check GPU_CHECK_OUT=DIR``).

    python bench/gpu_check.py --out DIR [--budget 450] [--skip STAGE ...]

Stages, in this order, each given what is left of ``--budget`` seconds (a stage that no longer
fits is skipped and its row says so):

1. ``tests``: ``pytest tests/gpu`` (AMP auto → bf16 and fp16 + GradScaler, channels-last vs
   contiguous, GPU checkpoints loaded on the CPU, 4 trials packed at gpus_per_worker 0.25, the
   memory guard), its JUnit XML kept in DIR;
2. ``peak``: a bf16 8192³ matmul (CUDA events, median of 10 after 3 warm-ups): the denominator of MFU;
3. ``models``: samples/s and MFU of seed 000's CNN, cifar10net, seed 002's small ResNet and
   ResNet-18 (CIFAR stem), ``amp: auto``, at the studies' batch sizes, through ``trainer.loop.fit``
   itself (FLOPs per sample counted by FlopCounterMode over forward + backward);
4. ``packing``: 1, 2, 4 and 8 trials of seed 000's CNN on the one GPU at once, each its own
   process at gpus_per_worker 1/N (so each is capped): their aggregate samples/s; and the CUDA
   context each process holds outside PyTorch's allocator (what the guard reserves for);
5. ``study``: seed 002's study shape through the real sweep driver (12 trials of the small ResNet,
   50,000 CIFAR-100-shaped synthetic images, ASHA, at most 20 epochs; the study's own resources:
   one trial per GPU). If the full shape does not fit the time left (predicted from stage 3), it
   runs on a fraction of the images and extrapolates the training part linearly, saying so.

Everything lands in DIR: ``gpu-check.md`` (one Markdown table, what bench/README.md shows),
``gpu-check.json`` (every figure) and ``gpu-tests.xml``/``gpu-tests.log``. Without CUDA it checks
that it can run (imports, the tests collect, every stage's specs validate, FLOPs count) and prints
its plan, then "no CUDA device" and exits 0: CI runs that (tests/bench/test_gpu_check.py).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import ROOT, bench_spec, fit_in_process  # noqa: F401  (puts the repository on sys.path)

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from service.core.spec import SweepSpec  # noqa: E402

STAGES = ("tests", "peak", "models", "packing", "study")
# The models and the batch sizes their studies train at (sweeps/: cnn_structure/model_type/hyperband
# train the CNN at 64; cifar10net_optuna chooses 32/64/128; seed 002 64/128/256; the ResNet-18
# studies 128).
MODELS = {
    "seed-000 CNN": ({"name": "cnn", "num_conv_layers": 2, "filters": 64, "num_fc_layers": 2, "hidden_size": 128},
                     [64], 10),
    "cifar10net": ({"name": "cifar10net"}, [32, 64, 128], 10),
    "seed-002 small ResNet": ({"name": "small_resnet", "h_1": 64, "h_2": 128}, [64, 128, 256], 100),
    "ResNet-18 (CIFAR stem)": ({"name": "resnet", "depth": 18, "mode": "scratch", "cifar_stem": True}, [128], 10),
}
MODEL_SAMPLES = 32_768  # training images per epoch (a 10% val split comes on top)
MODEL_EPOCHS = 3  # the first is warm-up (cuDNN picks its algorithms), the best of the rest is reported
PACKED = (1, 2, 4, 8)
PACKED_SAMPLES = 8_192
PACKED_EPOCHS = 3  # one warm-up, then all start together (a barrier) and two are timed
STUDY_SPEC = ROOT / "sweeps" / "cifar100_small_resnet_asha.yaml"
STUDY_TRIALS, STUDY_IMAGES = 12, 50_000
STUDY_EPOCHS_EXPECTED = 80  # ASHA (grace 2, factor 3, max 20) over 12 trials: ~58 epochs in theory, more asynchronously
SEED_AUTHOR_SECONDS = 42 * 60 + 46  # seed 002's author, one GPU
TEST_TIMEOUT = 210  # seconds for pytest tests/gpu
H100_BF16_DENSE_TFLOPS = 989.0  # datasheet; the H200 has the H100's arithmetic


# ----------------------------------------------------------------------------- specs (CPU-checkable)
def model_spec(model: dict, batch: int, classes: int, *, samples: int = MODEL_SAMPLES, epochs: int = MODEL_EPOCHS,
               gpus: float = 1, cpus: int = 4) -> SweepSpec:
    spec = bench_spec(model, samples=samples, epochs=epochs, amp="auto", threads=cpus, batch_size=batch,
                      name="gpu-check")
    data = spec.data.model_copy(update={"num_classes": classes})
    return spec.model_copy(update={"data": data, "resources": spec.resources.model_copy(
        update={"gpus_per_worker": gpus, "cpus_per_worker": cpus})})


def study_spec(images: int, storage: str) -> SweepSpec:
    from service.core.loading import load_spec

    study = load_spec(STUDY_SPEC, [
        "name=gpu-check-study", f"storage.uri={storage}", "metrics.port=0", f"search.num_samples={STUDY_TRIALS}"])
    # CIFAR-100's shape in synthetic images (no files on the GPU machine): the data section of
    # another kind, with the study's split and augmentation
    dumped = study.model_dump(mode="json")
    dumped["data"] = {"name": "synthetic", "num_samples": images, "num_classes": 100, "channels": 3, "image_size": 32,
                      **{k: dumped["data"][k] for k in ("val_fraction", "val_split", "augment")}}
    return SweepSpec.model_validate(dumped)


def flops_per_sample(model: dict, batch: int, classes: int, device: str) -> float:
    """FLOPs of one training step (forward + backward) per sample, counted (as bench/mfu.py)."""
    from torch.utils.flop_counter import FlopCounterMode

    from trainer.models import build_model

    net = build_model(model_spec(model, batch, classes).model, (3, 32, 32), classes).to(device)
    x = torch.randn(batch, 3, 32, 32, device=device)
    y = torch.randint(0, classes, (batch,), device=device)
    with FlopCounterMode(display=False) as counter:
        F.cross_entropy(net(x), y).backward()
    return counter.get_total_flops() / batch


# ----------------------------------------------------------------------------- stages (CUDA)
def run_tests(out: Path, timeout: float) -> dict:
    xml, log = out / "gpu-tests.xml", out / "gpu-tests.log"
    start = time.perf_counter()
    try:
        done = subprocess.run(
            [sys.executable, "-m", "pytest", "tests/gpu", "-m", "gpu", "-q", "-rfEs", "-p", "no:cacheprovider",
             f"--junitxml={xml}", f"--timeout={int(timeout)}"],
            cwd=ROOT, capture_output=True, text=True, timeout=timeout + 30)
        output, code = done.stdout + done.stderr, done.returncode
    except subprocess.TimeoutExpired as err:  # what it printed until then (bytes or text, by Python version)
        text = lambda b: b.decode(errors="replace") if isinstance(b, bytes) else (b or "")  # noqa: E731
        output, code = f"{text(err.stdout)}{text(err.stderr)}\n(timed out after {timeout + 30:.0f} s)", -1
    log.write_text(output)
    seconds = time.perf_counter() - start
    counts = _junit_counts(xml)
    summary = next((line for line in reversed(output.splitlines()) if " in " in line and ("passed" in line or
                                                                                            "failed" in line)), "")
    failed = [line for line in output.splitlines() if line.startswith(("FAILED", "ERROR"))]
    return {"exit_code": code, "seconds": seconds, "summary": summary.strip("= "), **counts, "failures": failed[:20]}


def _junit_counts(xml: Path) -> dict:
    import xml.etree.ElementTree as ET

    try:
        suite = ET.parse(xml).getroot()
        suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
        total, failures, errors, skipped = (int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped"))
        return {"passed": total - failures - errors - skipped, "failed": failures + errors, "skipped": skipped}
    except (OSError, ET.ParseError, AttributeError, TypeError):
        return {}


def bf16_peak_tflops(size: int = 8192, repeats: int = 10) -> dict:
    a = torch.randn(size, size, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(size, size, device="cuda", dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        a @ b
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    rates = [2 * size**3 / t / 1e12 for t in times]
    return {"median": statistics.median(rates), "best": max(rates), "size": size}


def model_rows(peak_tflops: float, deadline: float, models=None, samples: int = MODEL_SAMPLES,
               device: str = "cuda") -> list[dict]:
    from trainer.loop import autocast_dtype

    rows = []
    amp = str(autocast_dtype("auto", torch.device(device))).removeprefix("torch.")
    for name, (model, batches, classes) in (models or MODELS).items():
        for batch in batches:
            if time.monotonic() > deadline:
                rows.append({"model": name, "batch": batch, "skipped": "out of the time budget"})
                continue
            flops = flops_per_sample(model, batch, classes, device)
            reports = fit_in_process(model_spec(model, batch, classes, samples=samples))
            rate = max(r["samples_per_second"] for r in reports[1:])
            achieved = flops * rate / 1e12
            rows.append({"model": name, "batch": batch, "amp": amp, "samples_per_second": rate,
                         "flops_per_sample": flops, "tflops": achieved, "mfu": achieved / peak_tflops,
                         "mfu_vs_h100_datasheet": achieved / H100_BF16_DENSE_TFLOPS,
                         "gpu_peak_bytes": reports[-1].get("gpu_peak_bytes"),
                         "epoch_seconds": [r["epoch_seconds"] for r in reports]})
    return rows


def _packed_trial(n: int, barrier, results, cores: int, samples: int = PACKED_SAMPLES,
                  epochs: int = PACKED_EPOCHS) -> None:
    """One of ``n`` packed trials (a process of its own, as Ray runs them): train, wait for the
    others after the warm-up epoch, time the rest; put what it saw on ``results``."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from common import InProcessSession

    from trainer.loop import fit

    class Timed(InProcessSession):
        def report(self, metrics, checkpoint=None):
            super().report(metrics, checkpoint)
            if len(self.reports) == 1:
                barrier.wait(timeout=600)
                self.start = time.time()
            self.end = time.time()

    model, _, classes = MODELS["seed-000 CNN"]
    spec = model_spec(model, 64, classes, samples=samples, epochs=epochs, gpus=1 / n, cpus=max(1, cores // n))
    session = Timed()
    fit(spec, session)
    timed = session.reports[1:]
    results.put({"start": session.start, "end": session.end, "samples": sum(r["train_samples"] for r in timed),
                 "samples_per_second": statistics.mean(r["samples_per_second"] for r in timed),
                 "gpu_peak_bytes": session.reports[-1].get("gpu_peak_bytes"),
                 "context_bytes": _context_bytes()})


def _context_bytes() -> int | None:
    """What this process holds on the GPU beyond PyTorch's allocator (NVML's per-process figure)."""
    try:
        import pynvml

        pynvml.nvmlInit()
        handle = pynvml.nvmlDeviceGetHandleByIndex(torch.cuda.current_device())
        used = {p.pid: p.usedGpuMemory for p in pynvml.nvmlDeviceGetComputeRunningProcesses(handle)}
        mine = used.get(os.getpid())
        return None if mine is None else int(mine - torch.cuda.memory_reserved())
    except Exception:  # no NVML, or it does not see per-process memory here (a VM, a container)
        return None


def packing_rows(deadline: float, counts=PACKED, samples: int = PACKED_SAMPLES) -> list[dict]:
    ctx = multiprocessing.get_context("spawn")
    rows, cores = [], os.cpu_count() or 1
    for n in counts:
        if time.monotonic() > deadline:
            rows.append({"trials": n, "skipped": "out of the time budget"})
            continue
        barrier, results = ctx.Barrier(n), ctx.Queue()
        procs = [ctx.Process(target=_packed_trial, args=(n, barrier, results, cores, samples)) for _ in range(n)]
        for p in procs:
            p.start()
        seen = []
        for _ in range(n):
            try:
                seen.append(results.get(timeout=max(30.0, deadline - time.monotonic() + 60)))
            except Exception:
                break
        for p in procs:
            p.join(timeout=30)
            if p.is_alive():
                p.kill()
        if len(seen) < n:
            rows.append({"trials": n, "skipped": f"{n - len(seen)} of {n} trials did not finish (exit codes "
                                                 f"{[p.exitcode for p in procs]})"})
            continue
        window = max(s["end"] for s in seen) - min(s["start"] for s in seen)
        contexts = [s["context_bytes"] for s in seen if s["context_bytes"] is not None]
        rows.append({"trials": n, "aggregate_samples_per_second": sum(s["samples"] for s in seen) / window,
                     "per_trial_samples_per_second": statistics.mean(s["samples_per_second"] for s in seen),
                     "gpu_peak_bytes_max": max((s["gpu_peak_bytes"] or 0) for s in seen),
                     "context_bytes_max": max(contexts) if contexts else None})
    return rows


def study_row(small_resnet_rate: float | None, deadline: float) -> dict:
    from service.core.record import SweepStore
    from trainer.driver.sweep import run_sweep

    left = deadline - time.monotonic()
    rate = small_resnet_rate or 10_000.0  # samples/s; a guess only when stage 3 did not run
    # Predicted full wall: epochs × (train + val images) / rate (augmented: ~20% slower), plus Ray's
    # start-up and each trial's start (a worker importing torch, building the data).
    train_seconds = STUDY_EPOCHS_EXPECTED * STUDY_IMAGES / (0.8 * rate)
    fixed = 20 + STUDY_TRIALS * 3
    scale = min(1.0, max(0.0, (left - fixed) / train_seconds))
    if scale < 0.1:
        return {"skipped": f"out of the time budget ({left:.0f} s left, the full study predicted at "
                           f"{fixed + train_seconds:.0f} s)"}
    images = STUDY_IMAGES if scale >= 1 else max(5_000, int(STUDY_IMAGES * scale) // 100 * 100)
    with tempfile.TemporaryDirectory(prefix="gpu-check-study-") as storage:
        spec = study_spec(images, storage)
        start = time.perf_counter()
        index = run_sweep(spec, echo=lambda line: None)
        wall = time.perf_counter() - start
        trials = SweepStore(spec.storage.uri, spec.name).read_trials(index)
    epochs = sum(len(t.history) for t in trials)
    trained = sum(h.epoch_seconds or 0 for t in trials for h in t.history)
    factor = STUDY_IMAGES / images
    extrapolated = (wall - trained) + trained * factor  # the training part scales with the images, the rest not
    best = index.best.best.val_acc if index.best and index.best.best else None
    return {"images": images, "scaled": images < STUDY_IMAGES, "wall_seconds": wall, "epochs": epochs,
            "training_seconds": trained, "full_shape_seconds": extrapolated, "trial_states": index.trial_states,
            "best_val_acc": best, "vs_seed_author": SEED_AUTHOR_SECONDS / extrapolated}


# ----------------------------------------------------------------------------- the table
def table(results: dict) -> str:
    rows = [("check", "setting", "result", "notes")]
    m = results["machine"]
    rows.append(("machine", m.get("gpu") or "no CUDA device", f"torch {m['torch']}, CUDA {m.get('cuda')}",
                 f"{m['cores']} cores; {m.get('gpu_memory_gib', 0):.0f} GiB GPU memory" if m.get("gpu") else ""))
    if "tests" in results:
        t = results["tests"]
        status = t.get("summary") or f"exit code {t['exit_code']}"
        rows.append(("tests/gpu", "pytest tests/gpu -m gpu", status,
                     ("; ".join(t["failures"][:5]) or "all passed") + f" ({t['seconds']:.0f} s)"))
    if "peak" in results:
        p = results["peak"]
        rows.append(("bf16 matmul peak", f"{p['size']}³, CUDA events", f"{p['median']:.0f} TFLOP/s",
                     f"median of 10 (best {p['best']:.0f}); the MFU denominator"))
    for r in results.get("models", []):
        setting = f"{r['model']}, batch {r['batch']}"
        if "skipped" in r:
            rows.append(("samples/s, MFU", setting, "skipped", r["skipped"]))
            continue
        rows.append(("samples/s, MFU", f"{setting}, amp auto ({r['amp']})",
                     f"{r['samples_per_second']:,.0f} samples/s, MFU {r['mfu']:.1%}",
                     f"{r['flops_per_sample'] / 1e6:,.1f} MFLOP/sample → {r['tflops']:.1f} TFLOP/s; "
                     f"peak memory {_gib(r['gpu_peak_bytes'])}"))
    packed = results.get("packing", [])
    one = next((r for r in packed if r["trials"] == 1 and "skipped" not in r), None)
    for r in packed:
        setting = f"{r['trials']} × seed-000 CNN (batch 64), gpus_per_worker {1 / r['trials']:g}"
        if "skipped" in r:
            rows.append(("packed trials", setting, "skipped", r["skipped"]))
            continue
        gain = f", {r['aggregate_samples_per_second'] / one['aggregate_samples_per_second']:.2f}× one trial" if one else ""
        context = f"; outside the allocator {_gib(r['context_bytes_max'])} a process" if r["context_bytes_max"] else ""
        rows.append(("packed trials", setting, f"{r['aggregate_samples_per_second']:,.0f} samples/s together{gain}",
                     f"{r['per_trial_samples_per_second']:,.0f} per trial; peak {_gib(r['gpu_peak_bytes_max'])} "
                     f"a trial{context}"))
    if "study" in results:
        s = results["study"]
        setting = f"seed 002: {STUDY_TRIALS} small ResNets, ASHA, ≤ 20 epochs, 1 trial per GPU"
        if "skipped" in s:
            rows.append(("study wall time", setting, "skipped", s["skipped"]))
        else:
            how = (f"measured {_minutes(s['wall_seconds'])} on {s['images']:,} images (scaled: the training part "
                   f"× {STUDY_IMAGES / s['images']:.1f}, the rest as measured)" if s["scaled"]
                   else f"measured on all {STUDY_IMAGES:,} images")
            rows.append(("study wall time", setting,
                         f"{_minutes(s['full_shape_seconds'])} {'extrapolated' if s['scaled'] else ''}".strip(),
                         f"{how}; {s['epochs']} epochs run; {s['vs_seed_author']:.1f}× faster than the seed "
                         f"author's 42 min 46 s"))
    for stage, why in results.get("skipped", {}).items():
        rows.append((stage, "", "skipped", why))
    width = len(rows[0])
    lines = ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * width]
    lines += ["| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |" for row in rows[1:]]
    return "\n".join(lines) + "\n"


def _gib(n) -> str:
    return "n/a" if n is None else f"{n / 2**30:.2f} GiB"


def _minutes(seconds: float) -> str:
    return f"{int(seconds // 60)} min {seconds % 60:02.0f} s"


# ----------------------------------------------------------------------------- without CUDA: the dry pass
def dry_pass(out: Path | None) -> None:
    """What can be checked without a GPU: imports, test collection, every stage's specs, FLOPs."""
    import trainer.driver.sweep  # noqa: F401  (the driver and Ray Tune import)
    import trainer.loop  # noqa: F401
    from trainer import gpu_memory

    assert gpu_memory.memory_fraction(0.25, 141 * 2**30) is not None
    import pytest

    class Count:  # in this process: torch and the trainer are imported already
        items: list = []

        def pytest_collection_finish(self, session):
            self.items = [item for item in session.items if "gpu" in item.keywords]

    counter = Count()
    cwd = os.getcwd()
    os.chdir(ROOT)
    try:
        code = pytest.main(["tests/gpu", "--collect-only", "-q", "-p", "no:cacheprovider"], plugins=[counter])
    finally:
        os.chdir(cwd)
    if code != 0 or not counter.items:
        raise SystemExit(f"tests/gpu does not collect (pytest exit code {code})")
    print(f"tests/gpu: {len(counter.items)} tests collect, all marked gpu")
    plan = []
    for name, (model, batches, classes) in MODELS.items():
        for batch in batches:
            model_spec(model, batch, classes)
        flops = flops_per_sample(model, 2, classes, "cpu")
        plan.append(f"models: {name} at batch {', '.join(map(str, batches))}: {flops / 1e6:,.1f} MFLOP per training sample")
    for n in PACKED:
        model, _, classes = MODELS["seed-000 CNN"]
        model_spec(model, 64, classes, samples=PACKED_SAMPLES, epochs=PACKED_EPOCHS, gpus=1 / n)
    plan.append(f"packing: {', '.join(map(str, PACKED))} trials of the seed-000 CNN at gpus_per_worker 1/N")
    study = study_spec(STUDY_IMAGES, tempfile.gettempdir())
    from service.core.spec import max_epochs, num_trials

    plan.append(f"study: {num_trials(study)} trials of {study.model.name}, {study.scheduler.name}, "
                f"≤ {max_epochs(study)} epochs, {study.data.num_samples:,} images (scaled to the time left)")
    for line in plan:
        print(f"plan: {line}")
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "gpu-check.md").write_text(
            "| check | setting | result | notes |\n|---|---|---|---|\n"
            "| machine | no CUDA device | not run | the plan below was checked: imports, specs, FLOP counts |\n"
            + "".join(f"| plan | {line.split(': ', 1)[0]} | not run | {line.split(': ', 1)[1]} |\n" for line in plan))


# ----------------------------------------------------------------------------- main
def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="folder for gpu-check.md, gpu-check.json and the test logs")
    parser.add_argument("--budget", type=float, default=450, help="seconds for everything (default 450: under 8 min)")
    parser.add_argument("--skip", nargs="*", default=[], choices=STAGES, help="stages to leave out")
    args = parser.parse_args()
    # Ray's memory monitor kills workers near the machine's memory total, which a VM may report low
    # at first (the device machines' grows as it is used): the check's trials are sized to fit.
    os.environ.setdefault("RAY_memory_monitor_refresh_ms", "0")
    print(f"machine: {sys.version.split()[0]}, torch {torch.__version__}, {os.cpu_count()} cores")
    if not torch.cuda.is_available():
        dry_pass(args.out)
        print("no CUDA device: nothing measured; the check above ran (imports, tests/gpu collected, the plan's "
              "specs and FLOP counts). Run `make gpu-check` on a GPU machine for the figures.")
        return 0

    start = time.monotonic()
    deadline = start + args.budget
    out = args.out or Path(tempfile.mkdtemp(prefix="gpu-check-"))
    out.mkdir(parents=True, exist_ok=True)
    props = torch.cuda.get_device_properties(0)
    results: dict = {"machine": {"gpu": props.name, "gpu_memory_gib": props.total_memory / 2**30,
                                 "torch": torch.__version__, "cuda": torch.version.cuda, "cores": os.cpu_count(),
                                 "python": sys.version.split()[0]},
                     "budget_seconds": args.budget, "skipped": {}}

    def stage(name: str, reserve: float) -> bool:
        """Run ``name`` unless skipped or fewer than ``reserve`` seconds are left."""
        if name in args.skip:
            results["skipped"][name] = "--skip"
            return False
        left = deadline - time.monotonic()
        if left < reserve:
            results["skipped"][name] = f"out of the time budget ({left:.0f} s left of {args.budget:.0f})"
            return False
        print(f"== {name} ({left:.0f} s left)", flush=True)
        return True

    # The last stages get what the first leave; each has a floor below which it is skipped.
    if stage("tests", 60):
        results["tests"] = run_tests(out, timeout=min(TEST_TIMEOUT, deadline - time.monotonic() - 150))
        print(results["tests"]["summary"], flush=True)
    if stage("peak", 5):
        results["peak"] = bf16_peak_tflops()
    if stage("models", 30):
        results["models"] = model_rows(results.get("peak", {}).get("median", H100_BF16_DENSE_TFLOPS),
                                       deadline=deadline - 150)
    torch.cuda.empty_cache()  # what this process's cache holds is not for the trials below
    if stage("packing", 40):
        results["packing"] = packing_rows(deadline=deadline - 70)
    torch.cuda.empty_cache()
    if stage("study", 40):
        rates = [r["samples_per_second"] for r in results.get("models", [])
                 if r["model"] == "seed-002 small ResNet" and "samples_per_second" in r]
        results["study"] = study_row(statistics.mean(rates) if rates else None, deadline)
    results["seconds"] = time.monotonic() - start

    text = table(results)
    (out / "gpu-check.md").write_text(text)
    (out / "gpu-check.json").write_text(json.dumps(results, indent=2, default=float) + "\n")
    print(text)
    print(f"gpu check: {results['seconds']:.0f} s; results: {out}/gpu-check.md")
    failed = results.get("tests", {}).get("exit_code", 0) not in (0,)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
