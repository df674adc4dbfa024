"""The command line: the weight-mode switch, ``--logits-out`` rows, and bad input as one clear
line with exit code 2, before anything is loaded or built."""

from __future__ import annotations

import json

import jax.numpy as jnp
import numpy as np
import pytest

from model_impl.__main__ import main
from model_impl.checks import FP32_REORDERING_ATOL
from model_impl.llama import model
from model_impl.llama.representations import PALLAS

LOGITS_PROMPT = [1, 504, 3458, 314, 260]
LOGITS_TOKENS = 6


def _error_lines(capsys) -> list[str]:
    return [line for line in capsys.readouterr().err.splitlines() if line.strip()]


def test_generate_runs_a_representation_and_returns_token_ids(capsys):
    argv = ["generate", "--token-ids", "1,504,3458", "--quant", "int4", "--max-new-tokens", "3", "--json"]
    assert main(argv + ["--representation", "s4-grouped"]) == 0
    grouped = json.loads(capsys.readouterr().out)
    assert main(argv) == 0
    baseline = json.loads(capsys.readouterr().out)
    assert grouped["tokens"] == baseline["tokens"] and len(grouped["tokens"]) == 3


def test_generate_rejects_a_representation_of_float_weights(capsys):
    assert main(["generate", "--token-ids", "1", "--representation", "s4-grouped"]) == 2
    assert "--representation applies to --quant int4" in capsys.readouterr().err


@pytest.mark.parametrize("backend", ["xla-cpu", "iree-cpu"])
def test_generate_refuses_the_pallas_kernel_off_xla_cuda_before_loading(backend, capsys):
    argv = ["generate", "--token-ids", "1", "--quant", "int4", "--representation", PALLAS, "--backend", backend]
    assert main(argv) == 2
    (line,) = _error_lines(capsys)
    assert line.startswith(f"error: --representation {PALLAS} is a Pallas (Triton) kernel: it runs on xla-cuda only")


def check_logits_out_rows(backend, real_model, tmp_path, capsys):
    """``[N, vocab]`` float32; row k's argmax is token k; every row equals a cacheless
    recompute over the prompt and the tokens before it (row 0: the prompt's last position)."""
    cfg, weights = real_model
    out = tmp_path / "logits.npy"
    argv = [
        "generate",
        "--backend",
        backend,
        "--token-ids",
        ",".join(map(str, LOGITS_PROMPT)),
        "--max-new-tokens",
        str(LOGITS_TOKENS),
        "--ignore-eos",
        "--json",
        "--logits-out",
        str(out),
    ]
    assert main(argv) == 0
    tokens = json.loads(capsys.readouterr().out)["tokens"]
    rows = np.load(out)
    assert len(tokens) == LOGITS_TOKENS
    assert rows.shape == (LOGITS_TOKENS, cfg.vocab_size) and rows.dtype == np.float32
    assert rows.argmax(axis=-1).tolist() == tokens
    text = jnp.asarray(LOGITS_PROMPT + tokens[:-1], jnp.int32)
    recompute = np.asarray(model.all_logits(cfg, weights, text))[len(LOGITS_PROMPT) - 1 :]
    np.testing.assert_allclose(rows, recompute, atol=FP32_REORDERING_ATOL, rtol=0)


@pytest.mark.parametrize("backend", ["xla-cpu", "iree-cpu"])
def test_logits_out_rows_are_the_logits_that_chose_each_token(real_model, tmp_path, capsys, backend):
    check_logits_out_rows(backend, real_model, tmp_path, capsys)


def _has_cuda() -> bool:
    from model_impl.backends.generate import BackendUnavailable, require_device

    try:
        require_device("xla-cuda")
        require_device("iree-cuda")
    except BackendUnavailable:
        return False
    return True


