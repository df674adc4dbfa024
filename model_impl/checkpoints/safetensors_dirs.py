"""Safetensors directories: HF Llama checkpoints (single or sharded), mlx-lm quantized
directories (packed codes kept packed), and the writer the tests and the MLX peer use."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .. import quant
from ..llama import config as config_mod
from ..llama.config import Config, ConfigError, np_dtype
from ..llama.linears import QuantizedLinear
from ..llama.weights import Weights
from .common import GLOBAL_NAMES, HF, LAYER_NAMES, CheckpointError, assemble, checked


def safetensors_files(directory: Path) -> dict[str, Path]:
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
            return {name: single for name in f.keys()}  # noqa: SIM118  (safe_open is no dict)
    except Exception as e:
        raise CheckpointError(f"{single}: not a readable safetensors file ({e})") from None


def load_hf_dir(directory: str | Path) -> tuple[Config, Weights]:
    from safetensors import safe_open

    directory = Path(directory)
    try:
        cfg = config_mod.load_hf_config(directory / "config.json")
    except ConfigError as e:
        raise CheckpointError(str(e)) from None
    where = safetensors_files(directory)
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
        return checked(file, name, array, shape)

    try:
        return cfg, assemble(cfg, get, HF)
    finally:
        handles.clear()


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
            quant.check_format(
                int(params.get("bits", default["bits"])), int(params.get("group_size", default["group_size"]))
            )
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
    where = safetensors_files(directory)
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
                raise CheckpointError(
                    f"{file}: tensor {name!r} is packed (uint32) but {module + '.scales'!r} is missing"
                )
            return checked(file, name, w, shape)
        if f"{module}.biases" not in where:
            raise CheckpointError(
                f"{file}: tensor {module + '.biases'!r} is missing (affine mode "
                f"needs a bias per group beside {module + '.scales'!r})"
            )
        params = overrides.get(module)
        params = {**default, **params} if isinstance(params, dict) else default
        bits, group = int(params["bits"]), int(params["group_size"])
        _, scales = read(f"{module}.scales")
        _, biases = read(f"{module}.biases")
        words = shape[1] * bits // 32
        if w.dtype != np.uint32 or tuple(w.shape) != (shape[0], words):
            raise CheckpointError(
                f"{file}: tensor {name!r} is {w.dtype}{tuple(w.shape)}, expected "
                f"uint32{(shape[0], words)} for {bits}-bit codes of a {tuple(shape)} weight"
            )
        want = (shape[0], shape[1] // group)
        for tname, t in ((f"{module}.scales", scales), (f"{module}.biases", biases)):
            if tuple(t.shape) != want or t.dtype not in quant.FLOAT_DTYPES:
                raise CheckpointError(
                    f"{file}: tensor {tname!r} is {t.dtype}{tuple(t.shape)}, expected "
                    f"float32/float16/bfloat16{want} (group {group})"
                )
            if not np.isfinite(t.astype(np.float32)).all():
                raise CheckpointError(f"{file}: tensor {tname!r} contains NaN or Inf")
        return QuantizedLinear(w, scales, biases, group, bits)

    try:
        return cfg, assemble(cfg, get, HF)
    finally:
        handles.clear()


def save_hf_dir(cfg: Config, weights: Weights, directory: str | Path, dtype=np.float32) -> Path:
    """Write ``weights`` as an HF Llama checkpoint (config.json + model.safetensors), every
    tensor in ``dtype`` (a numpy dtype or a name: float32, bfloat16, float16)."""
    from safetensors.numpy import save_file

    dtype = np_dtype(dtype) if isinstance(dtype, str) else np.dtype(dtype)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {}
    for i, layer in enumerate(weights.layers):
        for field, names in LAYER_NAMES.items():
            tensors[names[HF].format(i=i)] = np.asarray(getattr(layer, field)).astype(dtype)
    tensors[GLOBAL_NAMES["embed"][HF]] = np.asarray(weights.embed).astype(dtype)
    tensors[GLOBAL_NAMES["final_norm"][HF]] = np.asarray(weights.final_norm).astype(dtype)
    if weights.lm_head is not None:
        tensors[GLOBAL_NAMES["lm_head"][HF]] = np.asarray(weights.lm_head).astype(dtype)
    save_file(tensors, str(directory / "model.safetensors"), metadata={"format": "pt"})
    hf = cfg.to_hf_dict()
    hf["torch_dtype"] = dtype.name
    (directory / "config.json").write_text(json.dumps(hf, indent=2))
    return directory
