"""An on-disk cache of compiled artifacts, keyed by what they are.

Keys are JSON-able dicts (model config, weight shapes/dtypes, graph kind, compile flags,
compiler version, a digest of the graph's source code) hashed with SHA-256. Writes are
atomic (temp file + ``os.replace``) and serialized per key by an ``flock``, so parallel
test workers (pytest-xdist) never read a half-written entry and never compile twice.
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
def _locked(path: Path):
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
    if path.exists():
        return path, True
    with _locked(path):
        if path.exists():  # another worker made it while we waited
            return path, True
        data, meta = _split(produce())
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=path.name, suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        sidecar = {"key": key, "meta": meta}
        (directory / f"{path.stem}.json").write_text(json.dumps(sidecar, indent=1, sort_keys=True, default=str))
    return path, False


def _split(produced):
    return produced if isinstance(produced, tuple) else (produced, {})


def entry_meta(path: Path) -> dict:
    """The ``meta`` stored with an entry ({} if none)."""
    try:
        return json.loads(path.with_suffix(".json").read_text()).get("meta", {})
    except (OSError, json.JSONDecodeError):
        return {}
