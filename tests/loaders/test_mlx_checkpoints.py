"""The mlx-lm quantized directory loader: dtypes, per-layer overrides, and its errors."""

from __future__ import annotations

import json

import mlx.core as mx
import numpy as np
import pytest

from model_impl import checkpoints, checks
from model_impl.backends import generate
from model_impl.checkpoints import CheckpointError
from model_impl.checks import mlx_peer
from model_impl.llama.linears import QuantizedLinear
from model_impl.llama.weights import dequantize_weights


@pytest.fixture(scope="module")
def converted(tiny_hf_dir, tmp_path_factory):
    made = {}

    def make(dtype="float32", bits=4, group=64, predicate=None, tag=""):
        key = (dtype, bits, group, tag)
        if key not in made:
            dest = tmp_path_factory.mktemp("mlx") / f"{dtype}-{bits}-{group}{tag}"
            made[key] = mlx_peer.convert(tiny_hf_dir, dest, bits, group, dtype, quant_predicate=predicate)
        return made[key]

    return make


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_loaded_tensors_equal_what_mlx_loads(converted, dtype):
    path = converted(dtype)
    _, weights = checkpoints.load(path, "int4")
    ref = mx.load(str(path / "model.safetensors"))
    layer = weights.layers[1]
    for name, w in (("model.layers.1.mlp.down_proj", layer.w_down), ("model.embed_tokens", weights.embed)):
        assert isinstance(w, QuantizedLinear) and str(np.asarray(w.scales).dtype) == dtype
        np.testing.assert_array_equal(w.packed, np.array(ref[f"{name}.weight"]))
        for part in ("scales", "biases"):
            ours = np.asarray(getattr(w, part)).astype(np.float32)
            np.testing.assert_array_equal(ours, np.array(ref[f"{name}.{part}"].astype(mx.float32)))


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_precision_checkpoint_runs_in_its_dtype_in_graph_like_host_dequant(converted, dtype):
    cfg, weights = checkpoints.load(converted(dtype), "int4")
    assert cfg.dtype == dtype  # as stored: mlx-community f16/bf16 checkpoints compute in it
    ids = [1, 5, 9, 33, 7]
    runs = [
        generate.generate(generate.make_runner(cfg, w, "xla-cpu"), ids, 6, stop_at_eos=False, keep_logits=True)
        for w in (weights, dequantize_weights(weights, dtype))
    ]
    verdict = checks.greedy_agreement(*runs, checks.near_tie_gap(dtype))
    atol = checks.in_graph_vs_host_dequant_atol(dtype, checks.xla_cpu_half_rounding(dtype) == checks.FMA)
    assert verdict.agrees and verdict.comparison.max_abs_logit_diff <= atol


def test_mlx_peer_names_a_config_field_mlx_lm_reads_differently(converted, tmp_path):
    """transformers 5 writes rope_theta only inside rope_parameters; mlx_lm 0.32 reads only the
    top-level key and silently runs theta 10000. The peer reports it by name."""
    import shutil

    path = shutil.copytree(converted(), tmp_path / "rope-parameters")
    assert mlx_peer.config_differences(path) == {}
    config = json.loads((path / "config.json").read_text())
    theta = config.pop("rope_theta")
    config["rope_parameters"] = {"rope_type": "default", "rope_theta": theta}
    config.pop("rope_scaling", None)
    (path / "config.json").write_text(json.dumps(config))
    diff = mlx_peer.config_differences(path)
    assert set(diff) >= {"rope_theta"} and diff["rope_theta"][0] == theta, diff


def test_per_layer_override_is_honoured_and_agrees_with_mlx_lm(converted):
    def predicate(path, module, *_):
        return {"group_size": 32, "bits": 8} if path == "model.layers.0.mlp.down_proj" else True

    path = converted(predicate=predicate, tag="-mixed")
    config = json.loads((path / "config.json").read_text())
    assert config["quantization"]["model.layers.0.mlp.down_proj"]["bits"] == 8
    cfg, weights = checkpoints.load(path, "int4")
    assert (weights.layers[0].w_down.bits, weights.layers[0].w_down.group_size) == (8, 32)
    assert (weights.layers[1].w_down.bits, weights.layers[1].w_down.group_size) == (4, 64)
    ids = [1, 5, 9, 33, 7]
    ours = generate.generate(
        generate.make_runner(cfg, weights, "xla-cpu"), ids, 12, stop_at_eos=False, keep_logits=True
    )
    pc = mlx_peer.compare(ours, mlx_peer.greedy(path, ids, 12))
    assert pc.agrees and max(pc.comparison.per_step_max_abs_diff) <= checks.FP32_REORDERING_ATOL


def _edit_config(path, **quantization):
    config = json.loads((path / "config.json").read_text())
    config["quantization"].update(quantization)
    (path / "config.json").write_text(json.dumps(config))


@pytest.fixture
def mlx_copy(converted, tmp_path):
    import shutil

    return shutil.copytree(converted(), tmp_path / "copy")


def test_unsupported_mode_is_a_clear_error(mlx_copy):
    _edit_config(mlx_copy, mode="mxfp4")
    with pytest.raises(CheckpointError, match=r"config\.json: quantization mode 'mxfp4' is not supported"):
        checkpoints.load(mlx_copy, "int4")


def test_unsupported_bits_is_a_clear_error(mlx_copy):
    _edit_config(mlx_copy, bits=3)
    with pytest.raises(CheckpointError, match=r"quantization of default: bits must be one of"):
        checkpoints.load(mlx_copy, "int4")


@pytest.mark.parametrize(
    "part, message",
    [
        ("biases", r"tensor 'model\.layers\.0\.self_attn\.o_proj\.biases' is missing"),
        (
            "scales",
            r"tensor 'model\.layers\.0\.self_attn\.o_proj\.weight' is packed \(uint32\) but "
            r"'model\.layers\.0\.self_attn\.o_proj\.scales' is missing",
        ),
    ],
)
def test_missing_companion_tensor_is_a_clear_error(mlx_copy, part, message):
    from safetensors.numpy import load_file, save_file

    f = mlx_copy / "model.safetensors"
    tensors = load_file(str(f))
    del tensors[f"model.layers.0.self_attn.o_proj.{part}"]
    save_file(tensors, str(f), metadata={"format": "mlx"})
    index = mlx_copy / "model.safetensors.index.json"
    if index.exists():
        index.unlink()
    with pytest.raises(CheckpointError, match=message):
        checkpoints.load(mlx_copy, "int4")
