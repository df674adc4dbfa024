"""One frozen model configuration, built from an HF ``config.json`` or GGUF metadata."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np

ROPE_TYPES = ("default", "llama3")
# The compute dtypes: activations, unquantized weights, the KV cache and dequantized int4
# weights are in one of these; matmuls accumulate in float32 whatever it is.
DTYPES = ("float32", "bfloat16", "float16")
# The real Llama-3.2-1B config.json (the target model; its weights are not shipped).
LLAMA32_CONFIG_PATH = Path(__file__).resolve().parents[1] / "data" / "llama-3.2-1b-config.json"


class ConfigError(ValueError):
    """A configuration this implementation cannot run; the message names the source."""


@dataclasses.dataclass(frozen=True)
class RopeScaling:
    """Llama 3 frequency-dependent RoPE scaling (HF ``rope_type: llama3``)."""

    factor: float
    low_freq_factor: float
    high_freq_factor: float
    original_max_position_embeddings: int


@dataclasses.dataclass(frozen=True)
class Config:
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float
    rope_theta: float
    rope_scaling: RopeScaling | None
    tie_word_embeddings: bool
    max_position_embeddings: int
    bos_token_id: int | None = None
    eos_token_ids: tuple[int, ...] = ()
    dtype: str = "float32"  # the compute dtype, one of DTYPES
    # The embedding lookup's form: 1, a gather from one table; N, the vocab-parallel form for a
    # table sharded in N row blocks (model.embed; set by the tensor-parallel runners).
    vocab_shards: int = 1

    def __post_init__(self):
        if self.vocab_shards < 1 or self.vocab_size % self.vocab_shards:
            raise ConfigError(f"vocab_size {self.vocab_size} does not split into {self.vocab_shards} row blocks")
        if self.dtype not in DTYPES:
            raise ConfigError(f"dtype {self.dtype!r} is not one of {DTYPES}")
        if self.num_heads % self.num_kv_heads:
            raise ConfigError(
                f"num_attention_heads {self.num_heads} is not a multiple of num_key_value_heads {self.num_kv_heads}"
            )
        if self.head_dim % 2:
            raise ConfigError(f"head_dim {self.head_dim} must be even for RoPE")

    @property
    def jnp_dtype(self):
        """The compute dtype as a numpy/JAX dtype (bfloat16 from ml_dtypes)."""
        return np_dtype(self.dtype)

    @property
    def q_size(self) -> int:
        return self.num_heads * self.head_dim

    @property
    def kv_size(self) -> int:
        return self.num_kv_heads * self.head_dim

    def to_hf_dict(self) -> dict:
        """The HF ``config.json`` of this configuration (LlamaForCausalLM)."""
        d = {
            "architectures": ["LlamaForCausalLM"],
            "model_type": "llama",
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_layers,
            "num_attention_heads": self.num_heads,
            "num_key_value_heads": self.num_kv_heads,
            "head_dim": self.head_dim,
            "rms_norm_eps": self.rms_norm_eps,
            "rope_theta": self.rope_theta,
            "rope_scaling": None,
            "tie_word_embeddings": self.tie_word_embeddings,
            "max_position_embeddings": self.max_position_embeddings,
            "hidden_act": "silu",
            "attention_bias": False,
            "mlp_bias": False,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": list(self.eos_token_ids) if len(self.eos_token_ids) != 1 else self.eos_token_ids[0],
            "torch_dtype": self.dtype,
        }
        if self.rope_scaling is not None:
            d["rope_scaling"] = {"rope_type": "llama3", **dataclasses.asdict(self.rope_scaling)}
        return d


def np_dtype(name: str) -> np.dtype:
    """``"bfloat16"`` and the other names of :data:`DTYPES` as numpy dtypes."""
    import ml_dtypes

    if name not in DTYPES:
        raise ConfigError(f"dtype {name!r} is not one of {DTYPES}")
    return np.dtype(ml_dtypes.bfloat16) if name == "bfloat16" else np.dtype(name)


def from_hf_dict(d: dict, source: str = "config.json") -> Config:
    """Build a :class:`Config` from an HF Llama ``config.json`` dict."""

    def need(key):
        if key not in d:
            raise ConfigError(f"{source}: missing key {key!r}")
        return d[key]

    if d.get("model_type", "llama") != "llama":
        raise ConfigError(f"{source}: model_type {d.get('model_type')!r} is not 'llama'")
    if d.get("hidden_act", "silu") != "silu":
        raise ConfigError(f"{source}: hidden_act {d['hidden_act']!r} is not 'silu'")
    for key in ("attention_bias", "mlp_bias"):
        if d.get(key):
            raise ConfigError(f"{source}: {key}=true is not supported")
    rs = d.get("rope_scaling") or d.get("rope_parameters")
    scaling = None
    if rs is not None:
        rope_type = rs.get("rope_type", rs.get("type", "default"))
        if rope_type not in ROPE_TYPES:
            raise ConfigError(f"{source}: unknown rope_scaling type {rope_type!r}; supported: {ROPE_TYPES}")
        if rope_type == "llama3":
            try:
                scaling = RopeScaling(
                    factor=float(rs["factor"]),
                    low_freq_factor=float(rs["low_freq_factor"]),
                    high_freq_factor=float(rs["high_freq_factor"]),
                    original_max_position_embeddings=int(rs["original_max_position_embeddings"]),
                )
            except KeyError as e:
                raise ConfigError(f"{source}: llama3 rope_scaling lacks {e.args[0]!r}") from None
    hidden = int(need("hidden_size"))
    heads = int(need("num_attention_heads"))
    eos = d.get("eos_token_id")
    eos_ids = tuple(eos) if isinstance(eos, list) else (() if eos is None else (int(eos),))
    return Config(
        vocab_size=int(need("vocab_size")),
        hidden_size=hidden,
        intermediate_size=int(need("intermediate_size")),
        num_layers=int(need("num_hidden_layers")),
        num_heads=heads,
        num_kv_heads=int(d.get("num_key_value_heads") or heads),
        head_dim=int(d.get("head_dim") or hidden // heads),
        rms_norm_eps=float(d.get("rms_norm_eps", 1e-6)),
        rope_theta=float((rs or {}).get("rope_theta", d.get("rope_theta", 10000.0))),
        rope_scaling=scaling,
        tie_word_embeddings=bool(d.get("tie_word_embeddings", False)),
        max_position_embeddings=int(d.get("max_position_embeddings", 2048)),
        bos_token_id=d.get("bos_token_id"),
        eos_token_ids=eos_ids,
    )


def load_hf_config(path: str | Path) -> Config:
    path = Path(path)
    try:
        d = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ConfigError(f"{path}: cannot read config: {e}") from None
    return from_hf_dict(d, source=str(path))


def rope_inv_freq(cfg: Config) -> np.ndarray:
    """Per-pair inverse frequencies ``[head_dim // 2]`` float32, as transformers computes them."""
    dim = cfg.head_dim
    exponents = np.arange(0, dim, 2, dtype=np.int64).astype(np.float32) / np.float32(dim)
    inv_freq = (1.0 / (np.float32(cfg.rope_theta) ** exponents)).astype(np.float32)
    s = cfg.rope_scaling
    if s is None:
        return inv_freq
    # Llama 3: long wavelengths divided by `factor`, short ones kept, the band between
    # interpolated smoothly (transformers' _compute_llama3_parameters).
    low_freq_wavelen = s.original_max_position_embeddings / s.low_freq_factor
    high_freq_wavelen = s.original_max_position_embeddings / s.high_freq_factor
    wavelen = (2 * math.pi / inv_freq).astype(np.float32)
    scaled = np.where(wavelen > low_freq_wavelen, inv_freq / s.factor, inv_freq)
    smooth = (s.original_max_position_embeddings / wavelen - s.low_freq_factor) / (
        s.high_freq_factor - s.low_freq_factor
    )
    smoothed = (1 - smooth) * scaled / s.factor + smooth * scaled
    medium = ~(wavelen < high_freq_wavelen) & ~(wavelen > low_freq_wavelen)
    return np.where(medium, smoothed, scaled).astype(np.float32)
