"""The one place that knows storage URIs: a local path (or file://PATH), or s3://bucket/prefix.

What a sweep keeps where under the storage root is service/core/record.py's (the layout's owner);
this module only reads, writes and lists objects.

S3: endpoint, region and credentials come from the standard AWS environment (AWS_ENDPOINT_URL
[_S3], AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_DEFAULT_REGION, AWS_PROFILE), never from a
spec file; ``SWEEP_S3_ADDRESSING_STYLE`` = auto | path | virtual (MinIO and Ceph usually want
path). Writes of one object are a single PUT, which S3 makes visible all at once: a reader sees
the old object or the new one, never half of one (the same promise as write-then-rename locally).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import tempfile
from pathlib import Path
from collections import Counter
from typing import Any

ADDRESSING_STYLE_ENV = "SWEEP_S3_ADDRESSING_STYLE"
# Every process reads the S3 settings (AWS_*, SWEEP_S3_ADDRESSING_STYLE) from its own environment.
# Ray workers have the driver's: a Ray the driver starts passes its environment down to them, never
# through a runtime env, which Ray logs in plain text (trainer/driver/sweep.py).


# Every object this process wrote through write_bytes_atomic: "writes" (count) and "bytes". The
# driver's bookkeeping must stay flat per trial; tests and bench/sweep_scale.py count it here.
WRITES: Counter = Counter()


class StorageError(Exception):
    """Storage unreachable or refusing: the message names the URI and what to check."""


class StorageFull(StorageError):
    """No space left (or quota exceeded) on the storage: retrying does not help."""


# ============================================================================ URIs
def is_s3(uri: str) -> bool:
    return str(uri).startswith("s3://")


def local_path(uri: str) -> Path:
    """file://PATH or a plain path → absolute local path (relative paths from the working dir)."""
    path = uri.removeprefix("file://") if uri.startswith("file://") else uri
    return Path(path).expanduser().resolve()


def normalize(uri: str) -> str:
    """s3://bucket/prefix without a trailing slash, or an absolute local path."""
    uri = str(uri)
    return uri.rstrip("/") if is_s3(uri) else str(local_path(uri))


def join(uri: str, *parts: str) -> str:
    uri = normalize(uri)
    if is_s3(uri):
        return "/".join([uri, *(p.strip("/") for p in parts)])
    return str(Path(uri).joinpath(*parts))


def split_s3(uri: str) -> tuple[str, str]:
    """s3://bucket/key → (bucket, key)."""
    if not is_s3(uri):
        raise ValueError(f"not an s3:// URI: {uri!r}")
    bucket, _, key = uri.removeprefix("s3://").partition("/")
    if not bucket:
        raise ValueError(f"no bucket in {uri!r}: expected s3://bucket/key or s3://bucket/prefix/")
    return bucket, key


# ============================================================================ S3 clients
def s3_client():
    """A boto3 S3 client from the standard AWS environment (boto3 reads AWS_ENDPOINT_URL[_S3])."""
    import boto3
    from botocore.config import Config

    style = os.environ.get(ADDRESSING_STYLE_ENV) or "auto"
    if style not in ("auto", "path", "virtual"):
        raise ValueError(f"{ADDRESSING_STYLE_ENV} must be auto, path or virtual, got {style!r}")
    # A fresh session per call: boto3's default session is not thread-safe, and trials may fetch
    # from several threads. Retries: "standard" mode backs off on throttling and 5xx.
    return boto3.session.Session().client(
        "s3", config=Config(s3={"addressing_style": style}, retries={"max_attempts": 5, "mode": "standard"})
    )


def s3_endpoint() -> str | None:
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")


def pyarrow_filesystem(uri: str):
    """(filesystem, path) for Ray Tune/Train's ``storage_filesystem``/``storage_path``.

    pyarrow ignores AWS_ENDPOINT_URL, so the endpoint is passed explicitly (MinIO, Ceph, moto);
    local URIs return (None, absolute path) and Ray uses its local filesystem."""
    uri = normalize(uri)
    if not is_s3(uri):
        return None, uri
    from urllib.parse import urlparse


    options: dict[str, Any] = {}
    endpoint = s3_endpoint()
    if endpoint:
        parsed = urlparse(endpoint)
        options["endpoint_override"] = parsed.netloc or parsed.path
        options["scheme"] = parsed.scheme or "https"
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    if region:
        options["region"] = region
    if (os.environ.get(ADDRESSING_STYLE_ENV) or "auto") == "virtual":
        options["force_virtual_addressing"] = True
    return _retrying_s3_filesystem(options), uri.removeprefix("s3://")


