"""Choosing the IREE CUDA target from the GPU's compute capability (runs without a GPU)."""

from __future__ import annotations

import pytest

from model_impl.backends import cuda_target

IREE_3_13 = ("sm_60", "sm_70", "sm_75", "sm_80", "sm_86", "sm_87", "sm_89", "sm_120", "sm_121")


def test_h100_gets_the_newest_accepted_target_below_sm_90():
    assert cuda_target.select("9.0", IREE_3_13) == "sm_89"


def test_an_arch_specific_target_is_never_chosen_even_when_it_matches_the_device():
    """sm_90a code runs only on 9.0 exactly and uses features a portable module must not; the
    rule skips every ``a`` target, whatever the compiler accepts."""
    accepted = ("sm_80", "sm_89", "sm_90a", "sm_100a")
    assert cuda_target.select("9.0", accepted) == "sm_89"
    assert cuda_target.select("10.0", accepted) == "sm_89"
    assert cuda_target.select("9.0", (*accepted, "sm_90")) == "sm_90"


def test_gb10_gets_sm_121():
    assert cuda_target.select((12, 1), IREE_3_13) == "sm_121"


def test_a100_gets_its_own_target():
    assert cuda_target.select("8.0", IREE_3_13) == "sm_80"


def test_override_wins():
    assert cuda_target.select("9.0", IREE_3_13, override="sm_80") == "sm_80"


def test_no_target_old_enough_is_an_error():
    with pytest.raises(ValueError, match="no accepted IREE CUDA target runs on compute capability 5.2"):
        cuda_target.select("5.2", IREE_3_13)


def test_the_installed_compiler_rejects_sm_90_and_accepts_sm_80_and_sm_121():
    """What DEVICE.md measured for iree-compile 3.13; flips when a release adds sm_90."""
    accepted = cuda_target.accepted_by_compiler()
    assert "sm_80" in accepted and "sm_121" in accepted
    assert "sm_90" not in accepted, f"this iree-compile now accepts sm_90: {accepted}"
