"""The portability suite (`pytest -m portability`): every family, fp32 and bf16.

Each test runs one check of :mod:`megacontext.models.portability` on a tiny random-init model of
a real architecture loaded through ``load_base`` (``"default"`` through its name), and asserts
the measured error is within the documented tolerance. ``megacontext port-model`` runs the same
checks on user checkpoints.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from megacontext.models import BaseAdapter, UnsupportedPositionPolicyError
from megacontext.models import portability as pc
from megacontext.models.tiny import TINY_FAMILIES

pytestmark = pytest.mark.portability

DTYPES = ("float32", "bfloat16")
ROPE_FAMILIES = tuple(f for f in TINY_FAMILIES if f != "gpt2")
Loader = Callable[..., BaseAdapter]


@pytest.fixture(scope="module")
def bases(load_tiny: Loader) -> dict[tuple[str, str], BaseAdapter]:
    """Every (family, dtype) adapter, loaded once for this module."""
    return {(f, d): load_tiny(f, d) for f in TINY_FAMILIES for d in DTYPES}


def assert_passed(result: pc.CheckResult) -> None:
    assert result.passed, (
        f"{result.name}: measured {result.measured} > {result.tolerance}; {result.detail}"
    )


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_inputs_embeds_path_equals_input_ids_path(bases: dict, family: str, dtype: str) -> None:
    result = pc.check_embeds_vs_ids(bases[family, dtype])
    assert_passed(result)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("family", ROPE_FAMILIES)
def test_rope_relativity_under_constant_offset(bases: dict, family: str, dtype: str) -> None:
    result = pc.check_rope_relativity(bases[family, dtype])
    assert not result.skipped
    assert_passed(result)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("family", ROPE_FAMILIES)
def test_exact_phases_keep_relativity_at_huge_offsets(bases: dict, family: str, dtype: str) -> None:
    assert_passed(pc.check_exact_phases(bases[family, dtype]))


def test_fractional_mu_moves_between_integer_positions(bases: dict) -> None:
    base = bases["qwen3", "float32"]
    x = base.embed(pc.sample_ids(base, 12, seed=3))
    pos = torch.arange(12)
    run = lambda mu: base.forward(x, pos, None, mu=mu, use_cache=False).logits  # noqa: E731
    plain = base.forward(x, pos, None, use_cache=False).logits
    assert pc.gap(plain, run(pos.double())).kl <= pc.TOLERANCES["float32"]["embeds_vs_ids"]
    half = pos.double().clone()
    half[5] += 0.5  # a gist at the centre of an even-width span
    assert pc.max_diff(run(half), plain) > 1e-4
    with pytest.raises(UnsupportedPositionPolicyError):
        bases["gpt2", "float32"].forward(base.embed(torch.tensor([[3]])), pos[:1], mu=pos[:1])


def test_relativity_error_grows_with_offset_in_fp32(bases: dict) -> None:
    """fp32 angle error grows with |position| (ulp of p·ω); a large offset must show it."""
    base = bases["llama", "float32"]
    assert pc.relativity_error(base, 1) < pc.relativity_error(base, 1_000_000)


@pytest.mark.parametrize("dtype", DTYPES)
def test_absolute_positions_are_compact_only(bases: dict, dtype: str) -> None:
    base = bases["gpt2", dtype]
    assert base.position_policies == ("compact",)
    assert pc.check_rope_relativity(base).skipped
    with pytest.raises(UnsupportedPositionPolicyError, match="compact"):
        base.check_policy("global")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_kv_crop_then_suffix_equals_full_recompute(bases: dict, family: str, dtype: str) -> None:
    assert_passed(pc.check_kv_crop(bases[family, dtype]))


@pytest.mark.parametrize("keep", [0, 1, 12, 23])
def test_kv_crop_at_edges(bases: dict, keep: int) -> None:
    result = pc.check_kv_crop(bases["qwen2", "float32"], length=24, keep=keep)
    assert_passed(result)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_left_and_right_padding_equal_unpadded(bases: dict, family: str, dtype: str) -> None:
    assert_passed(pc.check_padding(bases[family, dtype]))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_lora_attach_detach_is_bit_identical(load_tiny: Loader, family: str, dtype: str) -> None:
    base = load_tiny(family, dtype)  # a private copy: LoRA is attached to it in place
    result = pc.check_lora_roundtrip(base)
    assert not result.skipped, "peft must be installed for the portability suite"
    assert_passed(result)


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_bf16_vs_fp32_within_tolerance(bases: dict, family: str) -> None:
    low = pc.reference_logits(bases[family, "bfloat16"])
    high = pc.reference_logits(bases[family, "float32"])
    assert_passed(pc.compare_dtypes(low, high, moe=family == "mixtral"))


@pytest.mark.parametrize("dtype", DTYPES)
def test_mixtral_routing_deterministic_under_seed(bases: dict, dtype: str) -> None:
    base = bases["mixtral", dtype]
    assert base.config.router_jitter_noise > 0  # jitter exists but eval mode disables it
    result = pc.check_moe_routing(base)
    assert not result.skipped
    assert_passed(result)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_spliced_vectors_change_output_only_after_splice(
    bases: dict, family: str, dtype: str
) -> None:
    for at, count in ((0, 1), (9, 3), (23, 1)):
        assert_passed(pc.check_splice(bases[family, dtype], at=at, count=count))


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    at=st.integers(min_value=0, max_value=23),
    count=st.integers(min_value=1, max_value=6),
    seed=st.integers(min_value=0, max_value=10_000),
)
def test_splice_anywhere_property(bases: dict, at: int, count: int, seed: int) -> None:
    count = min(count, 24 - at)
    for family in ("llama3", "mixtral"):
        assert_passed(pc.check_splice(bases[family, "float32"], at=at, count=count, seed=seed))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("family", ROPE_FAMILIES)
def test_global_positions_with_gaps_attend_across_the_gap(
    bases: dict, family: str, dtype: str
) -> None:
    assert_passed(pc.check_global_gaps(bases[family, dtype]))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("family", ROPE_FAMILIES)
def test_gaussian_damping_identity_and_causality(bases: dict, family: str, dtype: str) -> None:
    assert_passed(pc.check_gaussian(bases[family, dtype]))


@pytest.mark.parametrize("family", ["llama", "llama3", "qwen3"])
def test_gaussian_damping_matches_formula(bases: dict, family: str) -> None:
    """The hooked rotary output is cos/sin times exp(-½(σω)²) on the model's own frequencies."""
    base = bases[family, "float32"]
    rotary = base._rotary
    x = torch.zeros(1, 5, base.d_model)
    pos = torch.arange(100, 105)[None]
    cos, sin = rotary(x, pos)
    sigma = torch.tensor([[0.0, 1.0, 32.0, 1024.0, 1e6]])
    base._sigma = sigma
    try:
        cos_d, sin_d = rotary(x, pos)
    finally:
        base._sigma = None
    omega = rotary.inv_freq.float()
    damp = torch.exp(-0.5 * (sigma[..., None] * omega) ** 2)
    damp = torch.cat((damp, damp), dim=-1)
    torch.testing.assert_close(cos_d, cos * damp)
    torch.testing.assert_close(sin_d, sin * damp)
    assert torch.equal(cos_d[0, 0], cos[0, 0])  # sigma 0: a token is untouched
    assert float(cos_d[0, 4].abs().max()) < float(cos[0, 4].abs().max())


def test_run_checks_covers_every_check(load_tiny: Loader) -> None:
    results = pc.run_checks(load_tiny("mixtral"))
    names = {r.name for r in results}
    for check in pc.CHECKS:
        assert f"{check}[float32]" in names and f"{check}[bfloat16]" in names
    assert "bf16_vs_fp32" in names
    assert all(r.passed for r in results), [r for r in results if not r.passed]
