"""Pre-flight: what would fail only once Ray has started and trials run, checked before it starts.

    check(spec, source="sweeps/x.yaml")                    # sweepctl run / resume: every check
    check(spec, source="sweeps/x.yaml", local_only=True)   # sweepctl validate: no network, no writes

raises ``PreflightError`` (a ``SpecError``: exit code 2, no traceback) listing every problem found:

* a local ``data.path`` exists and holds the files of ``data.name``'s official format (the layouts
  below are the one description of them: trainer/data/formats.py reads by them); missing files
  with ``data.download: true`` are fine when the download source answers (and the path can be
  created), which only the full check asks;
* an ``s3://`` ``data.path`` answers with the given credentials (an object, or objects under the
  prefix);
* the storage (``storage.uri``) is reachable and writable: a probe object/file is written under it
  and deleted again (a local storage directory is created);
* a warm start's earlier sweeps exist and match this spec (service/core/warm_start.py); with
  ``local_only``, when all of them are on local storage (reading them needs no network).

Network checks run side by side, each bounded (HTTP ``HTTP_TIMEOUT_S``, S3 ``S3_TIMEOUT_S``), so a
dead endpoint costs seconds, not a sweep. Torch-free (no torch, torchvision or ray); boto3 only for
s3:// URIs. On a cluster (``RAY_ADDRESS`` set) a local data.path is the trial nodes' business, not
the driver's: only its download source is checked there.
"""

from __future__ import annotations

import os
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Callable

from service.core import storage
from service.core.loading import Problem, SpecError
from service.core.spec import ON_DISK, DataSpec, SweepSpec

HTTP_TIMEOUT_S = 3.0  # per download URL (all of them side by side)
S3_TIMEOUT_S = 5.0  # per S3 check, retries included (boto3's own connect timeout is 60 s)


class PreflightError(SpecError):
    """A valid spec that would fail once running; ``problems`` lists every one found."""

    def __init__(self, source: str, problems: list[Problem]):
        super().__init__(source, problems)
        count = f"{len(problems)} problem" + ("s" if len(problems) != 1 else "")
        lines = [f"{source}: pre-flight found {count}; nothing was started"] + [f"  {p}" for p in problems]
        self.args = ("\n".join(lines),)

    def __str__(self) -> str:
        return self.args[0]


# ============================================================================ dataset layouts
# MNIST / Fashion-MNIST: the official idx files (each optionally gzipped), per split: (images, labels).
MNIST_SPLITS = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
# torchvision's layout puts the files under <root>/<folder>/raw/.
MNIST_FOLDERS = {"mnist": "MNIST", "fashion_mnist": "FashionMNIST"}

# CIFAR: per variant, the official archive name, its top folder, train files, test file, meta
# file, the label key in each batch and the class-name key in the meta file.
CIFAR_LAYOUTS = {
    "cifar10": dict(
        archive="cifar-10-python.tar.gz",
        folder="cifar-10-batches-py",
        train=[f"data_batch_{i}" for i in range(1, 6)],
        test="test_batch",
        meta="batches.meta",
        label_key="labels",
        names_key="label_names",
    ),
    "cifar100": dict(
        archive="cifar-100-python.tar.gz",
        folder="cifar-100-python",
        train=["train"],
        test="test",
        meta="meta",
        label_key="fine_labels",
        names_key="fine_label_names",
    ),
}

# What each on-disk dataset's path should hold, for error messages.
_MNIST_FILE_LIST = ", ".join(name for pair in MNIST_SPLITS.values() for name in pair)
EXPECTED = {
    **{
        variant: f"the idx files {_MNIST_FILE_LIST} (each optionally .gz) in it or in {folder}/raw/"
        for variant, folder in MNIST_FOLDERS.items()
    },
    **{
        variant: f"the '{c['folder']}' folder, a directory containing it or {c['archive']}, or {c['archive']} itself"
        for variant, c in CIFAR_LAYOUTS.items()
    },
}