S3_ATTEMPTS = 10  # pyarrow's standard strategy backs off up to 20 s apart: ~75 s of outage ridden out


def _retrying_s3_filesystem(options: dict):
    """A pyarrow S3FileSystem that retries connection errors and 5xx with capped exponential
    backoff, also after pickling: Ray ships the filesystem to every trial, and pyarrow's own
    pickling drops the retry strategy (its default gives up within a second, so a short storage
    outage would fail every checkpoint being uploaded)."""
    import pyarrow.fs

    class RetryingS3FileSystem(pyarrow.fs.S3FileSystem):
        def __init__(self, **kwargs):
            super().__init__(**kwargs, retry_strategy=pyarrow.fs.AwsStandardS3RetryStrategy(max_attempts=S3_ATTEMPTS))
            self.options = kwargs

        def __reduce__(self):
            return _retrying_s3_filesystem, (self.options,)

    return RetryingS3FileSystem(**options)


# ============================================================================ objects
def _s3_error(err: Exception, uri: str) -> StorageError:
    where = s3_endpoint() or "AWS"
    return StorageError(f"cannot reach {uri} (endpoint {where}): {err}. Check AWS_ENDPOINT_URL and the credentials.")


def _is_missing(err: Exception) -> bool:
    code = getattr(err, "response", {}).get("Error", {}).get("Code")
    return code in ("404", "NoSuchKey", "NotFound")


def read_bytes(uri: str) -> bytes:
    """The object's bytes; FileNotFoundError when there is none."""
    if not is_s3(uri):
        return local_path(uri).read_bytes()
    from botocore.exceptions import BotoCoreError, ClientError

    bucket, key = split_s3(uri)
    try:
        return s3_client().get_object(Bucket=bucket, Key=key)["Body"].read()
    except ClientError as err:
        if _is_missing(err):
            raise FileNotFoundError(uri) from None
        raise _s3_error(err, uri) from err
    except BotoCoreError as err:
        raise _s3_error(err, uri) from err


def read_text(uri: str) -> str:
    return read_bytes(uri).decode()


def read_json(uri: str | Path) -> Any:
    return json.loads(read_bytes(str(uri)))


def read_json_if_exists(uri: str) -> Any | None:
    try:
        return read_json(uri)
    except FileNotFoundError:
        return None


def file_exists(uri: str) -> bool:
    """Whether one file/object is there: a single HEAD on S3 (``exists`` also counts a prefix as a
    directory, which costs a LIST when the object is absent)."""
    if not is_s3(uri):
        return local_path(uri).is_file()
    from botocore.exceptions import BotoCoreError, ClientError

    bucket, key = split_s3(uri)
    try:
        s3_client().head_object(Bucket=bucket, Key=key)
        return True
    except ClientError as err:
        if _is_missing(err):
            return False
        raise _s3_error(err, uri) from err
    except BotoCoreError as err:
        raise _s3_error(err, uri) from err


def exists(uri: str) -> bool:
    if not is_s3(uri):
        return local_path(uri).exists()
    from botocore.exceptions import BotoCoreError, ClientError

    bucket, key = split_s3(uri)
    client = s3_client()
    try:
        client.head_object(Bucket=bucket, Key=key)
        return True
    except ClientError as err:
        if not _is_missing(err):
            raise _s3_error(err, uri) from err
    except BotoCoreError as err:
        raise _s3_error(err, uri) from err
    # A "directory": any object under key/
    listing = client.list_objects_v2(Bucket=bucket, Prefix=key.rstrip("/") + "/", MaxKeys=1)
    return listing.get("KeyCount", 0) > 0


