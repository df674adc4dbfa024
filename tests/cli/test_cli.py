"""The command line's weight-mode switch: ``generate --quant int4 --representation ...``."""

from __future__ import annotations

import json

from model_impl.__main__ import main


def test_generate_runs_a_representation_and_returns_token_ids(capsys):
    argv = ["generate", "--token-ids", "1,504,3458", "--quant", "int4", "--max-new-tokens", "3", "--json"]
    assert main(argv + ["--representation", "s4-grouped"]) == 0
    grouped = json.loads(capsys.readouterr().out)
    assert main(argv) == 0
    baseline = json.loads(capsys.readouterr().out)
    assert grouped["tokens"] == baseline["tokens"] and len(grouped["tokens"]) == 3


def test_generate_rejects_a_representation_of_float_weights(capsys):
    assert main(["generate", "--token-ids", "1", "--representation", "s4-grouped"]) == 2
    assert "--representation applies to --quant int4" in capsys.readouterr().err


def test_generate_names_the_tensor_a_representation_cannot_hold(capsys):
    # SmolLM2's hidden size 576 is not a multiple of 512: the Pallas layout cannot plane it.
    assert main(["generate", "--token-ids", "1", "--quant", "int4", "--representation", "pallas-u32"]) == 2
    assert "layers.0.wq: the Pallas int4 kernel needs" in capsys.readouterr().err
