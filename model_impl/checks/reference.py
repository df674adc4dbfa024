"""transformers (torch) as the independent reference: its logits and greedy runs, live where torch
is installed, read from their saved outputs where it is not.

torch's CPU build is in this registry for Python 3.11 only (for 3.12 it serves a multi-GB CUDA
build), so the reference runs where it is cheap and the other environments read what it computed
(:func:`run`). A saved reference is small: per row, transformers' last hidden state (after its
final norm) and, for a greedy run, the tokens it chose; the logits are rebuilt as that hidden state
times the checkpoint's head, read by our loader and required to hash to the head transformers
used. The rebuild's distance from transformers' own logits is measured when the file is written
and travels with it (:attr:`Run.rebuild_atol`), so a comparison against a rebuilt reference
proves what the live one proves: ``|ours - transformers| <= |ours - rebuilt| + rebuild_atol``.

Files live under ``.cache/reference/`` (not committed), named by a hash of their key (the checkpoint's
bytes, the dtype, the prompt ids, the number of greedy tokens). Where torch is installed every use
of a saved file is checked against the live run (tokens equal, rebuilt logits within the recorded
distance), so a file that stops saying what transformers says fails the suite where it can be
fixed. A live run whose file is missing writes it, so the suite's own run on Python 3.11
(``make reference``) regenerates every file; ``MODEL_IMPL_RECORD_REFERENCE=1`` rewrites them.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
from pathlib import Path

import numpy as np

from .. import checkpoints as checkpoint
from ..backends.generate import Generation

# Written where torch runs (every live run whose file is missing), never committed: `make reference`
# records them with Python 3.11's .venv for an interpreter without torch.
SAVED_DIR = Path(
    os.environ.get("MODEL_IMPL_REFERENCE_DIR", Path(__file__).resolve().parents[2] / ".cache" / "reference")
)
RECORD_ENV = "MODEL_IMPL_RECORD_REFERENCE"
# The files of a checkpoint that make its model (a tokenizer's files do not, and their bytes vary
# with the tokenizers version).
_MODEL_FILES = ("*.gguf", "*.safetensors", "config.json")


class MissingReference(RuntimeError):
    """No saved reference for a key, on a machine without torch; the message says how to record it."""


@functools.cache
def torch_missing() -> str | None:
    """Why transformers cannot run live here, or None when torch imports."""
    try:
        import torch  # noqa: F401
    except ImportError as e:
        return f"torch is not installed ({e})"
    return None


def transformers_model(path: str | Path | None = None, dtype: str = "float32"):
    """transformers' own LlamaForCausalLM for a GGUF file or an HF directory, in ``dtype``
    (float32, bfloat16 or float16: its weights, activations and KV cache), eval mode."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    from transformers import AutoModelForCausalLM

    torch_dtype = getattr(torch, dtype)
    path = checkpoint.default_model_path() if path is None else Path(path)
    if path.is_dir():
        model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch_dtype)
    else:
        model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch_dtype)
    return model.eval()


def prompt_logits(hf_model, ids) -> np.ndarray:
    """Logits at every prompt position, ``[len(ids), vocab]`` float32."""
    return _prompt(hf_model, ids)[0]


def greedy(hf_model, ids, max_new_tokens: int) -> Generation:
    """transformers' greedy generation, with the logits that chose each token."""
    return _greedy(hf_model, ids, max_new_tokens)[0]


def _prompt(hf_model, ids):
    import torch

    with torch.no_grad():
        out = hf_model(torch.tensor([list(ids)]), output_hidden_states=True)
    return out.logits[0].float().numpy(), out.hidden_states[-1][0].float().numpy()


def _greedy(hf_model, ids, max_new_tokens: int):
    import torch

    with torch.no_grad():
        out = hf_model.generate(
            torch.tensor([list(ids)]),
            max_new_tokens=max_new_tokens,
            min_new_tokens=max_new_tokens,
            do_sample=False,
            output_logits=True,
            output_hidden_states=True,
            return_dict_in_generate=True,
        )
    tokens = out.sequences[0, len(ids) :].tolist()
    logits = np.stack([step[0].float().numpy() for step in out.logits])
    hidden = np.stack([step[-1][0, -1].float().numpy() for step in out.hidden_states])
    return Generation(list(ids), tokens, logits), hidden


