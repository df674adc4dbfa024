"""Loaders: GGUF (q/k un-permuted), HF safetensors directories, synthetic weights; and the
one clear error each kind of bad input gets."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from model_impl import checkpoints
from model_impl.checkpoints import CheckpointError
from model_impl.llama.config import Config
from model_impl.llama.linears import QuantizedLinear
from model_impl.llama.shapes import shrunk_llama32_config
from model_impl.llama.weights import LINEAR_NAMES, synthetic

ROOT = Path(__file__).resolve().parents[2]

TINY = Config(
    vocab_size=256,
    hidden_size=128,
    intermediate_size=256,
    num_layers=2,
    num_heads=4,
    num_kv_heads=2,
    head_dim=32,
    rope_theta=10000.0,
    rope_scaling=None,
    rms_norm_eps=float(np.float32(1e-5)),  # GGUF stores it as float32
    tie_word_embeddings=False,
    max_position_embeddings=512,
    bos_token_id=1,
    eos_token_ids=(2,),
)


def _llamacpp_permute(w: np.ndarray, n_heads: int) -> np.ndarray:
    """llama.cpp convert_hf_to_gguf's q/k row permutation (HF rotate-half -> GGUF pairs)."""
    rows = w.shape[0]
    return w.reshape(n_heads, 2, rows // n_heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_gguf(path, cfg: Config, weights, *, drop=None, reshape=None):
    """A llama GGUF as llama.cpp's converter writes it (F32 tensors, permuted q/k)."""
    import gguf

    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(cfg.num_layers)
    writer.add_context_length(cfg.max_position_embeddings)
    writer.add_embedding_length(cfg.hidden_size)
    writer.add_feed_forward_length(cfg.intermediate_size)
    writer.add_head_count(cfg.num_heads)
    writer.add_head_count_kv(cfg.num_kv_heads)
    writer.add_rope_freq_base(cfg.rope_theta)
    writer.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    writer.add_vocab_size(cfg.vocab_size)
    tensors = {"token_embd.weight": weights.embed, "output_norm.weight": weights.final_norm}
    if weights.lm_head is not None:
        tensors["output.weight"] = weights.lm_head
    gguf_names = dict(
        attn_norm="attn_norm",
        wq="attn_q",
        wk="attn_k",
        wv="attn_v",
        wo="attn_output",
        mlp_norm="ffn_norm",
        w_gate="ffn_gate",
        w_up="ffn_up",
        w_down="ffn_down",
    )
    for i, layer in enumerate(weights.layers):
        for field, name in gguf_names.items():
            w = np.asarray(getattr(layer, field), np.float32)
            if field == "wq":
                w = _llamacpp_permute(w, cfg.num_heads)
            elif field == "wk":
                w = _llamacpp_permute(w, cfg.num_kv_heads)
            tensors[f"blk.{i}.{name}.weight"] = w
    for name, w in tensors.items():
        if name == drop:
            continue
        if reshape and name in reshape:
            w = np.resize(w, reshape[name])
        writer.add_tensor(name, np.ascontiguousarray(w, np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def assert_same_weights(a, b):
    import jax

    la, lb = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
    assert len(la) == len(lb)
    for x, y in zip(la, lb):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


# --- GGUF ------------------------------------------------------------------------------


def test_gguf_loader_undoes_the_llamacpp_qk_permutation(tmp_path):
    weights = synthetic(TINY, seed=1)
    cfg, loaded = checkpoints.load(write_gguf(tmp_path / "m.gguf", TINY, weights))
    assert cfg == dataclasses.replace(TINY, bos_token_id=None, eos_token_ids=())
    assert_same_weights(loaded, weights)


@pytest.mark.slow
def test_gguf_loader_matches_transformers_tensor_for_tensor(real_model):
    """Every tensor bit for bit: SHA-256 of its float32 bytes against transformers' state dict
    (live where torch is installed, its saved digests where not: model_impl/checks/reference.py)."""
    from model_impl.checks.reference import digest, tensor_digests

    cfg, weights = real_model
    sd = tensor_digests()
    hf_names = dict(
        attn_norm="input_layernorm",
        wq="self_attn.q_proj",
        wk="self_attn.k_proj",
        wv="self_attn.v_proj",
        wo="self_attn.o_proj",
        mlp_norm="post_attention_layernorm",
        w_gate="mlp.gate_proj",
        w_up="mlp.up_proj",
        w_down="mlp.down_proj",
    )
    ours = {"model.embed_tokens.weight": weights.embed, "model.norm.weight": weights.final_norm}
    for i, layer in enumerate(weights.layers):
        for field, name in hf_names.items():
            ours[f"model.layers.{i}.{name}.weight"] = getattr(layer, field)
    differ = [name for name, w in ours.items() if digest(w) != sd[name]]
    assert not differ, f"{len(differ)} tensors differ from transformers', first {differ[:3]}"
    assert weights.lm_head is None and cfg.tie_word_embeddings


TOKENIZER_TEXTS = (
    "The history of the printing press begins",
    "Hello, world! 123  two spaces\ttab\nnewline é ü 中文 <|im_start|>user",
    "  leading spaces",
)


def assert_same_tokenizer(ours, theirs) -> None:
    """Same ids and decoded text on every text, same special tokens, same chat template."""
    for text in TOKENIZER_TEXTS:
        ids = theirs(text).input_ids
        assert ours(text).input_ids == ids and ours.decode(ids) == theirs.decode(ids), text
    assert (ours.bos_token_id, ours.eos_token_id, ours.pad_token_id, ours.unk_token_id) == (
        theirs.bos_token_id, theirs.eos_token_id, theirs.pad_token_id, theirs.unk_token_id
    )  # fmt: skip
    assert len(ours) == len(theirs) and ours.all_special_tokens == theirs.all_special_tokens
    chat = [{"role": "user", "content": "hi"}]
    assert ours.apply_chat_template(chat, tokenize=False) == theirs.apply_chat_template(chat, tokenize=False)


def test_the_gguf_tokenizer_without_torch_is_transformers_own(tokenizer):
    """Where torch is missing, the GGUF's tokenizer is built from the ``gguf`` package's reading
    of its metadata; it encodes, decodes, names its special tokens and renders the chat template
    as transformers' (the ``tokenizer`` fixture: transformers where torch is installed)."""
    assert_same_tokenizer(checkpoints.gguf_tokenizer_without_torch(checkpoints.default_model_path()), tokenizer)


def test_the_cached_gguf_tokenizer_is_the_one_built_from_the_file(tokenizer, tmp_path, monkeypatch):
    """``load_tokenizer`` keeps a GGUF's tokenizer in the artifact cache (the ``tokenizer``
    fixture is that copy): it is the tokenizer built from the file, and a damaged entry (half of
    it, as a partial copy leaves it) is rebuilt, not read (on a copy of the entry: other workers
    read the real one)."""
    from model_impl.backends import cache

    fresh = checkpoints.load_tokenizer(cached=False)
    assert_same_tokenizer(tokenizer, fresh)
    key = checkpoints.tokenizer_cache_key(checkpoints.default_model_path())
    entry = cache.entry_path("tokenizer", key, ".tokenizer")
    monkeypatch.setenv("MODEL_IMPL_CACHE", str(tmp_path))
    copy = cache.entry_path("tokenizer", key, ".tokenizer")
    copy.parent.mkdir(parents=True)
    copy.with_suffix(".json").write_bytes(entry.with_suffix(".json").read_bytes())
    copy.write_bytes(entry.read_bytes()[: entry.stat().st_size // 2])
    assert not cache.intact(copy)
    assert_same_tokenizer(checkpoints.load_tokenizer(), fresh)
    assert cache.intact(copy)


def test_real_gguf_config_is_smollm2_135m(real_model):
    cfg, _ = real_model
    assert (cfg.num_layers, cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads) == (30, 576, 9, 3)
    assert (cfg.intermediate_size, cfg.vocab_size, cfg.tie_word_embeddings) == (1536, 49152, True)


def test_gguf_missing_tensor_names_file_and_tensor(tmp_path):
    path = write_gguf(tmp_path / "m.gguf", TINY, synthetic(TINY), drop="blk.1.ffn_up.weight")
    with pytest.raises(CheckpointError, match=r"m\.gguf: tensor 'blk\.1\.ffn_up\.weight' is missing"):
        checkpoints.load(path)


def test_gguf_wrong_shape_names_file_tensor_and_shapes(tmp_path):
    path = write_gguf(tmp_path / "m.gguf", TINY, synthetic(TINY), reshape={"blk.0.attn_v.weight": (32, 128)})
    with pytest.raises(CheckpointError, match=r"'blk\.0\.attn_v\.weight' has shape \(32, 128\), expected \(64, 128\)"):
        checkpoints.load(path)


@pytest.mark.parametrize("keep", [0.05, 0.5, 0.999])
def test_truncated_gguf_names_the_tensor_where_the_data_runs_out(tmp_path, keep):
    from gguf import GGUFReader

    path = write_gguf(tmp_path / "m.gguf", TINY, synthetic(TINY))
    data = path.read_bytes()
    cut = int(len(data) * keep)
    # The first tensor, in file order, whose bytes reach past the cut.
    first_short = min(
        (t for t in GGUFReader(path).tensors if t.data_offset + t.n_bytes > cut), key=lambda t: t.data_offset
    )
    path.write_bytes(data[:cut])
    with pytest.raises(CheckpointError, match=rf"m\.gguf: tensor '{first_short.name}' is truncated"):
        checkpoints.load(path)


def test_gguf_cut_inside_its_header_is_not_readable(tmp_path):
    path = write_gguf(tmp_path / "m.gguf", TINY, synthetic(TINY))
    path.write_bytes(path.read_bytes()[:64])
    with pytest.raises(CheckpointError, match=r"m\.gguf: not a readable GGUF file"):
        checkpoints.load(path)


# --- HF directories --------------------------------------------------------------------


@pytest.fixture
def hf_dir(tmp_path):
    cfg = shrunk_llama32_config()
    weights = synthetic(cfg, seed=2)
    return checkpoints.save_hf_dir(cfg, weights, tmp_path / "ckpt"), cfg, weights


def _rewrite_tensors(directory, edit):
    from safetensors.numpy import load_file, save_file

    f = directory / "model.safetensors"
    tensors = load_file(str(f))
    edit(tensors)
    save_file(tensors, str(f))


def test_hf_dir_round_trips_exactly(hf_dir):
    directory, cfg, weights = hf_dir
    loaded_cfg, loaded = checkpoints.load(directory)
    assert loaded_cfg == cfg
    assert_same_weights(loaded, weights)


def test_hf_dir_sharded_index_is_followed(hf_dir):
    from safetensors.numpy import load_file, save_file

    directory, _, weights = hf_dir
    tensors = load_file(str(directory / "model.safetensors"))
    (directory / "model.safetensors").unlink()
    names = sorted(tensors)
    shards = {"model-00001-of-00002.safetensors": names[::2], "model-00002-of-00002.safetensors": names[1::2]}
    for shard, keys in shards.items():
        save_file({k: tensors[k] for k in keys}, str(directory / shard))
    index = {"weight_map": {k: s for s, keys in shards.items() for k in keys}}
    (directory / "model.safetensors.index.json").write_text(json.dumps(index))
    assert_same_weights(checkpoints.load(directory)[1], weights)


def test_hf_dir_missing_tensor_names_it(hf_dir):
    directory = hf_dir[0]
    _rewrite_tensors(directory, lambda t: t.pop("model.layers.1.mlp.up_proj.weight"))
    with pytest.raises(CheckpointError, match=r"tensor 'model\.layers\.1\.mlp\.up_proj\.weight' is missing"):
        checkpoints.load(directory)


def test_hf_dir_wrong_shape_names_file_and_tensor(hf_dir):
    directory, cfg, _ = hf_dir

    def edit(t):
        t["model.layers.0.self_attn.k_proj.weight"] = np.zeros((32, cfg.hidden_size), np.float32)

    _rewrite_tensors(directory, edit)
    with pytest.raises(
        CheckpointError,
        match=r"model\.safetensors: tensor 'model\.layers\.0\.self_attn\.k_proj\.weight' "
        rf"has shape \(32, {cfg.hidden_size}\), expected \({cfg.kv_size}, {cfg.hidden_size}\)",
    ):
        checkpoints.load(directory)


def test_hf_dir_truncated_safetensors_is_rejected(hf_dir):
    f = hf_dir[0] / "model.safetensors"
    f.write_bytes(f.read_bytes()[:-1000])
    with pytest.raises(CheckpointError, match=r"model\.safetensors"):
        checkpoints.load(hf_dir[0])


def test_unknown_rope_type_is_rejected(hf_dir):
    directory = hf_dir[0]
    config = json.loads((directory / "config.json").read_text())
    config["rope_scaling"] = {"rope_type": "yarn", "factor": 4.0}
    (directory / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"config\.json: unknown rope_scaling type 'yarn'"):
        checkpoints.load(directory)


def test_non_divisible_group_names_the_tensor(tmp_path):
    cfg = dataclasses.replace(TINY, intermediate_size=96)
    directory = checkpoints.save_hf_dir(cfg, synthetic(cfg), tmp_path / "odd")
    assert checkpoints.load(directory)[0] == cfg  # fp32 is fine
    with pytest.raises(
        CheckpointError,
        match=r"odd: tensor 'model\.layers\.0\.mlp\.down_proj\.weight' of shape \(128, 96\) "
        r"cannot be quantized: its input dimension 96 is not divisible by group_size 64",
    ):
        checkpoints.load(directory, quant="int4")


def test_nan_weight_is_rejected(hf_dir):
    directory = hf_dir[0]

    def edit(t):
        t["model.norm.weight"][3] = np.nan

    _rewrite_tensors(directory, edit)
    with pytest.raises(CheckpointError, match=r"'model\.norm\.weight' contains NaN"):
        checkpoints.load(directory)


def test_cli_reports_one_clear_error_line(hf_dir):
    directory = hf_dir[0]
    _rewrite_tensors(directory, lambda t: t.pop("model.layers.0.self_attn.o_proj.weight"))
    proc = subprocess.run(
        [sys.executable, "-m", "model_impl", "generate", "--model", str(directory), "--token-ids", "1,2,3"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
    )
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and str(directory) in lines[0] and "o_proj" in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr


# --- synthetic -------------------------------------------------------------------------


def test_synthetic_weights_are_seeded():
    assert_same_weights(synthetic(TINY, seed=5), synthetic(TINY, seed=5))
    assert not np.array_equal(synthetic(TINY, seed=5).embed, synthetic(TINY, seed=6).embed)


def test_int4_load_packs_exactly_the_seven_linears(hf_dir):
    cfg, weights = checkpoints.load(hf_dir[0], quant="int4")
    for layer in weights.layers:
        for name in LINEAR_NAMES:
            w = getattr(layer, name)
            assert isinstance(w, QuantizedLinear) and (w.bits, w.group_size) == (4, 64)
            assert w.packed.dtype == np.uint32
        assert isinstance(layer.attn_norm, np.ndarray) and layer.attn_norm.dtype == np.float32
    assert weights.embed.dtype == np.float32