def write_bytes_atomic(uri: str | Path, data: bytes) -> None:
    """Locally write-then-rename; on S3 one PUT. Either way a reader never sees half a file."""
    uri = str(uri)
    WRITES["writes"] += 1
    WRITES["bytes"] += len(data)
    if is_s3(uri):
        from botocore.exceptions import BotoCoreError, ClientError

        bucket, key = split_s3(uri)
        try:
            s3_client().put_object(Bucket=bucket, Key=key, Body=data)
        except (ClientError, BotoCoreError) as err:
            raise _s3_error(err, uri) from err
        return
    path = local_path(uri)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as err:
        raise local_error(err, uri) from err
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; results are meant to be shared
        os.replace(tmp, path)
    except BaseException as err:
        Path(tmp).unlink(missing_ok=True)  # a failed write leaves the previous version whole
        if isinstance(err, OSError):
            raise local_error(err, uri) from err
        raise


@contextlib.contextmanager
def staged_directory(out: Path):
    """A temporary sibling of the local directory ``out`` to fill, renamed into place only when the
    block ends without an error: a failed pull or export leaves nothing half-written (``out`` may
    already exist if it is empty)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".part"))
    try:
        yield staging
        if out.exists():
            out.rmdir()
        staging.rename(out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def create_exclusive(uri: str, data: bytes) -> bool:
    """Create the object only if nothing is there yet; False when it already exists. The one
    conditional write the driver lock needs: exactly one of two racing creators gets True.
    S3: ``PutObject`` with ``If-None-Match: *`` (AWS, MinIO and moto ≥ 5 honour it: 412 when the
    key exists); locally ``O_CREAT | O_EXCL`` of a temporary name, then a hard link to the final
    name, which fails if the name exists, so a reader never sees a half-written file either."""
    WRITES["writes"] += 1
    WRITES["bytes"] += len(data)
    if is_s3(uri):
        from botocore.exceptions import BotoCoreError, ClientError

        bucket, key = split_s3(uri)
        try:
            s3_client().put_object(Bucket=bucket, Key=key, Body=data, IfNoneMatch="*")
            return True
        except ClientError as err:
            code = err.response.get("Error", {}).get("Code")
            if code in ("PreconditionFailed", "412", "ConditionalRequestConflict"):
                return False
            raise _s3_error(err, uri) from err
        except BotoCoreError as err:
            raise _s3_error(err, uri) from err
    path = local_path(uri)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.link(tmp, path)  # atomic, and refuses an existing name (as O_EXCL does)
            return True
        except FileExistsError:
            return False
        finally:
            Path(tmp).unlink(missing_ok=True)
    except OSError as err:
        raise local_error(err, uri) from err


def local_error(err: OSError, uri: str) -> StorageError:
    """A local write that failed: a full disk or quota says so (nothing retrying fixes)."""
    if err.errno in (errno.ENOSPC, errno.EDQUOT):
        return StorageFull(f"storage full writing {uri}: {err.strerror} (free space on that disk, or "
                           f"use another --set storage.uri=...)")
    return StorageError(f"cannot write {uri}: {err}")


def write_text_atomic(uri: str | Path, text: str) -> None:
    write_bytes_atomic(uri, text.encode())


def write_json_atomic(uri: str | Path, data: Any) -> None:
    write_text_atomic(uri, json.dumps(data, indent=2, sort_keys=False) + "\n")


def list_files(uri: str) -> list[str]:
    """Relative paths of every file under the directory/prefix ``uri`` (sorted)."""
    uri = normalize(uri)
    if not is_s3(uri):
        root = local_path(uri)
        return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())
    bucket, key = split_s3(uri)
    prefix = key + "/" if key else ""
    names = []
    for page in s3_client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        # keys ending in "/" are directory markers (pyarrow writes them), not files
        names += [obj["Key"][len(prefix):] for obj in page.get("Contents", []) if not obj["Key"].endswith("/")]
    return sorted(names)


def list_dirs(uri: str) -> list[str]:
    """Names of the directories (S3: common prefixes) right under ``uri``, sorted: one listing,
    not a walk of everything below (a storage root holds every sweep's checkpoints)."""
    uri = normalize(uri)
    if not is_s3(uri):
        root = local_path(uri)
        try:
            return sorted(p.name for p in root.iterdir() if p.is_dir() and not p.is_symlink())
        except FileNotFoundError:
            return []
        except OSError as err:
            raise StorageError(f"cannot list {uri}: {err}") from err
    from botocore.exceptions import BotoCoreError, ClientError

    bucket, key = split_s3(uri)
    prefix = key + "/" if key else ""
    names = []
    try:
        for page in s3_client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix, Delimiter="/"):
            names += [p["Prefix"][len(prefix):].rstrip("/") for p in page.get("CommonPrefixes", [])]
    except (ClientError, BotoCoreError) as err:
        raise _s3_error(err, uri) from err
    return sorted(names)


