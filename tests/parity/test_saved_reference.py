"""The transformers reference read from its saved outputs (``model_impl/checks/reference.py``),
as an environment without torch reads it, says what transformers says live: the same tokens,
logits within the distance recorded with the file; a stale file, a missing one and a head our
loader reads differently each fail with a line that names the file or checkpoint."""

from __future__ import annotations

import json

import numpy as np
import pytest

from model_impl import checks
from model_impl.checks import reference

IDS = [5, 17, 300, 2, 41, 9]
TOKENS = 6
# A rebuilt reference adds its rebuild distance to every difference measured against it, so it
# may take at most this share of the bound it is compared under (measured: about 1e-5 of 1e-3 in
# float32 on SmolLM2; at most one ulp of a logit in bf16/f16, 1/16 of their bound).
REBUILD_SHARE_OF_BOUND = 0.25

needs_torch = pytest.mark.skipif(
    reference.torch_missing() is not None, reason=f"the live side: {reference.torch_missing()}"
)


@pytest.fixture
def saved_dir(tmp_path, monkeypatch):
    monkeypatch.setattr(reference, "SAVED_DIR", tmp_path)
    return tmp_path


def without_torch(monkeypatch):
    monkeypatch.setattr(reference, "torch_missing", lambda: "torch is not installed (this test)")


@needs_torch
@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float16"])
def test_a_rebuilt_reference_equals_live_transformers_within_its_recorded_distance(
    tiny_hf_dir, saved_dir, monkeypatch, dtype
):
    monkeypatch.setenv(reference.RECORD_ENV, "1")
    live = reference.run(tiny_hf_dir, dtype, IDS, TOKENS)
    monkeypatch.delenv(reference.RECORD_ENV)
    without_torch(monkeypatch)
    saved = reference.run(tiny_hf_dir, dtype, IDS, TOKENS)
    assert saved.source.startswith("saved ") and live.rebuild_atol == 0.0
    assert saved.greedy.tokens == live.greedy.tokens and saved.greedy.prompt_tokens == IDS
    for a, b in ((saved.prompt_logits, live.prompt_logits), (saved.greedy.logits, live.greedy.logits)):
        assert a.shape == b.shape
        assert float(np.max(np.abs(a - b))) <= saved.rebuild_atol
    assert saved.rebuild_atol <= REBUILD_SHARE_OF_BOUND * checks.logit_atol(dtype)
    (file,) = saved_dir.glob("*.npz")
    meta, arrays = reference.read_saved(file)
    assert reference.saved_path(meta["key"]) == file and meta["key"]["tokens"] == TOKENS
    assert len(arrays["prompt_hidden"]) == len(IDS) and len(arrays["tokens"]) == len(arrays["greedy_hidden"]) == TOKENS


@needs_torch
def test_a_saved_file_that_parts_from_live_transformers_fails_where_torch_runs(tiny_hf_dir, saved_dir, monkeypatch):
    monkeypatch.setenv(reference.RECORD_ENV, "1")
    reference.run(tiny_hf_dir, "float32", IDS, TOKENS)
    monkeypatch.delenv(reference.RECORD_ENV)
    file = reference.saved_path(reference.key(tiny_hf_dir, "float32", IDS, TOKENS))
    meta, arrays = reference.read_saved(file)

    def rewrite(**changes):
        np.savez_compressed(file, **{**arrays, **changes}, meta=np.asarray(json.dumps(meta)))

    rewrite(tokens=arrays["tokens"] + 1)
    with pytest.raises(AssertionError, match="saved tokens part from live"):
        reference.run(tiny_hf_dir, "float32", IDS, TOKENS)
    rewrite(prompt_hidden=arrays["prompt_hidden"] * 1.01)
    with pytest.raises(AssertionError, match="rebuilt logits lie"):
        reference.run(tiny_hf_dir, "float32", IDS, TOKENS)
    rewrite()
    reference.run(tiny_hf_dir, "float32", IDS, TOKENS)  # the file as written passes


def test_without_torch_a_missing_reference_is_one_error_naming_the_checkpoint(tiny_hf_dir, saved_dir, monkeypatch):
    without_torch(monkeypatch)
    with pytest.raises(reference.MissingReference) as e:
        reference.run(tiny_hf_dir, "float32", IDS, TOKENS)
    line = str(e.value)
    assert "\n" not in line and str(tiny_hf_dir) in line and "make reference" in line


def test_without_torch_a_head_our_loader_reads_otherwise_is_refused(tiny_hf_dir, saved_dir, monkeypatch):
    k = reference.key(tiny_hf_dir, "float32", IDS, 0)
    hidden = np.random.default_rng(0).standard_normal((len(IDS), 256)).astype(np.float32)
    record = {
        "prompt_hidden": hidden,
        "greedy_hidden": np.zeros((0, 256), np.float32),
        "tokens": np.zeros(0, np.int64),
        "head_sha256": "0" * 64,
        "rebuild_atol": 0.0,
        "versions": {"transformers": "-", "torch": "-"},
    }
    reference._write(reference.saved_path(k), k, record)
    without_torch(monkeypatch)
    with pytest.raises(reference.MissingReference, match="head our loader reads"):
        reference.run(tiny_hf_dir, "float32", IDS)


@pytest.mark.parametrize("runner_up_scale, parts_at_a_near_tie", [(1 + 1e-6, True), (0.5, False)])
def test_a_saved_run_may_part_from_live_transformers_only_at_a_near_tie(
    saved_dir, runner_up_scale, parts_at_a_near_tie
):
    """Transformers on another CPU may take the other of two tokens whose logits nearly tie; a
    saved run that parts from the live one anywhere else is stale. Head row 1 is row 0 scaled:
    by 1 + 1e-6 the two tie within the float32 near-tie gap at every step, by 0.5 they do not."""
    rng = np.random.default_rng(1)
    head = rng.standard_normal((50, 8)).astype(np.float32) * 0.1
    head[0] *= 10
    head[1] = head[0] * runner_up_scale
    hidden = np.repeat(head[:1] * 3, 5, axis=0)  # every row leans on token 0 (and its twin, 1)
    logits = reference.rebuild(hidden, head, "float32")
    live_tokens = logits[1:].argmax(1).tolist()
    assert set(live_tokens) <= {0, 1}
    saved_tokens = list(live_tokens)
    saved_tokens[2] = 1 - saved_tokens[2]  # the other of the two
    ids = [3]
    live = reference.Run(logits[:1], reference.Generation(ids, live_tokens, logits[1:]), 0.0, "live (this test)")
    k = {"checkpoint": "-", "dtype": "float32", "prompt": ids, "tokens": len(saved_tokens)}
    record = {
        "prompt_hidden": hidden[:1],
        "greedy_hidden": hidden[1:],
        "tokens": np.asarray(saved_tokens, np.int64),
        "head_sha256": reference.digest(head),
        "rebuild_atol": 0.0,
        "versions": {"transformers": "-", "torch": "-"},
    }
    file = reference.saved_path(k)
    reference._write(file, k, record)
    if parts_at_a_near_tie:
        reference.check_saved(file, live, head, "float32")
    else:
        with pytest.raises(AssertionError, match="no near-tie"):
            reference.check_saved(file, live, head, "float32")
