"""Suite-wide set-up: offline hub, deterministic hypothesis, shared real-model fixtures.

Expensive things (loading the 135M model, compiling its graphs, 48-token runs) happen
once per session in the fixtures below and are shared by every test that needs them.
"""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import pytest  # noqa: E402
from hypothesis import HealthCheck, settings  # noqa: E402

ROOT = Path(__file__).parent
CACHE_DIR = Path(os.environ.get("MODEL_IMPL_CACHE", ROOT / ".cache"))

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


def _greedy(cfg, weights, prompt_ids):
    from model_impl import generate
    from model_impl.checks import GREEDY_TOKENS

    runner = generate.make_runner(cfg, weights, "xla-cpu")
    return generate.generate(
        runner, prompt_ids, GREEDY_TOKENS, stop_at_eos=False, keep_logits=True
    )


@pytest.fixture(scope="session")
def fp32_run(real_model, prompt_ids):
    """48 greedy tokens (and their logits) of the real model in fp32 on XLA-CPU."""
    return _greedy(*real_model, prompt_ids)


@pytest.fixture(scope="session")
def int4_run(real_model_int4, prompt_ids):
    """48 greedy tokens of the real model with packed int4 weights dequantized in-graph."""
    return _greedy(*real_model_int4, prompt_ids)


@pytest.fixture(scope="session")
def host_dequant_run(real_model_int4, prompt_ids):
    """The same int4 weights dequantized on the host, run through the fp32 graph."""
    from model_impl.weights import dequantize_weights

    cfg, weights = real_model_int4
    return _greedy(cfg, dequantize_weights(weights), prompt_ids)


@pytest.fixture(scope="session")
def hf_real_model():
    """transformers' own LlamaForCausalLM from the same GGUF (torch, fp32, CPU)."""
    import torch
    from transformers import AutoModelForCausalLM

    from model_impl import checkpoint

    path = checkpoint.default_model_path()
    model = AutoModelForCausalLM.from_pretrained(
        str(path.parent), gguf_file=path.name, dtype=torch.float32
    )
    return model.eval()