@pytest.mark.skipif(_has_cuda(), reason="this machine has a CUDA device: the error cannot occur")
@pytest.mark.parametrize("backend", ["xla-cuda", "iree-cuda"])
def test_a_cuda_backend_without_a_gpu_is_one_line_naming_it_before_any_loading(capsys, backend):
    # A model path that does not exist: the device check must come first.
    argv = ["generate", "--backend", backend, "--token-ids", "1", "--model", "/nonexistent/model.gguf"]
    assert main(argv) == 2
    lines = _error_lines(capsys)
    assert len(lines) == 1 and lines[0].startswith(f"error: backend {backend}: no usable CUDA device"), lines


@pytest.mark.parametrize("n", ["0", "-3"])
def test_max_new_tokens_below_one_is_one_line(capsys, n):
    assert main(["generate", "--token-ids", "1", "--max-new-tokens", n, "--model", "/nonexistent.gguf"]) == 2
    assert _error_lines(capsys) == [f"error: --max-new-tokens must be at least 1, got {n}"]


def test_a_negative_chunk_is_one_line(capsys):
    assert main(["generate", "--token-ids", "1", "--chunk", "-1", "--model", "/nonexistent.gguf"]) == 2
    assert _error_lines(capsys) == ["error: --chunk must be 0 (one dispatch per step) or more, got -1"]


def test_a_truncated_gguf_names_the_tensor_where_the_data_runs_out(tmp_path, capsys):
    from model_impl import checkpoints

    source = checkpoints.default_model_path()
    cut = tmp_path / "cut.gguf"
    data = source.read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    assert main(["generate", "--token-ids", "1", "--model", str(cut)]) == 2
    lines = _error_lines(capsys)
    assert len(lines) == 1 and lines[0].startswith(f"error: {cut}: tensor '") and "is truncated" in lines[0], lines


def test_a_tp_the_model_cannot_shard_is_one_line(capsys):
    """The embedded SmolLM2 has 9 heads over 3 KV heads: two devices cannot split them."""
    assert main(["generate", "--token-ids", "1", "--tp", "2", "--max-new-tokens", "1"]) == 2
    lines = _error_lines(capsys)
    assert lines == ["error: --tp 2: num_attention_heads 9 is not divisible by 2"], lines


def test_tp_below_one_is_one_line(capsys):
    assert main(["generate", "--token-ids", "1", "--tp", "0", "--model", "/nonexistent.gguf"]) == 2
    assert _error_lines(capsys) == ["error: --tp must be at least 1, got 0"]


@pytest.mark.parametrize(
    "argv, says",
    [
        (["generate", "--token-ids", "1,2,x"], "--token-ids must be comma-separated integers"),
        (["generate", "--token-ids", ","], "--token-ids is empty"),
        (["tp", "--backend", "xla-cpu", "--tp", "1,x", "--out", "t.json"], "--tp must be comma-separated integers"),
        (["tp", "--backend", "xla-cpu", "--tp", "0,2", "--out", "t.json"], "--tp degrees must be at least 1"),
        (["tp", "--backend", "xla-cpu", "--shapes", "llama-9", "--out", "t.json"], "unknown llama-9"),
        (["tp", "--backend", "xla-cpu", "--parity-shapes", "x", "--out", "t.json"], "unknown x"),
        (["tp", "--backend", "xla-cuda", "--out", "t.json"], "backend xla-cuda"),
        (["fusion", "--rows", "bogus", "--out", "f.json"], "--rows: not rows of the float32 matrix: bogus:default:dot"),
        (["fusion", "--backends", "bogus", "--out", "f.json"], "--backends: unknown bogus"),
        (["fusion", "--backends", "xla-cuda", "--out", "f.json"], "backend xla-cuda"),
        (["fusion", "--parts", "cells,x", "--out", "f.json"], "--parts: unknown x"),
        (["fusion", "--steps", "0", "--out", "f.json"], "--steps must be at least 1"),
    ],
)
def test_every_subcommands_bad_input_is_one_error_line_and_exit_2_before_anything_is_built(
    argv, says, capsys, tmp_path, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    (line,) = _error_lines(capsys)
    assert line.startswith("error: ") and says in line, line
    assert not list(tmp_path.iterdir())  # nothing written
