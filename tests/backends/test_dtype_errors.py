"""A compute dtype a backend has no kernel for is one clear error naming the backend and dtype."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import pytest

from model_impl.backends.generate import BackendUnavailable, dtype_errors


def _batched_bf16_dot_to_f32():
    """The dot XLA-CPU has no kernel for (model_impl/expectations.py: which jaxlib versions); the
    model widens it to f32 instead."""
    p, v = jnp.ones((3, 3, 16, 128), jnp.bfloat16), jnp.ones((3, 128, 64), jnp.bfloat16)
    f = jax.jit(lambda p, v: jnp.einsum("kgts,ksd->tkgd", p, v, preferred_element_type=jnp.float32))
    return f(p, v).block_until_ready()


def _kernel() -> str:
    try:
        _batched_bf16_dot_to_f32()
    except Exception as e:  # noqa: BLE001
        if "UNIMPLEMENTED" in str(e) and "BF16 x BF16 = F32" in str(e):
            return "missing"
        return f"fails otherwise: {str(e).splitlines()[0][:200]}"
    return "present"


def test_the_batched_bf16_dot_kernel_is_what_the_table_expects_of_this_jaxlib():
    """The day a jaxlib has the kernel this fails, naming the version: the model's f32 widening
    of the attention can then go."""
    from model_impl import expectations as ex

    observed = _kernel()
    ex.check(("xla-cpu", ex.KERNEL, ex.BATCHED_BF16_DOT), observed, ex.XLA, ex.compiler_version(ex.XLA))


def test_a_missing_half_precision_kernel_names_the_backend_and_dtype():
    if _kernel() != "missing":
        pytest.skip("this jaxlib has the BF16 x BF16 = F32 batched dot kernel (the table test above says so)")
    expected = r"^backend xla-cpu cannot run compute dtype bfloat16: .*BF16"
    with pytest.raises(BackendUnavailable, match=expected), dtype_errors("xla-cpu", "bfloat16"):
        _batched_bf16_dot_to_f32()


def test_other_errors_pass_through_unchanged():
    with pytest.raises(KeyError), dtype_errors("xla-cpu", "bfloat16"):
        {}["missing"]  # noqa: B018
    with pytest.raises(RuntimeError, match="UNIMPLEMENTED"), dtype_errors("xla-cpu", "float32"):
        raise RuntimeError("UNIMPLEMENTED: a float32 failure is not a dtype question")
