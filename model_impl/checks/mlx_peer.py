"""MLX as the peer: checkpoints made by mlx-lm's own converter, greedy runs by mlx-lm itself.

mlx-lm is the engine people already serve these checkpoints with, and it fuses its int4
matmul; no one here wrote it. Our int4 graph runs the same packed codes and must agree.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import numpy as np

from .. import checkpoints as checkpoint
from .. import checks
from ..backends.generate import Generation

# (dtype, bits, group_size) of the checkpoint variants the suite builds and compares: mlx_lm's
# own conversions in float32, and in float16/bfloat16 as mlx-community ships them.
VARIANTS = (
    ("float32", 4, 64),
    ("float32", 4, 128),
    ("float32", 8, 32),
    ("float16", 4, 64),
    ("float16", 8, 32),
    ("bfloat16", 4, 64),
    ("bfloat16", 8, 32),
)
HALF_VARIANTS = tuple(v for v in VARIANTS if v[0] != "float32")


def variant_name(dtype: str, bits: int, group: int) -> str:
    return f"{dtype}-{bits}bit-g{group}"


def write_hf_dir(model_path, dest: Path) -> Path:
    """An HF directory (fp32 safetensors + tokenizer files) of a checkpoint, for mlx_lm.convert."""
    cfg, weights = checkpoint.load(model_path)
    checkpoint.save_hf_dir(cfg, weights, dest)
    checkpoint.load_tokenizer(model_path).save_pretrained(str(dest))
    return dest


def convert(hf_dir: Path, dest: Path, bits: int, group_size: int, dtype: str = "float32", quant_predicate=None) -> Path:
    """mlx_lm.convert with quantization: the mlx-community layout, made by mlx-lm itself."""
    import contextlib
    import io

    from mlx_lm import convert as mlx_convert

    with contextlib.redirect_stdout(io.StringIO()):
        mlx_convert(
            str(hf_dir),
            str(dest),
            quantize=True,
            q_group_size=group_size,
            q_bits=bits,
            dtype=dtype,
            quant_predicate=quant_predicate,
        )
    return dest


# Our Config field -> mlx_lm's ModelArgs field (models/llama.py).
MLX_ARGS = {
    "vocab_size": "vocab_size",
    "hidden_size": "hidden_size",
    "intermediate_size": "intermediate_size",
    "num_layers": "num_hidden_layers",
    "num_heads": "num_attention_heads",
    "num_kv_heads": "num_key_value_heads",
    "head_dim": "head_dim",
    "rms_norm_eps": "rms_norm_eps",
    "rope_theta": "rope_theta",
    "tie_word_embeddings": "tie_word_embeddings",
}


def config_differences(path: Path) -> dict[str, tuple]:
    """Every field where the model mlx_lm builds from ``path`` differs from the Config we read
    from it: ``{field: (ours, mlx_lm's)}``, the llama3 RoPE scaling included. Empty when both
    run the same model; compared before any token, so a peer that misreads a config cannot
    pass or fail silently."""
    from mlx_lm import load

    ours = checkpoint.load_config(path)
    args = load(str(path))[0].args
    out = {}
    for field, mlx_field in MLX_ARGS.items():
        a, b = getattr(ours, field), getattr(args, mlx_field, None)
        if b is None and mlx_field == "head_dim":
            b = args.hidden_size // args.num_attention_heads
        if (float(a) != float(b)) if isinstance(a, float) else (a != b):
            out[field] = (a, b)
    ours_scaling = None
    if ours.rope_scaling is not None:
        ours_scaling = {k: float(v) for k, v in dataclasses.asdict(ours.rope_scaling).items()}
    theirs = dict(args.rope_scaling or {})
    kind = theirs.get("rope_type", theirs.get("type", "default"))
    mlx_scaling = None
    if kind == "llama3":
        mlx_scaling = {k: float(theirs[k]) if k in theirs else None for k in ours_scaling or theirs}
    elif kind != "default":
        mlx_scaling = theirs
    if ours_scaling != mlx_scaling:
        out["rope_scaling"] = (ours_scaling, mlx_scaling)
    return out


def greedy(path: Path, prompt_ids, max_new_tokens: int, until_parting_from=None) -> Generation:
    """mlx_lm's own greedy generation; ``logits`` holds its log-probabilities per step. With
    ``until_parting_from`` (another run's tokens) it stops at the first token that differs:
    nothing after a first divergence is compared, and mlx's CPU float16 steps are slow."""
    import mlx.core as mx
    from mlx_lm import load
    from mlx_lm.generate import generate_step

    model, _ = load(str(path))
    tokens, rows = [], []
    steps = generate_step(mx.array(list(prompt_ids)), model, max_tokens=max_new_tokens)
    for token, logprobs in steps:
        tokens.append(int(token))
        rows.append(np.array(logprobs.astype(mx.float32)))
        k = len(tokens) - 1
        parted = until_parting_from is not None and (k >= len(until_parting_from) or until_parting_from[k] != tokens[k])
        if len(tokens) == max_new_tokens or parted:
            break
    return Generation(list(prompt_ids), tokens, np.stack(rows))


# mlx_lm's greedy tokens on the half-precision checkpoints, recorded by `python -m model_impl
# record-peer`: MLX's CPU float16 quantized matmul is a scalar loop (28.7 ms for one [1536, 576]
# 4-bit linear against 0.87 ms in float32 and 6.3 in bfloat16, on the 2-core EPYC), so one 48-token
# float16 run takes over two minutes (the four half-precision runs: 9.4 min). The greedy check of
# a half-precision checkpoint reads only the peer's tokens (the near-tie gap is ours), so a run
# recorded under the same key compares exactly as a live one; a key that is not recorded (another
# mlx, mlx-lm, checkpoint, prompt or length) runs live.
RECORDED = Path(__file__).resolve().parents[1] / "data" / "mlx_peer_greedy.json"


def greedy_key(path: Path, prompt_ids, max_new_tokens: int) -> dict:
    """What a recorded greedy run of mlx_lm depends on: mlx and mlx-lm, the checkpoint's bytes
    (weights and config), the prompt and the length."""
    from .. import env

    h = hashlib.sha256()
    for f in sorted(Path(path).glob("*.safetensors")) + [Path(path) / "config.json"]:
        h.update(f.name.encode())
        h.update(f.read_bytes())
    return {
        "mlx": env.version("mlx"),
        "mlx-lm": env.version("mlx-lm"),
        "checkpoint_sha256": h.hexdigest(),
        "prompt": [int(t) for t in prompt_ids],
        "max_new_tokens": int(max_new_tokens),
    }


def recorded_tokens(key: dict, recorded: Path = RECORDED) -> list[int] | None:
    """The tokens recorded under exactly ``key``, or None."""
    if not recorded.exists():
        return None
    for entry in json.loads(recorded.read_text())["runs"]:
        if entry["key"] == key:
            return list(entry["tokens"])
    return None


def greedy_tokens(path: Path, prompt_ids, max_new_tokens: int, until_parting_from=None) -> Generation:
    """mlx_lm's greedy tokens (no log-probabilities): recorded under this key, else run live."""
    tokens = recorded_tokens(greedy_key(path, prompt_ids, max_new_tokens))
    if tokens is not None:
        return Generation(list(prompt_ids), tokens, None)
    run = greedy(path, prompt_ids, max_new_tokens, until_parting_from)
    return Generation(run.prompt_tokens, run.tokens, None)


def record(entries: list[tuple[str, Path]], prompt_ids, max_new_tokens: int, recorded: Path = RECORDED) -> dict:
    """Run mlx_lm live on each ``(variant name, checkpoint)`` and write the recording file
    (the whole run: the comparison stops at the first divergence of whoever it is compared with)."""
    from .. import env

    runs = []
    for name, path in entries:
        key = greedy_key(path, prompt_ids, max_new_tokens)
        runs.append({"variant": name, "key": key, "tokens": greedy(path, prompt_ids, max_new_tokens).tokens})
    out = {"environment": env.environment(), "runs": runs}
    recorded.write_text(json.dumps(out, indent=1) + "\n")
    return out


def prompt_logits(path: Path, prompt_ids) -> tuple[np.ndarray, np.ndarray]:
    """mlx_lm's logits at every prompt position, ``[t, vocab]`` as float32 numbers: as stored,
    and with the model's float parameters (scales and biases included) cast to float32 first:
    the same codes computed without half-precision rounding."""
    import mlx.core as mx
    from mlx_lm import load

    model, _ = load(str(path))
    ids = mx.array([list(prompt_ids)])
    stored = np.array(model(ids)[0].astype(mx.float32))
    model.set_dtype(mx.float32)
    return stored, np.array(model(ids)[0].astype(mx.float32))


def log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def compare(ours: Generation, peer: Generation, dtype: str = "float32") -> checks.GreedyAgreement:
    """Our run against mlx_lm's: log-probabilities compared, the near-tie gap of ``dtype``."""
    return checks.greedy_agreement(ours, peer, checks.near_tie_gap(dtype), ours_logits=log_softmax(ours.logits))


def weight_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in Path(path).glob("*.safetensors"))
