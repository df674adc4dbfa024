"""Our int4 GEMV kernel on the GPU: both variants (Triton, the form; Mosaic GPU, its rival)
compute the host dequant linear at every Llama-3.2-1B linear shape and every batch the verdict
times, within the rounding bound of tests/format/test_pallas_int4.py; the figures go to the
results file. Speed: ``python -m model_impl pallas-sweep`` and the verdict, never here."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from model_impl.llama import pallas_int4 as P
from tests.format.test_pallas_int4 import _bounds, _random_mlx

pytestmark = pytest.mark.cuda

SHAPES = [(8192, 2048), (2048, 8192), (2048, 2048), (512, 2048)]
BATCHES = [1, 2, 4, 16]


def _check(gpu, cuda_record, variant: str, out: int, n_in: int, batch: int, call) -> None:
    rng = np.random.default_rng([out, n_in, batch])
    w = _random_mlx(rng, out, n_in)
    x = jnp.asarray(rng.standard_normal((batch, n_in), dtype=np.float32), jnp.bfloat16)
    ref, bound = _bounds(w, np.asarray(x, np.float64), P.config_for(out, n_in, batch), jnp.bfloat16)
    args = jax.device_put((x, w.packed, w.scales, w.biases), gpu)
    got = np.asarray(jax.jit(call)(*args), np.float64)
    excess = float(np.max(np.abs(got - ref) / bound))
    cuda_record["figures"][f"pallas_int4_{variant}_{out}x{n_in}_b{batch}_err_over_bound"] = excess
    assert got.shape == (batch, out) and excess <= 1.0, excess


@pytest.mark.parametrize("out,n_in", SHAPES)
@pytest.mark.parametrize("batch", BATCHES)
def test_the_triton_kernel_computes_the_host_dequant_linear_on_the_gpu(gpu, cuda_record, out, n_in, batch):
    v = P.config_for(out, n_in, batch)
    with jax.default_device(gpu):  # Pallas reads the platform from the default backend
        _check(gpu, cuda_record, "triton", out, n_in, batch, lambda x, q, s, b: P.gemv(x, q, s, b, v))


@pytest.mark.parametrize("out,n_in", SHAPES)
@pytest.mark.parametrize("batch", BATCHES)
def test_the_mosaic_gpu_kernel_computes_the_host_dequant_linear_on_the_gpu(gpu, cuda_record, out, n_in, batch):
    from model_impl.llama import pallas_int4_mgpu as M

    with jax.default_device(gpu):
        _check(gpu, cuda_record, "mosaic", out, n_in, batch, lambda x, q, s, b: M.gemv(x, q, s, b))
