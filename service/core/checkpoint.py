"""The checkpoint format: what a trial checkpoint directory holds, and how it is verified.

    <checkpoint>/state.pt          torch.save of model/optimizer/scaler state, input shape, class names, epoch
    <checkpoint>/spec.json         the trial's concrete spec: enough to rebuild the model
    <checkpoint>/checkpoint.json   the manifest: epoch, that epoch's metrics, sha256 of the two files above

The trainer writes it (trainer/loop.py), ``trainer.load_model`` reads it (weights_only), and
``sweepctl pull`` / evaluation verify it against the manifest before anything uses it. Over HTTP
(the sweep service) a checkpoint travels as one tar: ``CheckpointTar`` streams it out of storage,
``extract_tar`` unpacks it. No torch here: the state file is opaque bytes to this module.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import tarfile
import time
from pathlib import Path

from service.core import storage

STATE = "state.pt"
SPEC = "spec.json"
MANIFEST = "checkpoint.json"
PAYLOAD = (STATE, SPEC)


class CheckpointError(Exception):
    """A checkpoint directory that is not one of ours, or does not match its manifest."""


def write_manifest(directory: str | Path, epoch: int, metrics: dict) -> dict:
    """Write the manifest of the payload files already in ``directory``; returns it."""
    directory = Path(directory)
    manifest = {
        "epoch": epoch,
        "metrics": {k: v for k, v in metrics.items() if isinstance(v, (int, float))},
        "sha256": {name: storage.sha256_file(directory / name) for name in PAYLOAD},
    }
    (directory / MANIFEST).write_text(json.dumps(manifest, indent=2))
    return manifest


def verify(directory: str | Path, source: str | None = None) -> dict:
    """The manifest of a local checkpoint directory, once every file matches its sha256;
    CheckpointError naming what is wrong otherwise (``source``: the URI it came from, for messages)."""
    directory = Path(directory)
    where = source or str(directory)
    manifest_path = directory / MANIFEST
    if not manifest_path.exists():
        raise CheckpointError(f"{where} has no {MANIFEST}: not a checkpoint written by this trainer")
    try:
        manifest = json.loads(manifest_path.read_text())
        digests = dict(manifest["sha256"])
    except (ValueError, KeyError, TypeError) as err:
        raise CheckpointError(f"{where}: unreadable {MANIFEST} ({err})") from None
    mismatched = [name for name, digest in digests.items()
                  if not (directory / name).exists() or storage.sha256_file(directory / name) != digest]
    if mismatched:
        raise CheckpointError(mismatch_message(mismatched, where))
    return manifest


def read_spec_json(directory: str | Path) -> str:
    return (Path(directory) / SPEC).read_text()


# ============================================================================ the checkpoint as one tar
# What GET /sweeps/{name}/trials/{id}/checkpoint streams and `sweepctl pull --server` unpacks: an
# uncompressed tar (USTAR) of the checkpoint directory, the manifest first, then the files it lists,
# smallest first (state.pt, the large one, last). Uncompressed because weights barely compress and
# a known size lets the response carry a Content-Length, so a client can tell a cut transfer.
TAR_BLOCK = 512  # bytes: tar's unit (headers, and each member's data padded up to it)
TAR_CHUNK_BYTES = 1 << 20  # bytes per storage read while streaming: what one download holds in memory
SMALL_FILE_BYTES = 1 << 20  # files up to this size are read whole and verified before anything is sent
# A member name: one plain file name (the manifest names files of one directory); never a path,
# so neither a manifest in storage nor a tar from a server can reach outside the checkpoint.
_PLAIN_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,99}")


class CheckpointMissing(CheckpointError):
    """No checkpoint at the URI (any more): retention deleted it, or it was never completed."""


def mismatch_message(names, where: str) -> str:
    """The one wording of a checksum failure, wherever it is found (``verify``, a streamed tar)."""
    return (f"checksum mismatch for {', '.join(names)} in {where}: the copy is corrupt "
            f"or the checkpoint was modified")


class CheckpointTar:
    """A checkpoint in storage (local or s3://) as one tar stream, verified as it goes.

    Opening it reads the manifest, lists the files' sizes (one LIST) and reads and verifies every
    small file, so a missing or corrupt manifest or spec is refused (CheckpointMissing,
    CheckpointError) before a byte is sent. Large files (state.pt) are hashed while they stream, in
    chunks of TAR_CHUNK_BYTES, and the last chunk of each is held back until its sha256 matched:
    on a mismatch ``chunks()`` raises instead, so the stream ends short of ``size`` and no client
    ever receives a complete tar of a corrupt checkpoint (and ``sweepctl pull`` verifies again)."""

    def __init__(self, uri: str):
        self.uri = storage.normalize(uri)
        sizes = storage.file_sizes(self.uri)
        if MANIFEST not in sizes:
            raise CheckpointMissing(f"checkpoint {self.uri} is gone or incomplete (no {MANIFEST}); retention "
                                    f"may have deleted it")
        try:
            manifest = storage.read_bytes(storage.join(self.uri, MANIFEST))
        except FileNotFoundError:
            raise CheckpointMissing(f"checkpoint {self.uri} was deleted while being read") from None
        try:
            digests = dict(json.loads(manifest)["sha256"])
        except (ValueError, KeyError, TypeError) as err:
            raise CheckpointError(f"{self.uri}: unreadable {MANIFEST} ({err})") from None
        bad_names = sorted(n for n in digests if not _PLAIN_NAME.fullmatch(str(n)) or n == MANIFEST)
        if bad_names:
            raise CheckpointError(f"{self.uri}: {MANIFEST} names {bad_names}, which are not plain file names "
                                  "of the checkpoint directory")
        absent = sorted(n for n in digests if n not in sizes)
        if absent:
            raise CheckpointError(mismatch_message(absent, self.uri))
        # (name, size, sha256 or None, the bytes when read already)
        self.members: list[tuple[str, int, str | None, bytes | None]] = [(MANIFEST, len(manifest), None, manifest)]
        for name in sorted(digests, key=lambda n: (sizes[n], n)):
            data = None
            if sizes[name] <= SMALL_FILE_BYTES:
                data = storage.read_bytes(storage.join(self.uri, name))
                if hashlib.sha256(data).hexdigest() != digests[name]:
                    raise CheckpointError(mismatch_message([name], self.uri))
            self.members.append((name, len(data) if data is not None else sizes[name], digests[name], data))
        self.mtime = int(time.time())

    @property
    def size(self) -> int:
        """Bytes of the whole stream: a header and padded data per member, then two zero blocks."""
        return sum(TAR_BLOCK + _padded(size) for _, size, _, _ in self.members) + 2 * TAR_BLOCK

    def chunks(self):
        for name, size, digest, data in self.members:
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = size, 0o644, self.mtime
            yield info.tobuf(tarfile.USTAR_FORMAT, "utf-8", "strict")
            if data is not None:
                yield data
            else:
                yield from self._verified(name, size, digest)
            if _padded(size) > size:
                yield b"\0" * (_padded(size) - size)
        yield b"\0" * (2 * TAR_BLOCK)

    def _verified(self, name: str, size: int, digest: str):
        hasher, read, held = hashlib.sha256(), 0, None
        for chunk in storage.iter_chunks(storage.join(self.uri, name), TAR_CHUNK_BYTES):
            hasher.update(chunk)
            read += len(chunk)
            if read > size:
                break
            if held is not None:
                yield held
            held = chunk
        if read != size:
            raise CheckpointError(f"{name} in {self.uri} changed while it was sent ({read} bytes, listed with {size})")
        if hasher.hexdigest() != digest:
            raise CheckpointError(mismatch_message([name], self.uri))
        if held is not None:
            yield held


def _padded(size: int) -> int:
    return -(-size // TAR_BLOCK) * TAR_BLOCK


def extract_tar(stream, directory: str | Path) -> list[str]:
    """Unpack a checkpoint tar read from ``stream`` (a file-like object, e.g. an HTTP response,
    read once, front to back) into ``directory``; returns the names written. Only plain files with
    plain names are accepted: no paths, links or devices. Raises CheckpointError for anything else,
    and tarfile/OS/HTTP errors as they come when the stream is cut; what arrived stays in
    ``directory`` (the caller verifies it, and removes it)."""
    directory = Path(directory)
    names: list[str] = []
    listed: set[str] = set()  # what the manifest (the first member) names: nothing else is taken
    with tarfile.open(fileobj=stream, mode="r|") as tar:
        for member in tar:
            expected = member.name == MANIFEST if not names else member.name in listed
            if not member.isreg() or not _PLAIN_NAME.fullmatch(member.name) or member.name in names or not expected:
                raise CheckpointError(f"unexpected tar member {member.name!r}: a checkpoint tar holds plain files only, "
                                      f"each once, {MANIFEST} first, then only the files it lists")
            names.append(member.name)
            source = tar.extractfile(member)
            with open(directory / member.name, "wb") as out:
                shutil.copyfileobj(source, out, TAR_CHUNK_BYTES)
            if member.name == MANIFEST:
                try:
                    listed = {str(n) for n in json.loads((directory / MANIFEST).read_text())["sha256"]}
                except (ValueError, KeyError, TypeError) as err:
                    raise CheckpointError(f"unreadable {MANIFEST} in the checkpoint tar ({err})") from None
    return names
