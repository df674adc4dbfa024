"""``generate --logits-out`` on the GPU backends: the same rows as on the CPU (tests/cli)."""

from __future__ import annotations

import pytest

from ..cli.test_cli import check_logits_out_rows
from .conftest import CUDA_BACKENDS

pytestmark = pytest.mark.cuda


@pytest.mark.parametrize("backend", CUDA_BACKENDS)
def test_cuda_logits_out_rows_are_the_logits_that_chose_each_token(real_model, tmp_path, capsys, backend):
    check_logits_out_rows(backend, real_model, tmp_path, capsys)
