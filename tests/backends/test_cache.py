"""The compiled-module cache: content keys, atomic entries, one compile under contention."""

from __future__ import annotations

import threading
import time

import pytest

from model_impl.backends import cache


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MODEL_IMPL_CACHE", str(tmp_path))


def test_parallel_requests_compile_once_and_all_read_the_whole_entry():
    calls = []

    def produce():
        calls.append(1)
        time.sleep(0.2)
        return b"x" * 1_000_000

    results = []
    threads = [
        threading.Thread(target=lambda: results.append(cache.cached_file("t", {"k": 1}, ".bin", produce)))
        for _ in range(4)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1
    assert len({p for p, _ in results}) == 1
    assert sorted(hit for _, hit in results) == [False, True, True, True]
    assert results[0][0].read_bytes() == b"x" * 1_000_000


def test_a_failed_compile_leaves_no_entry():
    def boom():
        raise RuntimeError("compiler crashed")

    with pytest.raises(RuntimeError):
        cache.cached_file("t", {"k": 2}, ".bin", boom)
    path, hit = cache.cached_file("t", {"k": 2}, ".bin", lambda: b"ok")
    assert not hit and path.read_bytes() == b"ok"
    assert not list(path.parent.glob("*.tmp"))


def test_different_keys_are_different_entries():
    a, _ = cache.cached_file("t", {"flags": ["-O2"]}, ".bin", lambda: b"a")
    b, _ = cache.cached_file("t", {"flags": ["-O3"]}, ".bin", lambda: b"b")
    assert a != b and a.read_bytes() == b"a" and b.read_bytes() == b"b"
