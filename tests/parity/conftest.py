"""Fixtures of the MLX peer files (float32 checkpoints in test_mlx_peer.py, half-precision ones in
test_mlx_peer_half.py, so the two run side by side): mlx_lm's conversions of the real model,
our greedy runs of them and mlx_lm's."""

from __future__ import annotations

import pytest

from model_impl import checkpoints
from model_impl.backends import generate
from model_impl.checks import GREEDY_TOKENS, mlx_peer


def variants(dtypes) -> dict:
    """``@pytest.mark.parametrize(**variants(...))`` over the mlx_checkpoint fixture."""
    chosen = [v for v in mlx_peer.VARIANTS if v[0] in dtypes]
    return {
        "argnames": "mlx_checkpoint",
        "argvalues": chosen,
        "ids": [mlx_peer.variant_name(*v) for v in chosen],
        "indirect": True,
        "scope": "session",
    }


@pytest.fixture(scope="session")
def real_hf_dir(tmp_path_factory):
    return mlx_peer.write_hf_dir(None, tmp_path_factory.mktemp("smollm2-hf") / "hf")


@pytest.fixture(scope="session")
def mlx_checkpoint(request, real_hf_dir, tmp_path_factory):
    """(path, dtype, bits, group) of mlx_lm.convert's checkpoint of the real model."""
    dtype, bits, group = request.param
    dest = tmp_path_factory.mktemp("mlx") / mlx_peer.variant_name(dtype, bits, group)
    return mlx_peer.convert(real_hf_dir, dest, bits, group, dtype), dtype, bits, group


@pytest.fixture(scope="session")
def peer_runs(prompt_ids):
    """mlx_lm's greedy run, up to where it parts from ours (nothing after is compared). On a
    half-precision checkpoint the comparison reads the peer's tokens only: recorded under this
    environment's key (mlx_peer.RECORDED) where there is one, live otherwise."""
    cache = {}

    def run(path, ours, dtype="float32"):
        key = (path, tuple(ours.tokens))
        if key not in cache:
            if dtype == "float32":
                cache[key] = mlx_peer.greedy(path, prompt_ids, GREEDY_TOKENS, until_parting_from=ours.tokens)
            else:
                cache[key] = mlx_peer.greedy_tokens(path, prompt_ids, GREEDY_TOKENS, until_parting_from=ours.tokens)
        return cache[key]

    return run


@pytest.fixture(scope="session")
def our_runs(prompt_ids):
    cache = {}

    def run(path, backend):
        if (path, backend) not in cache:
            cfg, weights = checkpoints.load(path, "int4")
            runner = generate.make_runner(cfg, weights, backend)
            cache[path, backend] = generate.generate(
                runner, prompt_ids, GREEDY_TOKENS, stop_at_eos=False, keep_logits=True
            )
        return cache[path, backend]

    return run


def assert_agrees(mlx_checkpoint, backend, our_runs, peer_runs):
    """Our greedy run on the checkpoint agrees with mlx_lm's, or parts only at a near-tie."""
    path, dtype = mlx_checkpoint[:2]
    ours = our_runs(path, backend)
    pc = mlx_peer.compare(ours, peer_runs(path, ours, dtype), dtype)
    assert pc.agrees, (
        f"{backend} vs mlx_lm ({dtype}): {pc.comparison.agreement}, divergence at "
        f"{pc.comparison.first_divergence} with top-2 gap {pc.top2_gap_at_divergence} "
        f"(near-tie bound {pc.near_tie_bound:g})"
    )


def assert_loads_packed(mlx_checkpoint):
    """mlx_lm quantizes what its group divides (at group 128 the 576-wide inputs stay float)."""
    import numpy as np

    from model_impl.llama.linears import QuantizedLinear
    from model_impl.llama.weights import LINEAR_NAMES

    path, dtype, bits, group = mlx_checkpoint
    cfg, weights = checkpoints.load(path, "int4")
    assert cfg.dtype == dtype  # computed in the dtype it ships in
    tensors = [weights.embed] + [getattr(layer, n) for layer in weights.layers for n in LINEAR_NAMES]
    for w in tensors:
        n_in = w.shape[1]
        if n_in % group == 0:
            assert isinstance(w, QuantizedLinear) and (w.bits, w.group_size) == (bits, group)
        else:
            assert isinstance(w, np.ndarray) and np.dtype(w.dtype).name == dtype
    assert any(isinstance(w, QuantizedLinear) for w in tensors)
    assert weights.lm_head is None  # tied: the head is the (quantized) embedding
