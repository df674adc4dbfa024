"""Suite-wide set-up: offline hub, deterministic hypothesis, shared real-model fixtures.

Expensive things (loading the 135M model, compiling its graphs, 48-token runs) happen
once per session in the fixtures below and are shared by every test that needs them.
"""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import jax  # noqa: E402
import pytest  # noqa: E402
from hypothesis import HealthCheck, settings  # noqa: E402

ROOT = Path(__file__).parent
CACHE_DIR = Path(os.environ.get("MODEL_IMPL_CACHE", ROOT / ".cache"))

# CPU tests run on the CPU even where a GPU is present; CUDA tests ask for it by name.
jax.config.update("jax_default_device", jax.devices("cpu")[0])

# Persistent XLA compilation cache: a second local run skips recompiling the real model.
jax.config.update("jax_compilation_cache_dir", str(CACHE_DIR / "jax"))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)

# "ci" is deterministic (derandomized: the same examples on every run and machine), and the
# default; HYPOTHESIS_PROFILE=dev explores new random examples.
settings.register_profile(
    "ci",
    derandomize=True,
    deadline=None,
    max_examples=60,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile("dev", deadline=None, max_examples=300)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


def cuda_unavailable_reason() -> str | None:
    """Why CUDA tests cannot run here, or None when a CUDA device is usable."""
    try:
        devices = jax.devices("cuda")
    except RuntimeError as e:
        return f"no CUDA device usable by JAX ({str(e).splitlines()[0]})"
    return None if devices else "no CUDA device found by JAX"


def pytest_collection_modifyitems(config, items):
    cuda_items = [item for item in items if item.get_closest_marker("cuda") is not None]
    reason = cuda_unavailable_reason() if cuda_items else None
    if reason:
        for item in cuda_items:
            item.add_marker(pytest.mark.skip(reason=f"cuda: {reason}"))


@pytest.fixture(scope="session")
def real_model():
    """(Config, fp32 Weights) of the embedded SmolLM2-135M-Instruct GGUF."""
    from model_impl import checkpoint

    return checkpoint.load()


@pytest.fixture(scope="session")
def real_model_int4(real_model):
    """The real model with its 7 linears per layer quantized at load time (group 64, 4 bits)."""
    from model_impl.weights import quantize_weights

    cfg, weights = real_model
    return cfg, quantize_weights(weights)


@pytest.fixture(scope="session")
def tokenizer():
    from model_impl import checkpoint

    return checkpoint.load_tokenizer()


@pytest.fixture(scope="session")
def prompt_ids(tokenizer):
    from model_impl.checks import REFERENCE_PROMPT

    return tokenizer(REFERENCE_PROMPT).input_ids


def _greedy_on(backend, cfg, weights, prompt_ids):
    from model_impl import generate
    from model_impl.checks import GREEDY_TOKENS

    runner = generate.make_runner(cfg, weights, backend)
    return generate.generate(runner, prompt_ids, GREEDY_TOKENS, stop_at_eos=False, keep_logits=True)


@pytest.fixture(scope="session")
def fp32_run(real_model, prompt_ids):
    """48 greedy tokens (and their logits) of the real model in fp32 on XLA-CPU."""
    return _greedy_on("xla-cpu", *real_model, prompt_ids)


@pytest.fixture(scope="session")
def int4_run(real_model_int4, prompt_ids):
    """48 greedy tokens of the real model with packed int4 weights dequantized in-graph."""
    return _greedy_on("xla-cpu", *real_model_int4, prompt_ids)


@pytest.fixture(scope="session")
def host_dequant_run(real_model_int4, prompt_ids):
    """The same int4 weights dequantized on the host, run through the fp32 graph."""
    from model_impl.weights import dequantize_weights

    cfg, weights = real_model_int4
    return _greedy_on("xla-cpu", cfg, dequantize_weights(weights), prompt_ids)


@pytest.fixture(scope="session")
def hf_real_model():
    """transformers' own LlamaForCausalLM from the same GGUF (torch, fp32, CPU)."""
    from model_impl.reference import transformers_model

    return transformers_model()


@pytest.fixture(scope="session")
def hf_greedy_run(hf_real_model, prompt_ids):
    """transformers' greedy 48 tokens and the logits that chose them."""
    from model_impl.checks import GREEDY_TOKENS
    from model_impl.reference import greedy

    return greedy(hf_real_model, prompt_ids, GREEDY_TOKENS)


@pytest.fixture(scope="session")
def iree_fp32_run(real_model, prompt_ids):
    """The fp32 graph compiled by IREE for llvm-cpu, run on local-task."""
    return _greedy_on("iree-cpu", *real_model, prompt_ids)


@pytest.fixture(scope="session")
def iree_int4_run(real_model_int4, prompt_ids):
    """The int4 graph (in-graph dequant) compiled by IREE for llvm-cpu."""
    return _greedy_on("iree-cpu", *real_model_int4, prompt_ids)
