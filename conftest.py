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

from model_impl.llama.graphs import DECODE_CHUNK  # noqa: E402
from model_impl.llama.sharding import host_devices  # noqa: E402
from model_impl.llama.weights import QUANT_ALIASES  # noqa: E402

ROOT = Path(__file__).parent
CACHE_DIR = Path(os.environ.get("MODEL_IMPL_CACHE", ROOT / ".cache"))

# Two CPU devices, so the tensor-parallel tests run XLA's partitioner on the CPU (set before JAX
# starts its CPU client, below; one-device tests use the first).
host_devices(2)

# CPU tests run on the CPU even where a GPU is present; CUDA tests ask for it by name.
jax.config.update("jax_default_device", jax.devices("cpu")[0])

# Persistent XLA compilation cache: a second local run skips recompiling, every graph (the
# tiny-shape matrix and verdict runs compile a hundred graphs of under a second each). Set in the
# environment too, so the CLI tests' subprocesses share it.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", str(CACHE_DIR / "jax"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
jax.config.update("jax_compilation_cache_dir", os.environ["JAX_COMPILATION_CACHE_DIR"])
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)

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


# The files that take longest on a cold 2-core run (README, CI paragraph), handed out first so the
# two workers finish together: `make test` runs xdist with --dist loadfile --no-loadscope-reorder,
# which gives out whole files in collection order; the others follow in theirs.
LONGEST_FIRST = (
    "tests/parity/test_mlx_peer_half.py",
    "tests/parity/test_mlx_peer.py",
    "tests/backends/test_decode_loop.py",
    "tests/parity/test_half_precision.py",
    "benchmarks/test_decode.py",
    "tests/cli/test_cli.py",
    "tests/report/test_report_path.py",
    "tests/parallel/test_tensor_parallel.py",
    "tests/decide/test_verdict_run.py",
    "tests/parity/test_int4_forms_parity.py",
)


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.nodeid.split("::")[0], len(rank)))
    cuda_items = [item for item in items if item.get_closest_marker("cuda") is not None]
    reason = cuda_unavailable_reason() if cuda_items else None
    if reason:
        for item in cuda_items:
            item.add_marker(pytest.mark.skip(reason=f"cuda: {reason}"))


@pytest.fixture(scope="session")
def real_model():
    """(Config, fp32 Weights) of the embedded SmolLM2-135M-Instruct GGUF."""
    from model_impl import checkpoints

    return checkpoints.load()


@pytest.fixture(scope="session")
def real_model_int4(real_model):
    """The real model with its 7 linears per layer quantized at load time (group 64, 4 bits)."""
    from model_impl.llama.weights import quantize_weights

    cfg, weights = real_model
    return cfg, quantize_weights(weights)


@pytest.fixture(scope="session")
def tokenizer():
    from model_impl import checkpoints

    return checkpoints.load_tokenizer()


@pytest.fixture(scope="session")
def prompt_ids(tokenizer):
    from model_impl.checks import REFERENCE_PROMPT

    return tokenizer(REFERENCE_PROMPT).input_ids


