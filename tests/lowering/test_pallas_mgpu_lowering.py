"""The Mosaic GPU variant of our int4 GEMV (:mod:`model_impl.llama.pallas_int4_mgpu`) lowers for
CUDA here, without a GPU, at every Llama-3.2-1B linear shape and every batch the verdict times
(Pallas to Mosaic GPU: layouts, loads, reductions, the TMA pipeline; PTX comes at XLA's compile
on a GPU). It is written for the Mosaic GPU API of jax 0.11 (``plgpu.kernel``); ``make versions``
runs this file under each jax. On the GPU: tests/cuda/test_pallas_int4_cuda.py."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import pytest

MOSAIC_API = (0, 11)  # the first jax whose Mosaic GPU API the kernel is written for

pytestmark = pytest.mark.skipif(
    tuple(int(p) for p in jax.__version__.split(".")[:2]) < MOSAIC_API,
    reason=f"the Mosaic GPU variant is written for jax >= 0.11's API; this is jax {jax.__version__}",
)


@pytest.mark.parametrize("out,n_in", [(8192, 2048), (2048, 8192), (2048, 2048), (512, 2048)])
@pytest.mark.parametrize("batch", [1, 2, 4, 16])
def test_the_mosaic_gpu_kernel_lowers_for_cuda_to_one_mosaic_call(out, n_in, batch):
    from model_impl.llama import pallas_int4_mgpu as M

    assert M.supported(out, n_in, batch, M.default_config(out, n_in, batch)) is None
    specs = (
        jax.ShapeDtypeStruct((batch, n_in), jnp.bfloat16),
        jax.ShapeDtypeStruct((out, n_in // 8), jnp.uint32),
        jax.ShapeDtypeStruct((out, n_in // 64), jnp.bfloat16),
        jax.ShapeDtypeStruct((out, n_in // 64), jnp.bfloat16),
    )
    text = jax.jit(lambda x, q, s, b: M.gemv(x, q, s, b)).trace(*specs).lower(lowering_platforms=("cuda",)).as_text()
    assert text.count("mosaic_gpu") >= 1 and "__gpu$xla.gpu.triton" not in text
