"""transformers (torch, fp32, CPU) as the independent reference for the fp32 graph."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .. import checkpoints as checkpoint
from ..backends.generate import Generation


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
    import torch

    with torch.no_grad():
        return hf_model(torch.tensor([list(ids)])).logits[0].float().numpy()


def greedy(hf_model, ids, max_new_tokens: int) -> Generation:
    """transformers' greedy generation, with the logits that chose each token."""
    import torch

    with torch.no_grad():
        out = hf_model.generate(
            torch.tensor([list(ids)]),
            max_new_tokens=max_new_tokens,
            min_new_tokens=max_new_tokens,
            do_sample=False,
            output_logits=True,
            return_dict_in_generate=True,
        )
    tokens = out.sequences[0, len(ids) :].tolist()
    logits = np.stack([step[0].float().numpy() for step in out.logits])
    return Generation(list(ids), tokens, logits)