def delete_file(uri: str) -> None:
    """Delete one file/object (nothing there: nothing to do)."""
    if not is_s3(uri):
        try:
            local_path(uri).unlink(missing_ok=True)
        except OSError as err:
            raise StorageError(f"cannot delete {uri}: {err}") from err
        return
    from botocore.exceptions import BotoCoreError, ClientError

    bucket, key = split_s3(uri)
    try:
        s3_client().delete_object(Bucket=bucket, Key=key)
    except (ClientError, BotoCoreError) as err:
        raise _s3_error(err, uri) from err


def delete_tree(uri: str) -> None:
    """Delete the directory/prefix ``uri`` and everything under it (nothing there: nothing to do)."""
    uri = normalize(uri)
    if not is_s3(uri):
        import shutil

        try:
            shutil.rmtree(local_path(uri))
        except FileNotFoundError:
            pass
        except OSError as err:
            raise StorageError(f"cannot delete {uri}: {err}") from err
        return
    from botocore.exceptions import BotoCoreError, ClientError

    bucket, key = split_s3(uri)
    client = s3_client()
    try:
        keys = [obj["Key"] for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=key + "/")
                for obj in page.get("Contents", [])]
        for start in range(0, len(keys), 1000):  # S3's limit per DeleteObjects
            client.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": k} for k in keys[start:start + 1000]]})
    except (ClientError, BotoCoreError) as err:
        raise _s3_error(err, uri) from err


def download_dir(uri: str, target: Path) -> list[Path]:
    """Copy every file under ``uri`` into ``target`` (created); returns the local files."""
    target = Path(target)
    files = []
    for name in list_files(uri):
        dest = target / name
        dest.parent.mkdir(parents=True, exist_ok=True)
        if is_s3(uri):
            bucket, key = split_s3(join(uri, name))
            s3_client().download_file(bucket, key, str(dest))
        else:
            dest.write_bytes((local_path(uri) / name).read_bytes())
        files.append(dest)
    return files


def file_sizes(uri: str) -> dict[str, int]:
    """Size in bytes of every file right under or below the directory/prefix ``uri``, by relative
    path (one LIST on S3: the sizes come with it). Nothing there: {}."""
    uri = normalize(uri)
    if not is_s3(uri):
        root = local_path(uri)
        if not root.is_dir():
            return {}
        return {str(p.relative_to(root)): p.stat().st_size for p in sorted(root.rglob("*")) if p.is_file()}
    from botocore.exceptions import BotoCoreError, ClientError

    bucket, key = split_s3(uri)
    prefix = key + "/" if key else ""
    sizes = {}
    try:
        for page in s3_client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            sizes.update({obj["Key"][len(prefix):]: obj["Size"] for obj in page.get("Contents", [])
                          if not obj["Key"].endswith("/")})
    except (ClientError, BotoCoreError) as err:
        raise _s3_error(err, uri) from err
    return sizes


def iter_chunks(uri: str, chunk_bytes: int = 1 << 20):
    """The object's bytes in chunks of at most ``chunk_bytes``, read as they are consumed, so a
    large file (a checkpoint) is never held whole; FileNotFoundError when there is none."""
    if not is_s3(uri):
        with open(local_path(uri), "rb") as f:
            yield from iter(lambda: f.read(chunk_bytes), b"")
        return
    from botocore.exceptions import BotoCoreError, ClientError

    bucket, key = split_s3(uri)
    try:
        body = s3_client().get_object(Bucket=bucket, Key=key)["Body"]
        yield from body.iter_chunks(chunk_bytes)
    except ClientError as err:
        if _is_missing(err):
            raise FileNotFoundError(uri) from None
        raise _s3_error(err, uri) from err
    except BotoCoreError as err:
        raise _s3_error(err, uri) from err


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a local file, read 1 MiB at a time (archives and checkpoints are large)."""
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
