"""Greedy generation over a backend that keeps weights and the KV cache on its device.

After the prefill, decoding runs in chunks of the device loop (:func:`graphs.greedy_decode_loop`):
up to ``chunk`` steps per dispatch, argmax, position, cache and the step budget kept on the
device, stopping at EOS or the limit; only the chunk's token ids come back (plus its logits
rows when the caller asks for them: gathered in the same loop, so the path checked is the
path served). The next chunk is queued before the current one is read. ``chunk=None`` keeps
the per-step path (one dispatch and one token read back per step), the loop's reference.
Prompts are padded to a power-of-two bucket so that one compiled prefill serves many lengths.
"""

from __future__ import annotations

import contextlib
import dataclasses

import numpy as np

from ..llama.config import Config
from ..llama.graphs import DECODE_CHUNK
from ..llama.weights import Weights
from .spec import backend as backend_spec

MIN_BUCKET = 16
CACHE_ROUNDING = 128


def prompt_bucket(length: int) -> int:
    return max(MIN_BUCKET, 1 << (max(length, 1) - 1).bit_length())


def cache_slots_needed(prompt_len: int, max_new_tokens: int) -> int:
    """The prompt's padded bucket, or the prompt and every new token, whichever is longer."""
    return max(prompt_bucket(prompt_len), prompt_len + max_new_tokens)


def cache_length(prompt_len: int, max_new_tokens: int) -> int:
    """The default cache: :func:`cache_slots_needed` rounded up to :data:`CACHE_ROUNDING`."""
    return -(-cache_slots_needed(prompt_len, max_new_tokens) // CACHE_ROUNDING) * CACHE_ROUNDING


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
    except ImportError as e:
        raise BackendUnavailable(f"backend {spec.name}: {e.name or e} is not installed") from None
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
    tp: int = 1,
):
    """A runner for ``backend``; ``cuda_target`` overrides the IREE CUDA target choice;
    ``xla_options`` (XLA debug options) and ``iree_flags`` (iree-compile flags) go to the
    compiler of the backend they name; ``tp``: tensor-parallel degree (XLA backends only)."""
    spec = backend_spec(backend)
    require_device(spec.name)
    if spec.is_xla:
        from .xla import XlaRunner

        return XlaRunner(cfg, weights, spec, compiler_options=xla_options, tp=tp)
    if tp != 1:
        from ..llama.sharding import ShardingError

        raise ShardingError(
            f"--tp {tp}: tensor parallelism runs on the XLA backends only; {spec.name} runs one device "
            "(IREE 3.13's multi-device support: see the report)"
        )
    from . import iree_compile
    from .iree_runtime import IreeRunner

    if spec.is_cuda:
        target = cuda_target or iree_compile.cuda_target_for_device()
    else:
        target = iree_compile.DEFAULT_CUDA_TARGET  # unused by llvm-cpu; part of no key
    return IreeRunner(cfg, weights, spec, cuda_target=target, extra_flags=iree_flags)


def _check_request(cfg: Config, prompt: list[int], max_new_tokens: int, chunk: int | None, max_seq) -> None:
    if not prompt:
        raise ValueError("the prompt must hold at least one token")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
    if max(prompt) >= cfg.vocab_size or min(prompt) < 0:
        raise ValueError(f"prompt token ids must be in [0, {cfg.vocab_size})")
    if chunk is not None and chunk < 1:
        raise ValueError(f"chunk must be at least 1 step (or None for the per-step path), got {chunk}")
    need = cache_slots_needed(len(prompt), max_new_tokens)
    if max_seq is not None and max_seq < need:
        raise ValueError(f"max_seq {max_seq} is below the {need} cache slots this request needs")


def stream(
    runner,
    prompt_tokens,
    max_new_tokens: int,
    *,
    stop_at_eos: bool = True,
    keep_logits: bool = False,
    chunk: int | None = DECODE_CHUNK,
    max_seq: int | None = None,
):
    """Greedy decoding of up to ``max_new_tokens`` after ``prompt_tokens``, yielded as it
    arrives: ``(ids, rows)`` per prefill, chunk (or step, with ``chunk=None``); ``rows`` is the
    ``[len(ids), vocab]`` logits that chose them with ``keep_logits``, else None. ``max_seq``:
    the KV cache's slots (default :func:`cache_length`, rounded up so that one compiled graph
    serves many requests). A bad request raises here, before anything runs."""
    prompt = [int(t) for t in prompt_tokens]
    _check_request(runner.cfg, prompt, max_new_tokens, chunk, max_seq)
    max_seq = max_seq or cache_length(len(prompt), max_new_tokens)
    return _stream(runner, prompt, max_new_tokens, stop_at_eos, keep_logits, chunk, max_seq)


def _stream(runner, prompt: list[int], max_new_tokens: int, stop_at_eos: bool, keep_logits: bool, chunk, max_seq):
    cfg = runner.cfg
    padded = np.zeros(prompt_bucket(len(prompt)), np.int32)
    padded[: len(prompt)] = prompt
    ended = lambda tid: stop_at_eos and tid in cfg.eos_token_ids  # noqa: E731
    with dtype_errors(runner.backend, cfg.dtype):  # the first call of each graph compiles it
        token, logits = runner.prefill(padded, len(prompt), max_seq)
        tid = runner.token_id(token)
        yield [tid], runner.logits_row(logits)[None] if keep_logits else None
        left = max_new_tokens - 1
        if ended(tid) or left == 0:
            return
        if chunk is None:
            for step in range(left):
                token, logits = runner.decode(token, len(prompt) + step)
                tid = runner.token_id(token)
                yield [tid], runner.logits_row(logits)[None] if keep_logits else None
                if ended(tid):
                    return
            return
        state = runner.loop_state(token, len(prompt), left, stop_at_eos)
        queued, state = runner.decode_chunk(state, chunk, keep_logits)
        unqueued = left - chunk  # steps no queued chunk covers yet
        while True:
            following = None
            if unqueued > 0:  # queue the next chunk before waiting for this one
                following, state = runner.decode_chunk(state, chunk, keep_logits)
                unqueued -= chunk
            ids, rows = runner.chunk_to_host(queued)
            yield ids, rows
            left -= len(ids)
            # a short chunk ended at EOS or the limit; a chunk queued after it runs no step
            if len(ids) < chunk or left == 0 or following is None:
                return
            queued = following


def generate(
    runner,
    prompt_tokens,
    max_new_tokens: int,
    *,
    stop_at_eos: bool = True,
    keep_logits: bool = False,
    chunk: int | None = DECODE_CHUNK,
) -> Generation:
    """Greedy decoding of up to ``max_new_tokens`` after ``prompt_tokens`` (see :func:`stream`)."""
    out, rows = [], []
    parts = stream(runner, prompt_tokens, max_new_tokens, stop_at_eos=stop_at_eos, keep_logits=keep_logits, chunk=chunk)
    for ids, part_rows in parts:
        out.extend(ids)
        if keep_logits:
            rows.append(part_rows)
    return Generation([int(t) for t in prompt_tokens], out, np.concatenate(rows) if keep_logits else None)
