"""The compile-cache key: any change to what shapes a module changes its digest, and no two
compiler settings of one graph share a module."""

from __future__ import annotations

import shutil

import pytest
from hypothesis import given
from hypothesis import strategies as st

from model_impl import env
from model_impl.backends import cache, iree_compile
from model_impl.lab import fusion_matrix
from model_impl.llama.representations import convert
from model_impl.llama.shapes import shrunk_llama32_config
from model_impl.llama.weights import specs

CFG = shrunk_llama32_config(layers=1)


def _digest(cfg=CFG, weights=None, graph="prefill", bucket=16, max_seq=128, target=("cuda", "sm_80"), extra=()):
    weights = specs(cfg, "int4") if weights is None else weights
    flags = iree_compile.target_flags(*target) + list(extra)
    return cache.digest(iree_compile.graph_key(cfg, weights, graph, bucket, max_seq, flags))


@pytest.fixture(autouse=True)
def known_compiler(monkeypatch):
    monkeypatch.setattr(iree_compile, "compiler_version", lambda: "3.13.0")


CHANGES = {
    "compile flags": dict(extra=("--iree-opt-data-tiling",)),
    "target": dict(target=("llvm-cpu",)),
    "cuda target": dict(target=("cuda", "sm_89")),
    "bucket": dict(bucket=32),
    "max_seq": dict(max_seq=256),
    "graph": dict(graph="decode"),
    "weight signature (float weights)": dict(weights=specs(CFG, "fp32")),
    "weight signature (another int4 form)": dict(weights=convert(specs(CFG, "int4"), "u4-affine")),
    "config": dict(cfg=shrunk_llama32_config(layers=2)),
}


@pytest.mark.parametrize("field", list(CHANGES))
def test_graph_key_digest_changes_with_each_field(field):
    assert _digest(**CHANGES[field]) != _digest()


def test_graph_key_digest_changes_with_the_compiler_version(monkeypatch):
    before = _digest()
    monkeypatch.setattr(iree_compile, "compiler_version", lambda: "3.14.0")
    assert _digest() != before


def test_graph_key_digest_changes_when_a_graph_source_changes(tmp_path, monkeypatch):
    before = _digest()
    copy = tmp_path / "model_impl"
    shutil.copytree(cache.PACKAGE_ROOT, copy, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(cache, "PACKAGE_ROOT", copy)
    assert _digest() == before  # the same sources in another place: the same key
    model = copy / "llama" / "model.py"
    model.write_text(model.read_text() + "\n# a changed line\n")
    assert _digest() != before


def test_graph_key_digest_of_a_host_cpu_module_names_the_cpu(monkeypatch):
    before = _digest(target=("llvm-cpu",))
    monkeypatch.setattr(env, "host_cpu", lambda: "Another CPU")
    assert _digest(target=("llvm-cpu",)) != before


def test_loop_key_changes_with_its_chunk():
    """A decode loop's bucket is its chunk: the shape of the token ids it returns."""
    assert _digest(graph="decode_loop", bucket=16) != _digest(graph="decode_loop", bucket=32)
    assert _digest(graph="decode_loop", bucket=32) != _digest(graph="decode_loop_logits", bucket=32)


def test_decode_key_ignores_the_prompt_bucket():
    """Decode has no prompt: one module serves every bucket."""
    assert _digest(graph="decode", bucket=16) == _digest(graph="decode", bucket=64)


@given(
    a=st.tuples(st.sampled_from([16, 32, 64]), st.integers(1, 8).map(lambda k: 128 * k)),
    b=st.tuples(st.sampled_from([16, 32, 64]), st.integers(1, 8).map(lambda k: 128 * k)),
)
def test_prefill_keys_are_equal_exactly_when_the_shapes_are(a, b):
    assert (_digest(bucket=a[0], max_seq=a[1]) == _digest(bucket=b[0], max_seq=b[1])) == (a == b)


@pytest.mark.parametrize("backend", ["iree-cpu", "iree-cuda"])
def test_fusion_matrix_option_rows_of_one_representation_never_share_a_module(backend, monkeypatch):
    monkeypatch.setenv("MODEL_IMPL_IREE_CUDA_TARGET", "sm_89")
    int4 = specs(CFG, "int4")
    seen = {}
    for representation, option in fusion_matrix.ROWS:
        if fusion_matrix.applicability(representation, option, backend):
            continue
        flags = fusion_matrix.iree_flags(backend, option)
        key = cache.digest(iree_compile.graph_key(CFG, convert(int4, representation), "decode", 0, 128, flags))
        assert key not in seen, f"{(representation, option)} shares a module with {seen[key]}"
        seen[key] = (representation, option)
    options = {o for _, o in seen.values()}
    assert len(options) >= 2, f"{backend}: fewer than two option rows apply; the test proves nothing"
