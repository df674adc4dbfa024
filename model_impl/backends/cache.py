"""An on-disk cache of compiled artifacts, keyed by what they are.

Keys are JSON-able dicts (model config, weight shapes/dtypes, graph kind, compile flags,
compiler version, a digest of the graph's source code) hashed with SHA-256. Writes are
atomic (temp file + ``os.replace``) and serialized per key by an ``flock``, so parallel
test workers (pytest-xdist) never read a half-written entry and never compile twice.

Every entry's sidecar holds the SHA-256 of its content, checked on every hit: an entry that
does not match (truncated by a partial copy, overwritten) or has no sidecar is dropped and
made again; where it cannot be made again (no compiler on this machine) :class:`CacheError`
names the file and how to clear it.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

PACKAGE_ROOT = Path(__file__).resolve().parents[1]  # model_impl/
CLEAR = "make clean-cache (or delete the file and its .json sidecar)"


class CacheError(ValueError):
    """A damaged cache entry that cannot be rebuilt here (one line: the file, the way out)."""


def cache_root() -> Path:
    root = Path(os.environ.get("MODEL_IMPL_CACHE", PACKAGE_ROOT.parent / ".cache"))
    root.mkdir(parents=True, exist_ok=True)
    return root


def digest(key: dict) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:32]


def source_digest(*modules: str) -> str:
    """Digest of the package sources that define a graph (so a code change misses the cache)."""
    h = hashlib.sha256()
    for name in modules:
        h.update((PACKAGE_ROOT / name).read_bytes())
    return h.hexdigest()[:16]


@contextlib.contextmanager
def locked(path: Path):
    """An exclusive lock on ``path``.lock for the block: one writer of an entry at a time, across processes."""
    with open(path.with_suffix(path.suffix + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def entry_path(kind: str, key: dict, suffix: str) -> Path:
    """Where the entry for ``key`` lives (whether or not it exists yet)."""
    return cache_root() / kind / f"{digest(key)}{suffix}"


def cached_file(kind: str, key: dict, suffix: str, produce: Callable[[], bytes]) -> tuple[Path, bool]:
    """Path of the entry for ``key``, made with ``produce()`` on a miss; (path, was_hit).

    ``produce`` may return ``(data, meta)``; ``meta`` (JSON-able) is kept beside the entry
    and read back with :func:`entry_meta`.
    """
    path = entry_path(kind, key, suffix)
    directory = path.parent
    directory.mkdir(parents=True, exist_ok=True)
    if intact(path):
        return path, True
    with locked(path):
        if intact(path):  # another worker made it while we waited
            return path, True
        damaged = path.exists()
        if damaged:
            drop(path)
        try:
            data, meta = _split(produce())
        except ImportError as e:  # no compiler here: the entry was carried, and it is damaged
            if not damaged:
                raise
            raise CacheError(
                f"{path}: damaged cache entry (its content does not match its sidecar's digest) and "
                f"{e.name or 'the compiler'} is not installed here to rebuild it: {CLEAR}, then carry it again"
            ) from None
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=path.name, suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        sidecar = {"key": key, "meta": meta, "sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
        (directory / f"{path.stem}.json").write_text(json.dumps(sidecar, indent=1, sort_keys=True, default=str))
    return path, False


def intact(path: Path) -> bool:
    """The entry exists and its content matches the digest its sidecar records."""
    try:
        sidecar = json.loads(path.with_suffix(".json").read_text())
        recorded = sidecar.get("sha256")
        if not recorded or path.stat().st_size != sidecar.get("bytes"):
            return False
        return file_sha256(path) == recorded
    except (OSError, json.JSONDecodeError):
        return False


def file_sha256(path: Path) -> str:
    """SHA-256 of a file's bytes, read in 16 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 24), b""):
            h.update(block)
    return h.hexdigest()


def drop(path: Path) -> None:
    """Remove an entry and its sidecar (a damaged or rejected one)."""
    for p in (path, path.with_suffix(".json")):
        with contextlib.suppress(FileNotFoundError):
            p.unlink()


def _split(produced):
    return produced if isinstance(produced, tuple) else (produced, {})


def entry_meta(path: Path) -> dict:
    """The ``meta`` stored with an entry ({} if none)."""
    try:
        return json.loads(path.with_suffix(".json").read_text()).get("meta", {})
    except (OSError, json.JSONDecodeError):
        return {}