@dataclasses.dataclass
class Run:
    """What transformers computed for one checkpoint, dtype and prompt."""

    prompt_logits: np.ndarray  # [len(prompt), vocab] float32
    greedy: Generation | None  # tokens and the logits that chose them; None when no tokens were asked
    rebuild_atol: float  # how far these logits may lie from transformers' own: 0 live, measured if rebuilt
    source: str  # "transformers <version> live" or the saved file


def checkpoint_digest(path: str | Path) -> str:
    """SHA-256 over a checkpoint's model files (names and bytes; a GGUF file is its own)."""
    path = Path(path)
    files = sorted(f for pattern in _MODEL_FILES for f in path.glob(pattern)) if path.is_dir() else [path]
    h = hashlib.sha256()
    for f in files:
        h.update(f.name.encode())
        with f.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 24), b""):
                h.update(block)
    return h.hexdigest()


def key(path, dtype: str, ids, tokens: int) -> dict:
    return {"checkpoint": checkpoint_digest(path), "dtype": dtype, "prompt": [int(i) for i in ids], "tokens": tokens}


def saved_path(k: dict) -> Path:
    return SAVED_DIR / (hashlib.sha256(json.dumps(k, sort_keys=True).encode()).hexdigest()[:24] + ".npz")


def _sha(a: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(a, np.float32).tobytes()).hexdigest()


def rebuild(hidden: np.ndarray, head: np.ndarray, dtype: str) -> np.ndarray:
    """Logits as hidden times the head (exact products summed in float64), rounded to ``dtype``
    as transformers' head rounds its output, returned as float32."""
    from ..llama.config import np_dtype

    exact = np.asarray(hidden, np.float64) @ np.asarray(head, np.float64).T
    return exact.astype(np_dtype(dtype)).astype(np.float32)


def run(path: str | Path | None, dtype: str, ids, tokens: int = 0) -> Run:
    """transformers on ``path`` (None: the embedded GGUF) in ``dtype``: the prompt's logits and,
    when ``tokens`` > 0, its greedy run. Live where torch imports (checked against the saved file
    of its key, or written to it under ``MODEL_IMPL_RECORD_REFERENCE=1``); rebuilt from the saved
    file otherwise (:class:`MissingReference` when there is none)."""
    path = checkpoint.default_model_path() if path is None else Path(path)
    k = key(path, dtype, ids, tokens)
    file = saved_path(k)
    if torch_missing() is None:
        live, record = _live(path, dtype, ids, tokens)
        if os.environ.get(RECORD_ENV) or not file.exists():
            _write(file, k, record)
        else:
            check_saved(file, live, record["head"], dtype)
        return live
    if not file.exists():
        raise MissingReference(
            f"{path}: no saved transformers reference for dtype {dtype}, {len(k['prompt'])} prompt ids, {tokens} "
            f"tokens ({file}) and {torch_missing()}: record it where torch runs (make reference)"
        )
    return _saved(file, path, dtype)


def _live(path: Path, dtype: str, ids, tokens: int):
    import torch
    import transformers

    hf = transformers_model(path, dtype)
    logits, hidden = _prompt(hf, ids)
    gen, gen_hidden = _greedy(hf, ids, tokens) if tokens else (None, np.zeros((0, hidden.shape[1]), np.float32))
    head = hf.get_output_embeddings().weight.detach().float().numpy()
    del hf
    error = float(np.max(np.abs(rebuild(hidden, head, dtype) - logits)))
    if gen is not None:
        error = max(error, float(np.max(np.abs(rebuild(gen_hidden, head, dtype) - gen.logits))))
    record = {
        "prompt_hidden": hidden,
        "greedy_hidden": gen_hidden,
        "tokens": np.asarray(gen.tokens if gen else [], np.int64),
        "head": head,
        "head_sha256": _sha(head),
        "rebuild_atol": error,
        "versions": {"transformers": transformers.__version__, "torch": torch.__version__},
    }
    return Run(logits, gen, 0.0, f"transformers {transformers.__version__} live"), record


def _write(file: Path, k: dict, record: dict) -> None:
    file.parent.mkdir(parents=True, exist_ok=True)
    meta = {"key": k, **{n: record[n] for n in ("head_sha256", "rebuild_atol", "versions")}}
    tmp = file.with_name(f"{file.stem}.{os.getpid()}.tmp.npz")  # two workers may write one key
    np.savez_compressed(
        tmp,
        prompt_hidden=record["prompt_hidden"].astype(np.float32),
        greedy_hidden=record["greedy_hidden"].astype(np.float32),
        tokens=record["tokens"],
        meta=np.asarray(json.dumps(meta, sort_keys=True)),
    )
    tmp.replace(file)


