"""Document storage: signed agreement PDFs (and any other file an email carries), kept by key.

Two backends behind one small interface, chosen by ``PAYLINK_DOCUMENT_STORE``:

- ``database`` (the default): rows of ``stored_document``, written in the caller's
  transaction, so a document and the rows that point at it commit or roll back together,
  and every web and worker machine sees it.
- ``files``: one file per key under ``<instance>/documents/``. A file is written at once
  (atomically, by rename), not at commit; keys are content-addressed, so a transaction that
  rolls back leaves at most an unreferenced file that a retry writes again, byte for byte.
  Every machine must see the same folder (one machine, or a shared volume).

Documents are immutable: putting different content under an existing key is refused.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from sqlalchemy.orm import Session

from app.config import Config
from app.db import Database
from signing.models import StoredDocument

# Lowercase path segments that start with a letter or digit: no "..", no absolute paths.
KEY = re.compile(r"[a-z0-9][a-z0-9._-]*(/[a-z0-9][a-z0-9._-]*)*")
MAX_KEY_LENGTH = 200


class DocumentNotFound(LookupError):
    """No document is stored under the key."""


class DocumentConflict(Exception):
    """Different content is already stored under the key."""


def sha256_hex(content: bytes) -> str:
    return hashlib.sha256(content).hexdigest()


def check_key(key: str) -> str:
    if not isinstance(key, str) or len(key) > MAX_KEY_LENGTH or not KEY.fullmatch(key):
        raise ValueError(f"not a document key: {key!r}")
    return key


class DocumentStore(Protocol):
    def put(self, key: str, content: bytes, content_type: str) -> str:
        """Store ``content`` under ``key``; returns its SHA-256 (hex). Storing the same
        content again is a no-op; different content raises DocumentConflict."""
        ...

    def get(self, key: str) -> bytes:
        """The content stored under ``key``; DocumentNotFound if there is none."""
        ...


class DatabaseStore:
    """Documents as ``stored_document`` rows in the session's transaction (flushes)."""

    def __init__(self, session: Session):
        self.session = session

    def put(self, key: str, content: bytes, content_type: str) -> str:
        digest = sha256_hex(content)
        existing = self.session.get(StoredDocument, check_key(key))
        if existing is not None:
            if existing.sha256 != digest:
                raise DocumentConflict(f"{key} is already stored with other content")
            return digest
        self.session.add(
            StoredDocument(key=key, content_type=content_type, content=content, sha256=digest)
        )
        self.session.flush()
        return digest

    def get(self, key: str) -> bytes:
        row = self.session.get(StoredDocument, check_key(key))
        if row is None:
            raise DocumentNotFound(key)
        return bytes(row.content)


class FileStore:
    """Documents as files under ``root`` (created on first write)."""

    def __init__(self, root: Path | str):
        self.root = Path(root)

    def path(self, key: str) -> Path:
        return self.root.joinpath(*check_key(key).split("/"))

    def put(self, key: str, content: bytes, content_type: str) -> str:
        digest = sha256_hex(content)
        target = self.path(key)
        if target.exists():
            if sha256_hex(target.read_bytes()) != digest:
                raise DocumentConflict(f"{key} is already stored with other content")
            return digest
        target.parent.mkdir(parents=True, exist_ok=True)
        # Write beside the target and rename: a reader never sees half a document.
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".tmp-", suffix=target.suffix)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(content)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return digest

    def get(self, key: str) -> bytes:
        try:
            return self.path(key).read_bytes()
        except FileNotFoundError:
            raise DocumentNotFound(key) from None


def files_root(config: Config) -> Path:
    return Path(config.instance_path) / "documents"


def store_for(config: Config, session: Session) -> DocumentStore:
    """The configured store; the database one works in ``session``'s transaction."""
    if config.document_store == "files":
        return FileStore(files_root(config))
    return DatabaseStore(session)


def loader(config: Config, db: Database) -> Callable[[str], bytes]:
    """A function that reads a document by key in a short transaction of its own: what
    the email dispatcher and the development outbox use to load attachments."""

    def load(key: str) -> bytes:
        if config.document_store == "files":
            return FileStore(files_root(config)).get(key)
        with db.transaction() as session:
            return DatabaseStore(session).get(key)

    return load
