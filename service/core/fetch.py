"""s3:// datasets and weights, fetched once per node into a local cache (``fetch_to_cache``).

Torch-free: objects are copied under an exclusive ``flock``, so the trials of one node download
once, and a file pinned by ``sha256`` is checked before it is used.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

from service.core import storage

log = logging.getLogger(__name__)

# Where s3:// data is cached on each node (one copy shared by every trial on the node).
CACHE_ENV = "SWEEP_DATA_CACHE"
DEFAULT_CACHE = "~/.cache/sweep-service/data"


def fetch_to_cache(uri: str, sha256: str | None = None) -> Path:
    """A local path holding ``uri``: s3:// objects are fetched once per node into the cache.

    * plain paths and ``file://PATH`` come back unchanged (as a ``Path``), nothing is copied;
    * ``s3://bucket/key``: one object, cached as the file ``<cache>/s3/bucket/key``;
    * ``s3://bucket/prefix/`` (or a key that is no object but has objects under ``key/``): every
      object under the prefix, cached as the directory ``<cache>/s3/bucket/prefix``.

    The cache is ``$SWEEP_DATA_CACHE`` (default ``~/.cache/sweep-service/data``) and is keyed by
    bucket and key only: objects are assumed immutable (pin them with ``sha256``; delete the cached
    copy to fetch a changed object). A fetch holds an exclusive ``flock`` on ``<target>.lock``, so
    concurrent trials on one node download once while the others wait; it downloads to a temporary
    name next to the target and renames it into place, so a crash never leaves a partial target.

    ``sha256`` (64 lowercase hex digits) is checked for files: a local file or cached copy that does
    not match raises ``ValueError``; a fresh download that does not match is deleted, then raises.
    A cached copy that does not match is treated as stale and fetched again. The S3 client uses
    the standard AWS environment (AWS_ENDPOINT_URL[_S3], AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY,
    AWS_DEFAULT_REGION) plus ``SWEEP_S3_ADDRESSING_STYLE`` (auto | path | virtual).
    """
    scheme, sep, rest = uri.partition("://")
    if not sep or scheme == "file":
        local = Path(rest if sep else uri).expanduser()
        if sha256 is not None:
            _check_sha256(local, sha256, uri)
        return local
    if scheme != "s3":
        raise ValueError(f"unsupported data URI scheme {scheme!r} in {uri!r}: use a local path, file:// or s3://")

    bucket, key = _parse_s3(uri)
    is_prefix = key == "" or key.endswith("/")
    if is_prefix and sha256 is not None:
        raise ValueError(f"sha256 checks one file, but {uri} is a prefix (a directory): drop sha256")
    target = cache_location(uri)
    if _cached(target, sha256, uri):  # the common case: no lock, no network
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with exclusive_lock(target.with_name(target.name + ".lock")):
        if _cached(target, sha256, uri):  # another trial fetched it while we waited for the lock
            return target
        if target.exists():  # a cached file whose sha256 does not match: stale, fetch it again
            log.warning("cached %s does not match sha256 %s; fetching %s again", target, sha256, uri)
            target.unlink()
        _download_s3(bucket, key, target, sha256, uri, is_prefix)
    return target


def cache_location(uri: str) -> Path:
    """Where ``fetch_to_cache`` keeps the copy of ``s3://bucket/key``: ``<cache>/s3/bucket/key``."""
    bucket, key = _parse_s3(uri)
    root = Path(os.environ.get(CACHE_ENV) or DEFAULT_CACHE).expanduser()
    return root.joinpath("s3", bucket, *_safe_parts(key, uri))


def _parse_s3(uri: str) -> tuple[str, str]:
    return storage.split_s3(uri)


def _safe_parts(key: str, uri: str) -> list[str]:
    """The path components of an object key, refusing any that would escape the cache directory."""
    parts = [p for p in key.split("/") if p]
    if any(p in (".", "..") for p in parts):
        raise ValueError(f"refusing S3 key with '.' or '..' components: {key!r} (from {uri})")
    return parts


def _cached(target: Path, sha256: str | None, uri: str) -> bool:
    """A complete copy is there (renames are atomic) and, for a pinned file, its sha256 matches."""
    if not target.exists():
        return False
    if sha256 is None:
        return True
    if target.is_dir():
        raise ValueError(f"sha256 checks one file, but {uri} is cached as a directory ({target})")
    return storage.sha256_file(target) == sha256


@contextlib.contextmanager
def exclusive_lock(lock_path: Path) -> Iterator[None]:
    """An exclusive flock, held until the block ends (released by the kernel if we crash).

    Each call opens the lock file anew, so it excludes other threads of this process as well as
    other processes. The lock file stays: deleting it would let a waiter lock a stale inode.
    """
    with open(lock_path, "a") as lock_file:
        fcntl.flock(lock_file, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock_file, fcntl.LOCK_UN)


def _s3_client():
    return storage.s3_client()  # the AWS environment + SWEEP_S3_ADDRESSING_STYLE


def _download_s3(bucket: str, key: str, target: Path, sha256: str | None, uri: str, is_prefix: bool) -> None:
    """Copy the object (or every object under the prefix) to a temporary name, then rename it to ``target``."""
    from botocore.exceptions import ClientError

    client = _s3_client()
    if not is_prefix:
        try:
            client.head_object(Bucket=bucket, Key=key)
            is_object = True
        except ClientError as err:
            if err.response.get("Error", {}).get("Code") not in ("404", "NoSuchKey"):
                raise
            is_object = False
        if is_object:
            log.info("downloading %s to %s", uri, target)
            fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
            os.close(fd)
            try:
                client.download_file(bucket, key, tmp)
                if sha256 is not None:
                    _check_sha256(Path(tmp), sha256, uri)  # raises; `finally` deletes the bad copy
                os.replace(tmp, target)
            finally:
                Path(tmp).unlink(missing_ok=True)
            return
        if sha256 is not None:
            raise FileNotFoundError(f"no object {uri} (sha256 needs a single file)")

    # A "directory": every object under the prefix, with its path below the prefix.
    prefix = key if is_prefix else key + "/"
    try:
        pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        keys = [obj["Key"] for page in pages for obj in page.get("Contents", [])]
    except ClientError as err:
        if err.response.get("Error", {}).get("Code") == "NoSuchBucket":
            raise FileNotFoundError(f"bucket {bucket!r} does not exist (data path {uri})") from err
        raise
    keys = [k for k in keys if not k.endswith("/")]  # "folder" placeholder objects hold no data
    if not keys:
        raise FileNotFoundError(f"no object {uri} and no objects under s3://{bucket}/{prefix}")
    log.info("downloading %d objects under s3://%s/%s to %s", len(keys), bucket, prefix, target)
    tmp_dir = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part"))
    try:
        for object_key in keys:
            dest = tmp_dir.joinpath(*_safe_parts(object_key[len(prefix) :], uri))
            dest.parent.mkdir(parents=True, exist_ok=True)
            client.download_file(bucket, object_key, str(dest))
        os.rename(tmp_dir, target)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)  # gone already after a successful rename


def _check_sha256(path: Path, expected: str, uri: str) -> None:
    if not path.is_file():
        what = "is a directory" if path.is_dir() else "does not exist"
        raise ValueError(f"cannot check sha256 of {uri}: {path} {what} (sha256 pins a single file)")
    actual = storage.sha256_file(path)
    if actual != expected:
        raise ValueError(f"sha256 mismatch for {uri}: expected {expected}, got {actual}")
