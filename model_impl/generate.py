"""Greedy generation over a backend that keeps weights and the KV cache on its device.

Only the chosen token id crosses back to the host each step (plus the logits row when
the caller asks for them). Prompts are padded to a power-of-two bucket so that one
compiled prefill serves many prompt lengths.
"""

from __future__ import annotations

import dataclasses
import time

import jax
import jax.numpy as jnp
import numpy as np

from . import model
from .config import Config
from .graphs import GRAPH_FUNCTIONS, graph_args
from .weights import Weights

BACKENDS = ("xla-cpu", "iree-cpu", "xla-cuda", "iree-cuda")
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


class XlaRunner:
    """JAX/XLA on one device: weights put there once; the cache is donated step to step.

    Steps run through ``jax.jit`` (its C++ dispatch path: an ahead-of-time ``Compiled`` call
    costs milliseconds of Python per step with hundreds of weight arguments). The first call
    of each shape compiles; ``compile_seconds`` keeps that first call's time.
    ``executable()`` gives the ahead-of-time compiled graph for its HLO.
    """

    def __init__(self, cfg: Config, weights: Weights, platform: str = "cpu", compiler_options=None):
        self.cfg = cfg
        self.compiler_options = dict(compiler_options or {})
        self.backend = f"xla-{platform}"
        self.device = jax.devices(platform)[0]
        self.weights = jax.device_put(weights, self.device)
        self.cache = None
        self.compile_seconds: dict[str, float] = {}
        self._executables = {}
        self._jitted = {g: self._jit(f) for g, f in GRAPH_FUNCTIONS.items()}
        self._seen = set()

    def _jit(self, fn):
        return jax.jit(fn, static_argnums=0, donate_argnums=4,
                       compiler_options=self.compiler_options or None)

    def _call(self, graph: str, shape_key, *args):
        first = (graph, shape_key) not in self._seen
        start = time.perf_counter()
        out = self._jitted[graph](self.cfg, self.weights, *args)
        if first:
            jax.block_until_ready(out)
            self.compile_seconds[graph] = time.perf_counter() - start
            self._seen.add((graph, shape_key))
        return out

    def lowered(self, graph: str, bucket: int, max_seq: int):
        """The jitted ``graph`` ("prefill" or "decode") lowered for these shapes."""
        _, first, pos, cache = graph_args(self.cfg, None, graph, bucket, max_seq)
        return self._jit(GRAPH_FUNCTIONS[graph]).lower(self.cfg, self.weights, first, pos, cache)

    def executable(self, graph: str, bucket: int, max_seq: int):
        """The graph compiled ahead of time for these shapes (for its HLO and memory analysis)."""
        key = (graph, bucket if graph == "prefill" else None, max_seq)
        if key not in self._executables:
            self._executables[key] = self.lowered(graph, bucket, max_seq).compile()
        return self._executables[key]

    def prefill(self, padded_tokens: np.ndarray, length: int, max_seq: int):
        cache = jax.device_put(model.KVCache.zeros(self.cfg, max_seq), self.device)
        tokens = jax.device_put(jnp.asarray(padded_tokens, jnp.int32), self.device)
        self._max_seq = max_seq
        token, logits, self.cache = self._call("prefill", (len(padded_tokens), max_seq), tokens,
                                               jax.device_put(np.int32(length), self.device), cache)
        return token, logits

    def reset(self, max_seq: int) -> None:
        """An empty KV cache of ``max_seq`` slots, for decoding without a prefill."""
        self._max_seq = max_seq
        self.cache = jax.device_put(model.KVCache.zeros(self.cfg, max_seq), self.device)

    def put_token(self, token_id: int):
        return jax.device_put(np.int32(token_id), self.device)

    def decode(self, token, pos: int):
        token, logits, self.cache = self._call("decode", self._max_seq, token,
                                               jax.device_put(np.int32(pos), self.device), self.cache)
        return token, logits

    @staticmethod
    def token_id(token) -> int:
        return int(token)

    @staticmethod
    def logits_row(logits) -> np.ndarray:
        return np.asarray(logits, np.float32)


def make_runner(cfg: Config, weights: Weights, backend: str = "xla-cpu", cuda_target: str | None = None,
                xla_options: dict | None = None, iree_flags=()):
    """A runner for ``backend``; ``cuda_target`` overrides the IREE CUDA target choice;
    ``xla_options`` (XLA debug options) and ``iree_flags`` (iree-compile flags) go to the
    compiler of the backend they name."""
    if backend in ("xla-cpu", "xla-cuda"):
        return XlaRunner(cfg, weights, platform=backend.split("-")[1], compiler_options=xla_options)
    if backend == "iree-cpu":
        from .iree_backend import IreeRunner

        return IreeRunner(cfg, weights, target="llvm-cpu", driver="local-task", backend=backend,
                          extra_flags=iree_flags)
    if backend == "iree-cuda":
        from .iree_backend import IreeRunner, cuda_target_for_device

        target = cuda_target or cuda_target_for_device()
        return IreeRunner(cfg, weights, target="cuda", driver="cuda", cuda_target=target, backend=backend,
                          extra_flags=iree_flags)
    raise ValueError(f"unknown backend {backend!r}; available: {BACKENDS}")


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
    if max(prompt) >= cfg.vocab_size or min(prompt) < 0:
        raise ValueError(f"prompt token ids must be in [0, {cfg.vocab_size})")
    padded = np.zeros(prompt_bucket(len(prompt)), np.int32)
    padded[: len(prompt)] = prompt
    token, logits = runner.prefill(padded, len(prompt), cache_length(len(prompt), max_new_tokens))
    out, rows = [], []
    for step in range(max_new_tokens):
        tid = runner.token_id(token)  # the only device -> host transfer of a step
        out.append(tid)
        if keep_logits:
            rows.append(runner.logits_row(logits))
        if (stop_at_eos and tid in cfg.eos_token_ids) or step == max_new_tokens - 1:
            break
        token, logits = runner.decode(token, len(prompt) + step)
    return Generation(prompt, out, np.stack(rows) if keep_logits else None)