def read_saved(file: Path) -> tuple[dict, dict]:
    """(meta: key, head hash, rebuild distance, versions; arrays: hidden states and tokens)."""
    with np.load(file) as z:
        return json.loads(str(z["meta"])), {n: z[n] for n in ("prompt_hidden", "greedy_hidden", "tokens")}


def _saved(file: Path, path: Path, dtype: str) -> Run:
    meta, arrays = read_saved(file)
    _, weights = checkpoint.load(path, "dense", dtype)
    head = np.asarray(weights.embed if weights.lm_head is None else weights.lm_head, np.float32)
    if _sha(head) != meta["head_sha256"]:
        raise MissingReference(
            f"{path}: the head our loader reads in {dtype} is not the tensor transformers used for the saved "
            f"reference {file.name}; its logits cannot be rebuilt from it"
        )
    gen = None
    if meta["key"]["tokens"]:
        logits = rebuild(arrays["greedy_hidden"], head, dtype)
        gen = Generation(list(meta["key"]["prompt"]), arrays["tokens"].tolist(), logits)
    versions = ", ".join(f"{n} {v}" for n, v in meta["versions"].items())
    prompt = rebuild(arrays["prompt_hidden"], head, dtype)
    return Run(prompt, gen, meta["rebuild_atol"], f"saved {file.name} ({versions})")


def check_saved(file: Path, live: Run, head: np.ndarray, dtype: str) -> None:
    """The saved file still says what transformers says here: the same head, the same tokens (or
    parting only at a near-tie of the live run: transformers on another CPU sums in another
    order), and its rebuilt logits within :func:`checks.logit_atol` of the live ones up to there.
    A stale file parts by a token that is no near-tie, or by far more than the bound."""
    from . import greedy_agreement, logit_atol, near_tie_gap

    meta, arrays = read_saved(file)
    if meta["head_sha256"] != _sha(head):
        raise AssertionError(f"{file}: the saved reference's head is not the one transformers loads: rerecord")
    worst = float(np.max(np.abs(rebuild(arrays["prompt_hidden"], head, dtype) - live.prompt_logits)))
    if live.greedy is not None:
        saved = Generation(
            live.greedy.prompt_tokens, arrays["tokens"].tolist(), rebuild(arrays["greedy_hidden"], head, dtype)
        )
        verdict = greedy_agreement(live.greedy, saved, near_tie_gap(dtype))
        if not verdict.agrees:
            raise AssertionError(
                f"{file}: saved tokens part from live transformers' at step {verdict.comparison.first_divergence} "
                f"(live top-2 gap {verdict.top2_gap_at_divergence}, no near-tie): rerecord with {RECORD_ENV}=1"
            )
        worst = max(worst, verdict.comparison.max_abs_logit_diff or 0.0)
    if worst > logit_atol(dtype):
        raise AssertionError(
            f"{file}: rebuilt logits lie {worst:.3g} from live transformers (bound {logit_atol(dtype):.3g}): "
            f"rerecord with {RECORD_ENV}=1"
        )


def tensor_digests(path: str | Path | None = None) -> dict[str, str]:
    """SHA-256 of each tensor of transformers' state dict for ``path`` in float32 (live, checked
    against and written like :func:`run`'s files; saved where torch is missing)."""
    path = checkpoint.default_model_path() if path is None else Path(path)
    file = SAVED_DIR / f"tensors-{checkpoint_digest(path)[:24]}.json"
    if torch_missing() is None:
        sd = transformers_model(path).state_dict()
        digests = {name: _sha(t.detach().float().numpy()) for name, t in sd.items()}
        if os.environ.get(RECORD_ENV) or not file.exists():
            file.parent.mkdir(parents=True, exist_ok=True)
            tmp = file.with_name(f"{file.stem}.{os.getpid()}.tmp")
            tmp.write_text(json.dumps(digests, indent=1, sort_keys=True) + "\n")
            tmp.replace(file)
        elif json.loads(file.read_text()) != digests:
            raise AssertionError(f"{file}: saved tensor digests differ from transformers' live state dict: rerecord")
        return digests
    if not file.exists():
        raise MissingReference(f"{path}: no saved tensor digests ({file}) and {torch_missing()}: make reference")
    return json.loads(file.read_text())


def digest(array) -> str:
    """The digest :func:`tensor_digests` gives a tensor, for one of ours."""
    return _sha(np.asarray(array, np.float32))
