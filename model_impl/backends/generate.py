"""Greedy generation over a backend that keeps weights and the KV cache on its device.

Only the chosen token id crosses back to the host each step (plus the logits row when
the caller asks for them). Prompts are padded to a power-of-two bucket so that one
compiled prefill serves many prompt lengths.
"""

from __future__ import annotations

import contextlib
import dataclasses

import numpy as np

from ..llama.config import Config
from ..llama.weights import Weights
from .spec import backend as backend_spec

MIN_BUCKET = 16
CACHE_ROUNDING = 128


def prompt_bucket(length: int) -> int:
    return max(MIN_BUCKET, 1 << (max(length, 1) - 1).bit_length())


def cache_length(prompt_len: int, max_new_tokens: int) -> int:
    need = max(prompt_bucket(prompt_len), prompt_len + max_new_tokens)
    return -(-need // CACHE_ROUNDING) * CACHE_ROUNDING


@dataclasses.dataclass
class Generation:
    prompt_tokens: list[int]
    tokens: list[int]  # generated ids only
    logits: np.ndarray | None = None  # [len(tokens), vocab]; row k chose tokens[k]


class BackendUnavailable(ValueError):
    """A backend this machine cannot run; the message names the backend and why."""


def require_device(backend: str) -> None:
    """Raise :class:`BackendUnavailable` (one line) unless this machine has a device for ``backend``."""
    spec = backend_spec(backend)
    if not spec.is_cuda:
        return
    try:
        if spec.is_xla:
            import jax

            jax.devices("cuda")
        else:
            import iree.runtime as rt

            rt.get_driver("cuda")
    except RuntimeError as e:
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise BackendUnavailable(f"backend {spec.name}: no usable CUDA device ({reason})") from None


# What a compiler or runtime says when it has no kernel for an element type (seen: XLA-CPU,
# jaxlib 0.10.2, "Unsupported element type for DotThunk::Execute: BF16 x BF16 = F32").
_NO_KERNEL = ("Unsupported element type", "UNIMPLEMENTED", "unsupported element type", "is not supported")


@contextlib.contextmanager
def dtype_errors(backend: str, dtype: str):
    """Turn a compiler's or runtime's "no kernel for this element type" into one
    :class:`BackendUnavailable` line naming the backend and the compute dtype."""
    try:
        yield
    except Exception as e:  # XLA, IREE compiler and runtime errors have no common base
        text = str(e)
        if dtype == "float32" or not any(marker in text for marker in _NO_KERNEL):
            raise
        reason = next((line.strip() for line in text.splitlines() if any(m in line for m in _NO_KERNEL)), text)
        raise BackendUnavailable(f"backend {backend} cannot run compute dtype {dtype}: {reason[:300]}") from None


def make_runner(
    cfg: Config,
    weights: Weights,
    backend: str = "xla-cpu",
    cuda_target: str | None = None,
    xla_options: dict | None = None,
    iree_flags=(),
):
    """A runner for ``backend``; ``cuda_target`` overrides the IREE CUDA target choice;
    ``xla_options`` (XLA debug options) and ``iree_flags`` (iree-compile flags) go to the
    compiler of the backend they name."""
    spec = backend_spec(backend)
    require_device(spec.name)
    if spec.is_xla:
        from .xla import XlaRunner

        return XlaRunner(cfg, weights, spec, compiler_options=xla_options)
    from . import iree_compile
    from .iree_runtime import IreeRunner

    if spec.is_cuda:
        target = cuda_target or iree_compile.cuda_target_for_device()
    else:
        target = iree_compile.DEFAULT_CUDA_TARGET  # unused by llvm-cpu; part of no key
    return IreeRunner(cfg, weights, spec, cuda_target=target, extra_flags=iree_flags)


def generate(
    runner,
    prompt_tokens,
    max_new_tokens: int,
    *,
    stop_at_eos: bool = True,
    keep_logits: bool = False,
) -> Generation:
    """Greedy decoding of up to ``max_new_tokens`` after ``prompt_tokens``."""
    cfg = runner.cfg
    prompt = [int(t) for t in prompt_tokens]
    if not prompt:
        raise ValueError("the prompt must hold at least one token")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
    if max(prompt) >= cfg.vocab_size or min(prompt) < 0:
        raise ValueError(f"prompt token ids must be in [0, {cfg.vocab_size})")
    padded = np.zeros(prompt_bucket(len(prompt)), np.int32)
    padded[: len(prompt)] = prompt
    out, rows = [], []
    with dtype_errors(runner.backend, cfg.dtype):  # the first call of each graph compiles it
        token, logits = runner.prefill(padded, len(prompt), cache_length(len(prompt), max_new_tokens))
        for step in range(max_new_tokens):
            tid = runner.token_id(token)  # the only device -> host transfer of a step
            out.append(tid)
            if keep_logits:
                rows.append(runner.logits_row(logits))
            if (stop_at_eos and tid in cfg.eos_token_ids) or step == max_new_tokens - 1:
                break
            token, logits = runner.decode(token, len(prompt) + step)
    return Generation(prompt, out, np.stack(rows) if keep_logits else None)
