"""Consent withdrawal: a party's list of data subjects who left, applied by the owner itself.

A dataset entry names the column holding its data subjects' identifiers
(``subject_id: patient_id``); the party keeps the identifiers of the subjects who withdrew
in a file it owns (``withdrawals:``, default ``<state>.withdrawals/<dataset>.txt``, one
identifier per line, UTF-8). ``jointstats consent withdraw`` appends to it; every job that
starts afterwards reads the list when it starts and leaves those rows out in the owner's
local step, before anything is aggregated (``_sources.Source.iter_chunks(exclude=...)``).
Identifiers are compared as text (an integer column's values as decimal digits).

The audit log records each withdrawal as a salted hash (HMAC-SHA256 under a random salt
kept beside the state file, ``<state>.salt``), never the identifier, and at every job the
number of withdrawals in force: the owner's log only, never sent to another party.
"""
from __future__ import annotations

import hashlib
import hmac
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterable

from jointstats.errors import ConfigError

if TYPE_CHECKING:  # pragma: no cover
    from jointstats.ledger.state import NodeState
    from jointstats.consortium.config import PartyConfig

__all__ = ["Exclusion", "load_exclusion", "withdraw", "withdrawn", "subject_hash", "node_secret",
           "consent_datasets", "MAX_ID_CHARS"]

#: Longest subject identifier accepted (characters).
MAX_ID_CHARS = 256


@dataclass(frozen=True)
class Exclusion:
    """Rows to leave out: those whose ``column`` (as text) is one of ``ids``."""

    column: str
    ids: frozenset[str]


def node_secret(config: "PartyConfig") -> bytes:
    """This node's random 32-byte secret (``<state>.salt``, created 0600 on first use): the key
    of withdrawal hashes and dataset fingerprints. It never leaves the host."""
    path = config.state.with_name(config.state.stem + ".salt")
    try:
        data = path.read_bytes()
        if len(data) == 32:
            return data
        raise ConfigError(f"party {config.party!r}: {path} is not a 32-byte node secret")
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    secret = os.urandom(32)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another process made it first
        return node_secret(config)
    with os.fdopen(fd, "wb") as fh:
        fh.write(secret)
        fh.flush()
        os.fsync(fh.fileno())
    return secret


def subject_hash(secret: bytes, dataset: str, subject: str) -> str:
    """The salted hash an audit record holds instead of a subject's identifier."""
    return hmac.new(secret, f"{dataset}\0{subject}".encode("utf-8"), hashlib.sha256).hexdigest()


def consent_datasets(config: "PartyConfig") -> list[str]:
    """The datasets of this party with a subject_id column (consent withdrawal applies)."""
    return [name for name, _ in config.datasets if config.dataset_governance(name).subject_id]


def _dataset(config: "PartyConfig", dataset: str | None) -> str:
    names = consent_datasets(config)
    if dataset is None:
        if len(names) != 1:
            raise ConfigError(f"party {config.party!r}: name the dataset with --dataset "
                              f"(datasets with subject_id: {', '.join(names) or 'none'})")
        return names[0]
    if dataset not in names:
        raise ConfigError(f"party {config.party!r}: dataset {dataset!r} has no subject_id column "
                          f"in its config (datasets with one: {', '.join(names) or 'none'})")
    return dataset


def _file(config: "PartyConfig", dataset: str) -> Path:
    path = config.dataset_governance(dataset).withdrawals
    assert path is not None  # set whenever subject_id is (config.parse_party_config)
    return path


def _check_id(subject: str) -> str:
    if not isinstance(subject, str) or not subject.strip() or len(subject) > MAX_ID_CHARS \
            or not subject.isprintable():
        raise ConfigError(f"subject identifier: expected 1-{MAX_ID_CHARS} printable characters "
                          f"(no line breaks)")
    return subject.strip()


def withdrawn(config: "PartyConfig", dataset: str | None = None) -> tuple[str, list[str]]:
    """(dataset, the identifiers withdrawn from it, in the order they were withdrawn)."""
    dataset = _dataset(config, dataset)
    path = _file(config, dataset)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return dataset, []
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"party {config.party!r}: withdrawal list {path} cannot be read "
                          f"({type(exc).__name__})") from None
    return dataset, list(dict.fromkeys(line.strip() for line in text.splitlines() if line.strip()))


def load_exclusion(config: "PartyConfig", dataset: str) -> Exclusion | None:
    """The rows a job on ``dataset`` must leave out (None: the dataset has no subject_id)."""
    meta = config.dataset_governance(dataset)
    if not meta.subject_id:
        return None
    return Exclusion(meta.subject_id, frozenset(withdrawn(config, dataset)[1]))


def withdraw(config: "PartyConfig", subjects: Iterable[str], state: "NodeState",
             dataset: str | None = None) -> tuple[str, int]:
    """Add ``subjects`` to the dataset's withdrawal list and audit each (salted hash only).

    The list is written (and flushed to disk) before the audit records, so a crash between
    the two leaves a subject excluded rather than included. Returns (dataset, number added).
    """
    import fcntl
    dataset = _dataset(config, dataset)
    ids = list(dict.fromkeys(_check_id(s) for s in subjects))
    if not ids:
        raise ConfigError("consent withdraw: give at least one subject identifier")
    path = _file(config, dataset)
    path.parent.mkdir(parents=True, exist_ok=True)
    secret = node_secret(config)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o600)
    with os.fdopen(fd, "r+", encoding="utf-8") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        fh.seek(0)
        have = {line.strip() for line in fh.read().splitlines() if line.strip()}
        new = [s for s in ids if s not in have]
        if new:
            fh.write("".join(f"{s}\n" for s in new))
            fh.flush()
            os.fsync(fh.fileno())
        in_force = len(have) + len(new)
    for s in new:
        state.audit("withdrawal", dataset=dataset, subject_hash=subject_hash(secret, dataset, s),
                    in_force=in_force)
    return dataset, len(new)
