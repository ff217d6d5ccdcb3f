"""Checkpoints: the chain heads at a moment, signed, hash-linked, kept outside the database.

A checkpoint line (JSON, one per line of ``SHOPVAULT_AUDIT_CHECKPOINT_FILE``) carries the heads
that changed since the previous line, the previous line's hash, its own hash and a signature
(HMAC under a key derived from the index key). Lines are appended under an exclusive ``flock``,
each linked to the last line read under that lock; the same line is also kept in the database
(``audit_checkpoint``). Folding the lines gives, per chain, the newest head anyone attested: the
database must still reach it, with the same hash.

``kind`` is ``append`` for the periodic checkpoint written by a process that appends events, and
``verify`` for the one written after a verification passed: incremental verification starts from
the heads as they stood at the last ``verify`` line. ``prune`` lines carry **anchors**: when
``shopvault purge`` deletes a chain's oldest events (a whole prefix, past their retention), it
first signs here, per chain, the first kept event's ``seq`` and ``prev_hash``; verification starts
the chain from that anchor, so the pruned prefix is not reported as missing — and nothing but a
signed anchor can make a missing prefix acceptable.
"""

from __future__ import annotations

import fcntl
import hashlib
import hmac
import json
import logging
import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from app.audit.chain import GENESIS_HASH, AuditKeys

log = logging.getLogger("shopvault.audit.checkpoints")

FORMAT_VERSION = 1
APPEND, VERIFY, PRUNE = "append", "verify", "prune"

Head = tuple[int, str]  # (seq, hash)


def _timestamp(at: datetime) -> str:
    return at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass(frozen=True, slots=True)
class Checkpoint:
    n: int
    at: str
    kind: str
    prev: str
    heads: dict[str, Head]
    hash: str
    sig: str
    # Per chain: (first kept seq, its prev_hash) after a prune.
    anchors: dict[str, Head] = field(default_factory=dict)

    def line(self) -> str:
        return json.dumps(
            {
                **_body(self.n, self.at, self.kind, self.prev, self.heads, self.anchors),
                "hash": self.hash,
                "sig": self.sig,
            },
            sort_keys=True,
            separators=(",", ":"),
        )

    @property
    def at_datetime(self) -> datetime:
        return datetime.strptime(self.at, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)


def _body(
    n: int,
    at: str,
    kind: str,
    prev: str,
    heads: dict[str, Head],
    anchors: dict[str, Head] | None = None,
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "v": FORMAT_VERSION,
        "n": n,
        "at": at,
        "kind": kind,
        "prev": prev,
        "heads": {chain: [seq, digest] for chain, (seq, digest) in sorted(heads.items())},
    }
    if anchors:  # only prune lines have the key: the other lines hash as before
        body["anchors"] = {c: [seq, digest] for c, (seq, digest) in sorted(anchors.items())}
    return body


def _hash_body(body: dict[str, Any]) -> str:
    encoded = json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(encoded).hexdigest()


def make_checkpoint(
    keys: AuditKeys,
    *,
    previous: Checkpoint | None,
    at: datetime,
    kind: str,
    heads: dict[str, Head],
    anchors: dict[str, Head] | None = None,
) -> Checkpoint:
    n = previous.n + 1 if previous else 1
    prev = previous.hash if previous else GENESIS_HASH
    stamp = _timestamp(at)
    digest = _hash_body(_body(n, stamp, kind, prev, heads, anchors))
    return Checkpoint(
        n,
        stamp,
        kind,
        prev,
        dict(heads),
        digest,
        keys.checkpoint_signature(digest),
        dict(anchors or {}),
    )


def parse_line(keys: AuditKeys, line: str) -> Checkpoint | None:
    """The checkpoint on this line, or None if it is not one we signed (never trusted)."""
    try:
        data = json.loads(line)
        heads = {str(c): (int(h[0]), str(h[1])) for c, h in dict(data["heads"]).items()}
        anchors = {str(c): (int(a[0]), str(a[1])) for c, a in dict(data.get("anchors", {})).items()}
        checkpoint = Checkpoint(
            n=int(data["n"]),
            at=str(data["at"]),
            kind=str(data["kind"]),
            prev=str(data["prev"]),
            heads=heads,
            hash=str(data["hash"]),
            sig=str(data["sig"]),
            anchors=anchors,
        )
        if int(data["v"]) != FORMAT_VERSION:
            return None
    except (ValueError, KeyError, TypeError, IndexError):
        return None
    body = _body(checkpoint.n, checkpoint.at, checkpoint.kind, checkpoint.prev, heads, anchors)
    if _hash_body(body) != checkpoint.hash:
        return None
    if not hmac.compare_digest(keys.checkpoint_signature(checkpoint.hash), checkpoint.sig):
        return None
    return checkpoint