# Where torchvision's dataset classes download from (data.download: true): MNIST.mirrors,
# FashionMNIST.mirrors (each + a file name), CIFAR10.url, CIFAR100.url.
# tests/service/test_preflight.py checks this table against torchvision's class attributes.
DOWNLOAD_MIRRORS = {
    "mnist": ["https://ossci-datasets.s3.amazonaws.com/mnist/", "http://yann.lecun.com/exdb/mnist/"],
    "fashion_mnist": ["http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"],
}
DOWNLOAD_URLS = {
    "cifar10": "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
    "cifar100": "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
}


def download_urls(name: str) -> list[str]:
    """The URLs torchvision fetches ``name`` from (one file each; any one answering will do)."""
    if name in DOWNLOAD_MIRRORS:
        first = MNIST_SPLITS["train"][0] + ".gz"
        return [mirror + first for mirror in DOWNLOAD_MIRRORS[name]]
    return [DOWNLOAD_URLS[name]]


def dataset_files_present(name: str, path: Path) -> bool:
    """Whether ``path`` looks like it holds ``name`` (a file always counts: its reader judges it)."""
    if path.is_file():
        return True
    if name in MNIST_FOLDERS:
        return find_mnist_folder(path, name) is not None
    return find_cifar(path, CIFAR_LAYOUTS[name]) is not None


def find_mnist_folder(path: Path, variant: str) -> Path | None:
    """The first of ``path``, ``path/<Folder>/raw`` that holds all four files (plain or .gz)."""
    for folder in (path, path / MNIST_FOLDERS[variant] / "raw"):
        if all(idx_file(folder, name).is_file() for pair in MNIST_SPLITS.values() for name in pair):
            return folder
    return None


def idx_file(folder: Path, name: str) -> Path:
    """``folder/name`` if it exists, else ``folder/name.gz`` (which may not exist either)."""
    plain = folder / name
    return plain if plain.is_file() else folder / f"{name}.gz"


def find_cifar(path: Path, layout: dict) -> Path | None:
    """The batches folder or the archive that ``path`` points at or contains, if any."""
    if path.is_file():
        return path
    if path.is_dir():
        for candidate in (path, path / layout["folder"]):
            if (candidate / layout["test"]).is_file():
                return candidate
        if (path / layout["archive"]).is_file():
            return path / layout["archive"]
    return None


def local_dataset_problem(name: str, path: Path) -> str | None:
    """What is wrong with the local ``path`` as a copy of ``name``, or None (a cheap look: which
    files are there, and that a CIFAR archive is a tar file; the readers check the contents)."""
    if not path.exists():
        return f"{path} does not exist: expected {EXPECTED[name]}"
    if name in MNIST_FOLDERS:
        if find_mnist_folder(path, name) is None:
            return f"no {name} files at {path}: expected {EXPECTED[name]}"
        return None
    import tarfile

    found = find_cifar(path, CIFAR_LAYOUTS[name])
    if found is None:
        return f"no {name} files at {path}: expected {EXPECTED[name]}"
    if found.is_file() and not tarfile.is_tarfile(found):
        return f"{found} is not a tar archive: expected {EXPECTED[name]}"
    return None


# ============================================================================ the checks
def check(spec: SweepSpec, *, source: str = "<spec>", local_only: bool = False, check_storage: bool = True) -> None:
    """Raise ``PreflightError`` with every problem found (see the module docstring).

    ``local_only``: only what needs neither network nor writes (the local data.path; sweepctl
    validate; a warm start whose earlier sweeps are all on local storage too). ``check_storage``:
    False when the storage was checked already (sweepctl resume checks it before reading the
    stored spec)."""
    problems = data_problems(spec.data, local_only=local_only)
    if check_storage and not local_only:
        problems += storage_problems(spec.storage.uri)
    if not local_only or not warm_start_needs_network(spec):
        problems += warm_start_problems(spec)
    raise_if(problems, source)


def warm_start_needs_network(spec: SweepSpec) -> bool:
    """Whether reading one of the warm start's earlier sweeps goes over the network (s3://)."""
    from service.core.spec import earlier_sweep_location

    refs = spec.search.warm_start.sweeps if spec.search.warm_start else []
    return any(storage.is_s3(earlier_sweep_location(ref, spec.storage.uri)[0]) for ref in refs)


