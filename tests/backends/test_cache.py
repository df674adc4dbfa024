"""The compiled-module cache: content keys, atomic entries, one compile under contention."""

from __future__ import annotations

import threading
import time

import numpy as np
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


# --- a cache that heals ---------------------------------------------------------------------


def test_a_truncated_entry_is_detected_and_rebuilt():
    calls = []

    def produce():
        calls.append(1)
        return b"module" * 1000

    path, _ = cache.cached_file("t", {"k": 3}, ".vmfb", produce)
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])  # a partial copy
    again, hit = cache.cached_file("t", {"k": 3}, ".vmfb", produce)
    assert not hit and len(calls) == 2 and again.read_bytes() == b"module" * 1000


def test_an_entry_whose_bytes_changed_or_whose_sidecar_is_gone_is_rebuilt():
    path, _ = cache.cached_file("t", {"k": 4}, ".bin", lambda: b"abcd")
    path.write_bytes(b"abce")  # same size, other content
    assert not cache.intact(path)
    assert cache.cached_file("t", {"k": 4}, ".bin", lambda: b"abcd") == (path, False)
    path.with_suffix(".json").unlink()
    assert cache.cached_file("t", {"k": 4}, ".bin", lambda: b"abcd") == (path, False)
    assert cache.cached_file("t", {"k": 4}, ".bin", lambda: b"never") == (path, True)


def test_a_damaged_entry_without_a_compiler_is_one_error_naming_the_file_and_the_way_out():
    path, _ = cache.cached_file("t", {"k": 5}, ".vmfb", lambda: b"good module")
    path.write_bytes(b"good")

    def no_compiler():
        raise ModuleNotFoundError("No module named 'iree.compiler'", name="iree.compiler")

    with pytest.raises(cache.CacheError) as e:
        cache.cached_file("t", {"k": 5}, ".vmfb", no_compiler)
    message = str(e.value)
    assert str(path) in message and "make clean-cache" in message and "iree.compiler" in message
    assert "\n" not in message


def _heal_in_a_process(root, queue):
    import os

    os.environ["MODEL_IMPL_CACHE"] = root
    from model_impl.backends import cache as c

    def produce():
        queue.put("compiled")
        time.sleep(0.3)
        return b"y" * 100_000

    path, hit = c.cached_file("t", {"k": 6}, ".vmfb", produce)
    queue.put(path.read_bytes() == b"y" * 100_000)


def test_two_workers_racing_on_a_damaged_entry_end_with_one_good_module(tmp_path):
    import multiprocessing

    path, _ = cache.cached_file("t", {"k": 6}, ".vmfb", lambda: b"y" * 100_000)
    path.write_bytes(b"y" * 10)
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_heal_in_a_process, args=(str(tmp_path), queue)) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    got = [queue.get(timeout=5) for _ in range(3)]
    assert sorted(map(str, got)) == ["True", "True", "compiled"]  # one rebuild, both read it whole
    assert cache.intact(path) and path.read_bytes() == b"y" * 100_000


def _one_op_module(op: str):
    """(compile, flags, identity) of a one-op StableHLO module for IREE-CPU, cached under the
    test's cache root: ``compile()`` is :func:`iree_compile.compile_cached` on it."""
    iree_compile = pytest.importorskip("model_impl.backends.iree_compile")
    mlir = f"""func.func @main(%a: tensor<4xf32>) -> tensor<4xf32> {{
      %0 = stablehlo.{op} %a, %a : tensor<4xf32>
      return %0 : tensor<4xf32>
    }}"""
    flags = iree_compile.target_flags("llvm-cpu", iree_compile.DEFAULT_CUDA_TARGET)
    identity = {"test": op}
    return (lambda: iree_compile.compile_cached(identity, lambda: mlir, flags)), flags, identity


def _run(main) -> list[float]:
    return main(np.arange(4, dtype=np.float32)).to_host().tolist()


def test_a_real_iree_module_truncated_in_the_cache_is_rebuilt_and_runs():
    from model_impl.backends.iree_runtime import IreeDevice, load_or_rebuild

    compile_, _, _ = _one_op_module("add")
    path, _ = compile_()
    good = path.read_bytes()
    path.write_bytes(good[: len(good) // 2])
    path, _ = compile_()  # the digest catches the truncation: compiled again
    assert path.read_bytes() == good
    assert _run(load_or_rebuild(IreeDevice("local-task"), path, compile_)) == [0, 2, 4, 6]


def test_a_module_the_runtime_rejects_is_dropped_and_compiled_again():
    from model_impl.backends import iree_compile
    from model_impl.backends.iree_runtime import IreeDevice, load_or_rebuild

    compile_, flags, identity = _one_op_module("multiply")
    # an intact entry (its digest matches) that is not a module: what the digest cannot catch
    bad, _ = cache.cached_file("iree", iree_compile.module_key(identity, flags), ".vmfb", lambda: b"\0" * 4096)
    assert compile_()[0] == bad
    assert _run(load_or_rebuild(IreeDevice("local-task"), bad, compile_)) == [0, 1, 4, 9]
    assert cache.intact(bad) and bad.read_bytes() != b"\0" * 4096