@pytest.fixture(scope="session")
def tiny_hf_dir(tmp_path_factory):
    """A shrunk Llama-3.2-layout checkpoint (2 layers, seeded weights) with a word-level
    tokenizer of its vocabulary: what mlx_lm.convert and transformers need of a directory."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from model_impl import checkpoints
    from model_impl.llama.shapes import shrunk_llama32_config
    from model_impl.llama.weights import synthetic

    cfg = shrunk_llama32_config()
    directory = checkpoints.save_hf_dir(cfg, synthetic(cfg, seed=7), tmp_path_factory.mktemp("tiny") / "hf")
    vocab = {f"t{i}": i for i in range(cfg.vocab_size)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="t0"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="t1", eos_token="t2").save_pretrained(str(directory))
    return directory


class GreedyRuns:
    """The real model's greedy runs, each made once per session: ``get(backend, weights, dtype)``
    with ``weights`` one of :attr:`WEIGHTS` and ``dtype`` the compute dtype (the GGUF decoded to
    float32, then cast); returns the run (48 tokens and the logits that chose them) and what its
    runner reported (compile seconds, IREE CUDA target)."""

    WEIGHTS = {
        "dense": "the GGUF's weights decoded to float32, cast to the compute dtype",
        "int4": "the 7 linears per layer quantized at load time (in the compute dtype), dequantized in-graph",
        "host-dequant": "the same int4 weights dequantized on the host in the compute dtype, through the dense graph",
    }

    def __init__(self, request):
        self._request, self._runs, self._models = request, {}, {}

    def model(self, weights: str, dtype: str = "float32"):  # weights: WEIGHTS, or "fp32" for "dense"
        """(Config, Weights) of the real model in ``dtype``; ``weights`` as in :attr:`WEIGHTS`."""
        weights = QUANT_ALIASES.get(weights, weights)
        if weights not in self.WEIGHTS:
            raise ValueError(f"unknown weights {weights!r}; known: {sorted(self.WEIGHTS)}")
        if (weights, dtype) not in self._models:
            from model_impl.llama.weights import dequantize_weights

            quant = "dense" if weights == "dense" else "int4"
            if dtype == "float32":
                cfg, model = self._request.getfixturevalue("real_model" if quant == "dense" else "real_model_int4")
            else:
                from model_impl import checkpoints

                cfg, model = checkpoints.load(None, quant, dtype)
            if weights == "host-dequant":
                model = dequantize_weights(model, dtype)
            self._models[weights, dtype] = (cfg, model)
        return self._models[weights, dtype]

    def get(self, backend: str, weights: str, dtype: str = "float32", chunk: int | None = DECODE_CHUNK):
        """``chunk``: steps per dispatch of the device decode loop (the default, as ``generate``
        serves), or None for the per-step path."""
        weights = QUANT_ALIASES.get(weights, weights)
        key = (backend, weights, dtype, chunk)
        if key not in self._runs:
            self._runs[key] = self._shared(key, lambda: self._make(backend, weights, dtype, chunk))
        return self._runs[key]

    def _make(self, backend, weights, dtype, chunk):
        from model_impl.backends import generate
        from model_impl.checks import GREEDY_TOKENS

        runner = generate.make_runner(*self.model(weights, dtype), backend)
        prompt = self._request.getfixturevalue("prompt_ids")
        run = generate.generate(runner, prompt, GREEDY_TOKENS, stop_at_eos=False, keep_logits=True, chunk=chunk)
        info = {
            "compile_seconds": dict(runner.compile_seconds),
            "cuda_target": getattr(runner, "cuda_target", None) if backend == "iree-cuda" else None,
        }
        return run, info

    def _shared(self, key, make):
        """One run per key for the whole `pytest -n` session: the first worker to ask makes it
        (under a file lock) and leaves it in this session's shared temporary directory; the other
        worker reads it. Nothing outlives the session (the directory is this run's)."""
        import pickle

        from model_impl.backends.cache import locked

        shared = self._request.getfixturevalue("session_shared_dir")
        path = shared / ("greedy-" + "-".join(map(str, key)) + ".pkl")
        with locked(path):
            if path.exists():
                return pickle.loads(path.read_bytes())
            value = make()
            tmp = path.with_suffix(".tmp")
            tmp.write_bytes(pickle.dumps(value))
            tmp.replace(path)
            return value

    def run(self, backend: str, weights: str, dtype: str = "float32", chunk: int | None = DECODE_CHUNK):
        return self.get(backend, weights, dtype, chunk)[0]


@pytest.fixture(scope="session")
def session_shared_dir(tmp_path_factory, worker_id):
    """A directory of this test session that every xdist worker of it sees (the workers' base
    temporary directories are siblings under the session's); without xdist, the session's own."""
    base = tmp_path_factory.getbasetemp()
    shared = (base.parent if worker_id != "master" else base) / "shared"
    shared.mkdir(exist_ok=True)
    return shared


@pytest.fixture(scope="session")
def greedy_runs(request):
    """The one memoized "greedy run of the real model on backend X with weights Y"."""
    return GreedyRuns(request)


@pytest.fixture(scope="session")
def hf_reference(prompt_ids):
    """transformers' own LlamaForCausalLM on the same GGUF (torch, fp32, CPU): its prompt logits,
    its greedy 48 tokens and the logits that chose them; live where torch is installed, rebuilt
    from the saved reference where not (model_impl/checks/reference.py)."""
    from model_impl.checks import GREEDY_TOKENS
    from model_impl.checks.reference import run

    return run(None, "float32", prompt_ids, GREEDY_TOKENS)