def warm_start_problems(spec: SweepSpec) -> list[Problem]:
    """The earlier sweeps of search.warm_start: there, readable, and answering the same question."""
    from service.core import warm_start

    try:
        warm_start.load(spec)
    except warm_start.WarmStartError as err:
        return err.problems
    return []


def raise_if(problems: list[Problem], source: str) -> None:
    if problems:
        raise PreflightError(source, problems)


def data_problems(data: DataSpec, *, local_only: bool = False) -> list[Problem]:
    """Problems with ``data.path`` (datasets that need no files have none)."""
    if data.name not in ON_DISK or not data.path:
        return []
    if storage.is_s3(data.path):
        if local_only:
            return []
        return _at("data.path", _bounded({data.path: lambda: _s3_data_problem(data.path)}, S3_TIMEOUT_S, _s3_late()))
    here = not os.environ.get("RAY_ADDRESS")  # a driver on a cluster does not see the trials' disks
    local = Path(data.path.removeprefix("file://")).expanduser()
    missing = local_dataset_problem(data.name, local) if here else None
    if missing is None and here:
        return []
    if not data.download:
        if not here:
            return []
        return [Problem("data.path", f"{missing}. Fix data.path, or set data.download: true to fetch the "
                                     "official files into it (if the files are on the machines the trials run "
                                     "on but not here: --no-preflight)")]
    if local_only:
        return []  # downloaded at run time; whether the source answers is the full check's
    problems = []
    if here and (unwritable := _uncreatable(local)):
        problems.append(Problem("data.path", f"data.download: true, but {unwritable}"))
    urls = download_urls(data.name)
    answers = _bounded({url: (lambda url=url: _http_problem(url)) for url in urls}, HTTP_TIMEOUT_S)
    if len(answers) == len(urls):  # none answered
        tried = "; ".join(f"{url}: {reason}" for url, reason in answers.items())
        problems.append(Problem("data.path", (
            f"data.download: true, but {data.name}'s download source cannot be reached ({tried}). Download "
            f"the files on a connected machine and point data.path at them ({EXPECTED[data.name]}), with "
            "data.download: false")))
    return problems


def storage_problems(uri: str) -> list[Problem]:
    """Problems with the storage at ``uri``: reachable, readable, and a probe written and deleted."""
    uri = storage.normalize(uri)
    probe = storage.join(uri, f".preflight-{uuid.uuid4().hex[:12]}")
    if storage.is_s3(uri):
        return _at("storage.uri", _bounded({uri: lambda: _s3_storage_problem(uri, probe)}, S3_TIMEOUT_S, _s3_late()))
    root = storage.local_path(uri)
    try:
        root.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=root, prefix=".preflight-", suffix=".tmp")
        try:
            os.write(fd, b"sweep-service pre-flight probe\n")
        finally:
            os.close(fd)
            Path(tmp).unlink(missing_ok=True)
    except OSError as err:
        return [Problem("storage.uri", f"cannot write under {uri}: {err.strerror or err} "
                                       "(use a writable --set storage.uri=...)")]
    return []


def _at(path: str, failures: dict[str, str]) -> list[Problem]:
    return [Problem(path, f"{where}: {reason}") for where, reason in failures.items()]


def _uncreatable(path: Path) -> str | None:
    """Why ``path`` could not be created (or written) to download into, or None. Creates nothing."""
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        return f"{existing} is not a directory, so {path} cannot be created to download into"
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"{existing} is not writable, so the files cannot be downloaded into {path}"
    return None


# ============================================================================ network, bounded
def _bounded(checks: dict[str, Callable[[], str | None]], timeout: float, late: str = "") -> dict[str, str]:
    """Run the checks side by side, each in a daemon thread; wait at most ``timeout`` seconds in
    all. Returns the reason of every check that failed or gave no answer in time (+ ``late``)."""
    results: dict[str, str | None] = {}

    def run(key: str, fn: Callable[[], str | None]) -> None:
        try:
            results[key] = fn()
        except Exception as err:  # a check that raises reports it, never a traceback
            results[key] = f"{type(err).__name__}: {err}"

    threads = [threading.Thread(target=run, args=item, daemon=True, name=f"preflight {item[0]}") for item in checks.items()]
    for t in threads:
        t.start()
    deadline = time.monotonic() + timeout
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    failed = {}
    for key in checks:
        if key not in results:
            failed[key] = f"no answer within {timeout:g} s{late}"
        elif results[key] is not None:
            failed[key] = results[key]
    return failed


