"""MLX as the peer: checkpoints made by mlx-lm's own converter, greedy runs by mlx-lm itself.

mlx-lm is the engine people already serve these checkpoints with, and it fuses its int4
matmul; no one here wrote it. Our int4 graph runs the same packed codes and must agree.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from .. import checkpoints as checkpoint
from .. import checks
from ..backends.generate import Generation

# (bits, group_size) of the checkpoint variants the suite builds and compares.
VARIANTS = ((4, 64), (4, 128), (8, 32))


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


def greedy(path: Path, prompt_ids, max_new_tokens: int) -> Generation:
    """mlx_lm's own greedy generation; ``logits`` holds its log-probabilities per step."""
    import mlx.core as mx
    from mlx_lm import load
    from mlx_lm.generate import generate_step

    model, _ = load(str(path))
    tokens, rows = [], []
    steps = generate_step(mx.array(list(prompt_ids)), model, max_tokens=max_new_tokens)
    for token, logprobs in steps:
        tokens.append(int(token))
        rows.append(np.array(logprobs.astype(mx.float32)))
        if len(tokens) == max_new_tokens:
            break
    return Generation(list(prompt_ids), tokens, np.stack(rows))


def log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


@dataclasses.dataclass(frozen=True)
class PeerComparison:
    comparison: checks.Comparison  # on log-probabilities (MLX returns those, not logits)
    top2_gap_at_divergence: float | None  # our logit gap between the top two, where it diverged

    @property
    def agrees(self) -> bool:
        """48/48, or agreement up to a first divergence that is a near-tie."""
        c = self.comparison
        return c.first_divergence is None or (
            self.top2_gap_at_divergence is not None and self.top2_gap_at_divergence < checks.NEAR_TIE_GAP
        )


def compare(ours: Generation, peer: Generation) -> PeerComparison:
    cmp = checks.compare(dataclasses.replace(ours, logits=log_softmax(ours.logits)), peer)
    gap = None
    if cmp.first_divergence is not None and cmp.first_divergence < len(ours.logits):
        top2 = np.sort(ours.logits[cmp.first_divergence])[-2:]
        gap = float(top2[1] - top2[0])
    return PeerComparison(cmp, gap)


def weight_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in Path(path).glob("*.safetensors"))