@dataclass
class Fold:
    """What a sequence of checkpoints says: per chain, the newest head attested (``heads``) and
    the heads as they stood at the last passing verification (``verified``)."""

    heads: dict[str, Head] = field(default_factory=dict)
    verified: dict[str, Head] = field(default_factory=dict)
    last: Checkpoint | None = None
    seen: set[str] = field(default_factory=set)
    # Per chain: where it starts after pruning (first kept seq, its prev_hash).
    anchors: dict[str, Head] = field(default_factory=dict)

    def add(self, checkpoint: Checkpoint) -> None:
        if checkpoint.hash in self.seen:
            return
        self.seen.add(checkpoint.hash)
        for chain, head in checkpoint.heads.items():
            known = self.heads.get(chain)
            if known is None or head[0] > known[0]:
                self.heads[chain] = head
        _add_anchors(self.anchors, checkpoint)
        if checkpoint.kind == VERIFY:
            # A verify line vouches for every head attested up to it.
            self.verified = dict(self.heads)
        if self.last is None or checkpoint.n >= self.last.n:
            self.last = checkpoint

    def copy(self) -> Fold:
        return Fold(
            dict(self.heads), dict(self.verified), self.last, set(self.seen), dict(self.anchors)
        )


def _add_anchors(anchors: dict[str, Head], checkpoint: Checkpoint) -> None:
    for chain, anchor in checkpoint.anchors.items():
        known = anchors.get(chain)
        if known is None or anchor[0] > known[0]:
            anchors[chain] = anchor


class CheckpointFile:
    """The append-only file outside the database. Reads are incremental: this process remembers
    how far it has read (and starts again if the file was replaced or shortened)."""

    def __init__(self, path: Path, keys: AuditKeys) -> None:
        self.path = path
        self._keys = keys
        self._identity: tuple[int, int] | None = None
        self._offset = 0
        self._fold = Fold()
        # The last line read in this file (what the next line links to).
        self._last: Checkpoint | None = None

    def _catch_up(self, handle: IO[bytes]) -> None:
        stat = os.fstat(handle.fileno())
        identity = (stat.st_dev, stat.st_ino)
        if identity != self._identity or stat.st_size < self._offset:
            self._identity, self._offset, self._fold, self._last = identity, 0, Fold(), None
        handle.seek(self._offset)
        data = handle.read()
        end = data.rfind(b"\n") + 1  # only whole lines; a torn last line is read next time
        for raw in data[:end].splitlines():
            text = raw.decode("utf-8", errors="replace").strip()
            if not text:
                continue
            checkpoint = parse_line(self._keys, text)
            if checkpoint is None:
                log.error(
                    "checkpoint file line is not a valid checkpoint", extra={"offset": self._offset}
                )
                continue
            self._fold.add(checkpoint)
            self._last = checkpoint
        self._offset += end

    def _open(self) -> IO[bytes]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o600)
        return os.fdopen(fd, "r+b")

    def read(self) -> Fold:
        """The file's checkpoints so far (under a shared lock)."""
        if not self.path.exists():
            return Fold()
        with self._open() as handle:
            fcntl.flock(handle.fileno(), fcntl.LOCK_SH)
            try:
                self._catch_up(handle)
                return self._fold.copy()
            finally:
                fcntl.flock(handle.fileno(), fcntl.LOCK_UN)

    @contextmanager
    def locked(self, *, wait: bool = True) -> Iterator[LockedFile | None]:
        """The file under an exclusive lock (None if ``wait`` is false and it is taken)."""
        with self._open() as handle:
            flags = fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB)
            try:
                fcntl.flock(handle.fileno(), flags)
            except BlockingIOError:
                yield None
                return
            try:
                self._catch_up(handle)
                yield LockedFile(self, handle)
            finally:
                fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


class LockedFile:
    def __init__(self, owner: CheckpointFile, handle: IO[bytes]) -> None:
        self._owner = owner
        self._handle = handle

    @property
    def fold(self) -> Fold:
        return self._owner._fold.copy()

    @property
    def last(self) -> Checkpoint | None:
        return self._owner._last

    def append(self, checkpoint: Checkpoint) -> None:
        assert checkpoint.prev == (self.last.hash if self.last else GENESIS_HASH)
        data = (checkpoint.line() + "\n").encode()
        self._handle.write(data)
        self._handle.flush()
        os.fsync(self._handle.fileno())
        owner = self._owner
        owner._offset += len(data)
        owner._fold.add(checkpoint)
        owner._last = checkpoint


def fold_lines(keys: AuditKeys, lines: Iterable[str], into: Fold) -> Fold:
    """Add the heads of the valid checkpoints among ``lines`` (the database's copies) to a fold.

    They can only raise the bar (a newer head the database must still reach); only the file's
    own lines say where the last verification stood."""
    merged = into.copy()
    for checkpoint in (parse_line(keys, line) for line in lines):
        if checkpoint is None or checkpoint.hash in merged.seen:
            continue
        merged.seen.add(checkpoint.hash)
        for chain, head in checkpoint.heads.items():
            known = merged.heads.get(chain)
            if known is None or head[0] > known[0]:
                merged.heads[chain] = head
        # Signed, so a copy in the database can only be a genuine anchor.
        _add_anchors(merged.anchors, checkpoint)
    return merged