def _http_problem(url: str) -> str | None:
    """None when ``url`` answers a HEAD request; else why not (proxies from the environment apply,
    as they do to torchvision's download)."""
    import urllib.error
    import urllib.request

    request = urllib.request.Request(url, method="HEAD", headers={"User-Agent": "sweep-service-preflight"})
    try:
        with urllib.request.urlopen(request, timeout=HTTP_TIMEOUT_S):
            return None
    except urllib.error.HTTPError as err:
        return None if err.code == 405 else f"HTTP {err.code} {err.reason}"  # 405: HEAD refused, GET may work
    except urllib.error.URLError as err:
        return str(err.reason)
    except (OSError, ValueError) as err:
        return str(err)


def _s3_data_problem(uri: str) -> str | None:
    """None when ``uri`` is an object or has objects under it (as fetch_to_cache reads it)."""
    from botocore.exceptions import BotoCoreError, ClientError

    bucket, key = storage.split_s3(uri)
    client = storage.s3_client()
    try:
        if key and not key.endswith("/"):
            try:
                client.head_object(Bucket=bucket, Key=key)
                return None
            except ClientError as err:
                if err.response.get("Error", {}).get("Code") not in ("404", "NoSuchKey", "NotFound"):
                    raise
        prefix = key.rstrip("/") + "/" if key else ""
        listing = client.list_objects_v2(Bucket=bucket, Prefix=prefix, MaxKeys=10)
        if not any(not obj["Key"].endswith("/") for obj in listing.get("Contents", [])):
            return f"no object {uri} and no objects under s3://{bucket}/{prefix}{_endpoint()}"
        return None
    except (ClientError, BotoCoreError) as err:
        return _s3_reason(err, bucket)


def _s3_storage_problem(uri: str, probe: str) -> str | None:
    """None when the bucket answers a listing under ``uri`` and ``probe`` can be written and deleted."""
    from botocore.exceptions import BotoCoreError, ClientError

    bucket, key = storage.split_s3(uri)
    client = storage.s3_client()
    step = "list"
    try:
        client.list_objects_v2(Bucket=bucket, Prefix=key + "/" if key else "", MaxKeys=1)
        _, probe_key = storage.split_s3(probe)
        step = "write a probe object to"
        client.put_object(Bucket=bucket, Key=probe_key, Body=b"sweep-service pre-flight probe\n")
        step = "delete a probe object from"
        client.delete_object(Bucket=bucket, Key=probe_key)
        return None
    except (ClientError, BotoCoreError) as err:
        return f"cannot {step} it: {_s3_reason(err, bucket)}"


def _s3_late() -> str:
    return f"{_endpoint()}: check AWS_ENDPOINT_URL and that the server is up"


def _endpoint() -> str:
    return f" (endpoint {storage.s3_endpoint() or 'AWS'})"


def _s3_reason(err: Exception, bucket: str) -> str:
    """An S3 failure in words, with what to check."""
    from botocore.exceptions import ClientError, NoCredentialsError

    if isinstance(err, NoCredentialsError):
        return "no AWS credentials found: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE)" + _endpoint()
    if isinstance(err, ClientError):
        error = err.response.get("Error", {})
        code = error.get("Code", "")
        if code == "NoSuchBucket":
            return f"bucket {bucket!r} does not exist{_endpoint()}"
        if code in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "403", "InvalidToken",
                    "ExpiredToken", "AuthorizationHeaderMalformed"):
            return (f"access refused ({code}): check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY and what they "
                    f"may do in bucket {bucket!r}{_endpoint()}")
        return f"{code or 'error'}: {error.get('Message') or err}{_endpoint()}"
    return f"{err}: check AWS_ENDPOINT_URL and that the server is up{_endpoint()}"
