"""Portability checks: does a base model behave the way MegaContext relies on?

Each check runs the adapter on small seeded inputs and returns a :class:`CheckResult` with the
measured error and the tolerance it was held to. The same functions back the pytest suite
(``pytest -m portability``) and ``megacontext port-model``, so a model ported with the tool has
passed exactly what the suite tests.

Errors are measured as the KL divergence between next-token distributions, averaged over the
positions compared (nats): what NLL and sampling see. The maximum ``|log p_a - log p_b|`` over the
whole vocabulary, used before, is dominated by bf16 rounding of the log-probabilities of tokens
that have no chance at all: on SmolLM2-135M's real weights a correct bf16 run differs from fp32 by
0.76 there while the distributions differ by a KL of 0.0025 and the top-1 tokens agree on 98% of
positions. Each result also reports that maximum over the reference's top-10 tokens and the
top-1 agreement (``extra``).
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, TypeVar, cast

import torch
from torch import Tensor

from megacontext.models.adapter import BaseAdapter

# Largest mean KL (nats) allowed per check and compute dtype. Each bound sits at least 3x (bf16)
# to 10x (fp32) above the worst value measured on the tiny random-init models of every family and
# on the real weights of SmolLM2-135M-Instruct and Gemma 3 270M (docs/models.md lists them), and
# far below what a real defect gives (a wrong rotary phase or a leaked padding token: 0.5-5 nats).
TOLERANCES: dict[str, dict[str, float]] = {
    "float32": {
        "embeds_vs_ids": 1e-6,
        "rope_relativity": 1e-5,
        "kv_crop": 1e-5,
        "padding": 1e-5,
        "splice_prefix": 1e-6,
        "gaussian_identity": 0.0,
    },
    "bfloat16": {
        "embeds_vs_ids": 1e-6,
        "rope_relativity": 0.05,
        "kv_crop": 0.05,
        "padding": 0.05,
        "splice_prefix": 0.05,
        "gaussian_identity": 0.0,
    },
}
# bf16 model vs fp32 model on the same checkpoint: mean KL and top-1 agreement.
BF16_VS_FP32_MAX_KL = 0.05
# Mixture-of-experts: bf16 rounding flips the router's choice for tokens whose top-2 scores are
# nearly tied, and a token sent to another expert moves further; the bound is looser there.
BF16_VS_FP32_MAX_KL_MOE = 0.2
BF16_VS_FP32_MIN_TOP1 = 0.9
TOP_K = 10
# A spliced vector must move the log-probs at and after the splice by at least this much.
SPLICE_MIN_EFFECT = 1e-3
RELATIVITY_OFFSETS: tuple[int, ...] = (1, 37, 1000, 4096)
EXACT_OFFSETS: tuple[int, ...] = (10**6, 10**8)

_F = TypeVar("_F", bound=Callable[..., Any])


def _no_grad(fn: _F) -> _F:
    """``torch.no_grad()`` as a decorator that keeps the function's type."""
    return cast(_F, torch.no_grad()(fn))


@dataclass
class CheckResult:
    """Outcome of one portability check."""

    name: str
    passed: bool
    measured: float | None = None
    tolerance: float | None = None
    skipped: bool = False
    detail: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def dtype_name(base: BaseAdapter) -> str:
    return str(base.dtype).removeprefix("torch.")


def tolerance(base: BaseAdapter, check: str) -> float:
    return TOLERANCES.get(dtype_name(base), TOLERANCES["bfloat16"])[check]


def sample_ids(base: BaseAdapter, length: int, *, batch: int = 1, seed: int = 0) -> Tensor:
    """Seeded random token ids below both the tokenizer and the embedding size."""
    limit = (
        min(base.vocab_size, len(base.tokenizer)) if base.tokenizer is not None else base.vocab_size
    )
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(3, max(limit, 4), (batch, length), generator=generator)


def logprobs(logits: Tensor) -> Tensor:
    return torch.log_softmax(logits.float(), dim=-1)


def max_diff(a: Tensor, b: Tensor) -> float:
    """``max |log p_a - log p_b|`` over every position and vocabulary entry (strict)."""
    return float((logprobs(a) - logprobs(b)).abs().max())


@dataclass(frozen=True)
class Gap:
    """How far ``other``'s next-token distributions are from ``reference``'s."""

    kl: float  # mean over positions of KL(p_reference || p_other), nats
    topk_max: float  # max |Δ log p| over the reference's top-10 tokens
    top1: float  # fraction of positions whose most likely token agrees

    def extra(self) -> dict[str, float]:
        return {"kl": self.kl, "topk_max_logp": self.topk_max, "top1": self.top1}


def gap(reference: Tensor, other: Tensor) -> Gap:
    """Distribution distance between two logit tensors of the same shape (..., vocab)."""
    ref, oth = logprobs(reference), logprobs(other)
    if ref.numel() == 0:
        return Gap(0.0, 0.0, 1.0)
    kl = (ref.exp() * (ref - oth)).sum(-1).clamp(min=0.0)
    top = ref.topk(min(TOP_K, ref.shape[-1]), dim=-1).indices
    topk = (ref.gather(-1, top) - oth.gather(-1, top)).abs().max()
    agree = (ref.argmax(-1) == oth.argmax(-1)).float().mean()
    return Gap(float(kl.mean()), float(topk), float(agree))


def _positions(length: int, offset: int = 0) -> Tensor:
    return torch.arange(offset, offset + length).unsqueeze(0)


@_no_grad
def check_embeds_vs_ids(base: BaseAdapter, length: int = 24) -> CheckResult:
    """``forward(embed(ids))`` equals the model called on ``input_ids`` directly."""
    ids = sample_ids(base, length, batch=2)
    ours = base.forward(base.embed(ids), _positions(length), None, use_cache=False).logits
    theirs = base.model(input_ids=ids.to(base.device), use_cache=False).logits
    measured = gap(theirs, ours)
    tol = tolerance(base, "embeds_vs_ids")
    return CheckResult(
        "embeds_vs_ids", measured.kl <= tol, measured.kl, tol, extra=measured.extra()
    )


@_no_grad
def relativity_gap(
    base: BaseAdapter, offset: int, length: int = 24, seed: int = 1, *, exact: bool = False
) -> Gap:
    """How much the logits change between positions ``0..T-1`` and ``offset..offset+T-1``.

    With ``exact=True`` the shifted run passes ``mu`` (float64 rotary phases) as well.
    """
    x = base.embed(sample_ids(base, length, seed=seed))
    at_zero = base.forward(x, _positions(length), None, use_cache=False).logits
    pos = _positions(length, offset)
    mu = pos.double() if exact else None
    shifted = base.forward(x, pos, None, mu=mu, use_cache=False).logits
    return gap(at_zero, shifted)


def relativity_error(
    base: BaseAdapter, offset: int, length: int = 24, seed: int = 1, *, exact: bool = False
) -> float:
    """Mean KL between positions ``0..T-1`` and ``offset..offset+T-1`` (see relativity_gap)."""
    return relativity_gap(base, offset, length, seed, exact=exact).kl


def check_rope_relativity(
    base: BaseAdapter, offsets: tuple[int, ...] = RELATIVITY_OFFSETS
) -> CheckResult:
    """A constant offset on every position leaves the logits unchanged (RoPE is relative)."""
    if base.quirks.position_kind != "rope":
        return CheckResult(
            "rope_relativity",
            True,
            skipped=True,
            detail="absolute learned positions: not relative by construction, compact policy only",
        )
    gaps = {str(o): relativity_gap(base, o) for o in offsets}
    worst = max(g.kl for g in gaps.values())
    tol = tolerance(base, "rope_relativity")
    extra = {"by_offset": {o: g.extra() for o, g in gaps.items()}}
    return CheckResult("rope_relativity", worst <= tol, worst, tol, extra=extra)


def check_exact_phases(base: BaseAdapter, offsets: tuple[int, ...] = EXACT_OFFSETS) -> CheckResult:
    """With ``mu`` (float64 phases), relativity holds even at offsets of 1e6 and 1e8."""
    if "global" not in base.position_policies:
        return CheckResult("exact_phases", True, skipped=True, detail="compact policy only")
    gaps = {str(o): relativity_gap(base, o, exact=True) for o in offsets}
    worst = max(g.kl for g in gaps.values())
    tol = tolerance(base, "rope_relativity")
    extra = {"by_offset": {o: g.extra() for o, g in gaps.items()}}
    return CheckResult("exact_phases", worst <= tol, worst, tol, extra=extra)


@_no_grad
def check_kv_crop(base: BaseAdapter, length: int = 24, keep: int = 10) -> CheckResult:
    """Crop a cache at ``keep`` and recompute an *edited* suffix == a full recompute (D10)."""
    ids = sample_ids(base, length, seed=2)
    edited = ids.clone()
    edited[:, keep:] = sample_ids(base, length - keep, seed=3)
    # Prefill the original sequence, then crop and feed the edited suffix.
    cache = base.forward(base.embed(ids), _positions(length), None).cache
    base.crop_cache(cache, keep)
    suffix = base.forward(
        base.embed(edited[:, keep:]), _positions(length - keep, keep), cache
    ).logits
    full = base.forward(base.embed(edited), _positions(length), None, use_cache=False).logits
    measured = gap(full[:, keep:], suffix)
    tol = tolerance(base, "kv_crop")
    ok = measured.kl <= tol and base.cache_length(cache) == length
    return CheckResult(
        "kv_crop",
        ok,
        measured.kl,
        tol,
        detail=f"crop at {keep} of {length}",
        extra=measured.extra(),
    )


@_no_grad
def check_padding(base: BaseAdapter, lengths: tuple[int, int] = (20, 13)) -> CheckResult:
    """Left- and right-padded batches give the unpadded logits at every real position."""
    pad_id = base.tokenizer.pad_token_id if base.tokenizer is not None else None
    pad_id = int(pad_id) if pad_id is not None and pad_id < base.vocab_size else 0
    width = max(lengths)
    seqs = [sample_ids(base, n, seed=10 + i)[0] for i, n in enumerate(lengths)]
    alone = [
        base.forward(base.embed(s[None]), _positions(len(s)), None, use_cache=False).logits[0]
        for s in seqs
    ]
    worst = Gap(0.0, 0.0, 1.0)
    for side in ("left", "right"):
        ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for row, s in enumerate(seqs):
            span = slice(width - len(s), width) if side == "left" else slice(0, len(s))
            ids[row, span] = s
            mask[row, span] = 1
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        logits = base.forward(
            base.embed(ids), positions, None, attention_mask=mask, use_cache=False
        ).logits
        for row in range(len(seqs)):
            real = mask[row].bool()
            measured = gap(alone[row], logits[row, real])
            worst = measured if measured.kl > worst.kl else worst
    tol = tolerance(base, "padding")
    return CheckResult(
        "padding",
        worst.kl <= tol,
        worst.kl,
        tol,
        detail="left and right padding",
        extra=worst.extra(),
    )


@_no_grad
def check_lora_roundtrip(base: BaseAdapter, length: int = 16) -> CheckResult:
    """Attach a LoRA adapter (peft) that changes the output, detach it: logits bit-identical."""
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError:
        return CheckResult("lora_roundtrip", True, skipped=True, detail="peft is not installed")
    x_ids = sample_ids(base, length, seed=4)
    before = base.forward(base.embed(x_ids), _positions(length), None, use_cache=False).logits
    lora = LoraConfig(
        r=4,
        lora_alpha=8,
        target_modules=list(base.quirks.lora_targets),
        init_lora_weights=False,  # random B, so the attached adapter really changes the output
        fan_in_fan_out=base.quirks.family == "gpt2",  # GPT-2 projections are Conv1D
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # peft calls a deprecated transformers API
        wrapped = get_peft_model(base.model, lora)
        during = base.forward(base.embed(x_ids), _positions(length), None, use_cache=False).logits
        base.model = wrapped.unload()
    after = base.forward(base.embed(x_ids), _positions(length), None, use_cache=False).logits
    identical = bool(torch.equal(before, after))
    changed = max_diff(before, during)
    frozen = not any(p.requires_grad for p in base.model.parameters())
    leftover = [n for n, _ in base.model.named_modules() if "lora" in n.lower()]
    ok = identical and changed > 0 and frozen and not leftover
    detail = (
        f"while attached max |Δ log p| = {changed:.3g}; after detach bit-identical={identical}, "
        f"frozen={frozen}, leftover LoRA modules={len(leftover)}"
    )
    return CheckResult("lora_roundtrip", ok, 0.0 if identical else 1.0, 0.0, detail=detail)


@_no_grad
def check_splice(
    base: BaseAdapter, at: int = 9, count: int = 3, length: int = 24, seed: int = 5
) -> CheckResult:
    """Vectors spliced at ``[at, at+count)`` run and change the output only from ``at`` on."""
    x = base.embed(sample_ids(base, length, seed=seed))
    generator = torch.Generator().manual_seed(seed + 100)
    scale = float(x.float().norm(dim=-1).mean()) / base.d_model**0.5
    gists = torch.randn(1, count, base.d_model, generator=generator) * scale
    spliced = x.clone()
    spliced[:, at : at + count] = gists.to(x.dtype)
    pos = _positions(length)
    plain = base.forward(x, pos, None, use_cache=False).logits
    mixed = base.forward(spliced, pos, None, use_cache=False).logits
    prefix_err = gap(plain[:, :at], mixed[:, :at]).kl if at > 0 else 0.0
    effect = max_diff(plain[:, at:], mixed[:, at:])
    finite = bool(torch.isfinite(mixed).all())
    tol = tolerance(base, "splice_prefix")
    ok = finite and prefix_err <= tol and effect >= SPLICE_MIN_EFFECT
    detail = f"prefix max |Δ log p| = {prefix_err:.3g}; effect from the splice on = {effect:.3g}"
    return CheckResult("splice", ok, prefix_err, tol, detail=detail, extra={"effect": effect})


@_no_grad
def check_global_gaps(base: BaseAdapter, length: int = 20, gap: int = 500) -> CheckResult:
    """Positions with a jump (``global`` policy) still attend across the jump."""
    if "global" not in base.position_policies:
        return CheckResult("global_gaps", True, skipped=True, detail="compact policy only")
    ids = sample_ids(base, length, seed=6)
    half = length // 2
    pos = torch.cat([torch.arange(half), torch.arange(half, length) + gap]).unsqueeze(0)
    changed = ids.clone()
    changed[:, 0] = (ids[:, 0] + 1) % max(3, min(base.vocab_size, len(base.tokenizer)))
    effect = float("inf")
    for use_cache in (False, True):  # both ways the adapter calls the model
        a = base.forward(base.embed(ids), pos, None, use_cache=use_cache).logits
        b = base.forward(base.embed(changed), pos, None, use_cache=use_cache).logits
        effect = min(effect, max_diff(a[:, half:], b[:, half:]))
    ok = effect >= SPLICE_MIN_EFFECT
    return CheckResult(
        "global_gaps",
        ok,
        effect,
        SPLICE_MIN_EFFECT,
        detail="entries after a position jump must still see the entries before it",
    )


@_no_grad
def check_gaussian(base: BaseAdapter, length: int = 20, at: int = 8) -> CheckResult:
    """``sigma=0`` is plain RoPE exactly; a wide entry changes outputs from itself on only."""
    if "gaussian" not in base.position_policies:
        return CheckResult(
            "gaussian", True, skipped=True, detail="gaussian policy unsupported (no rotary)"
        )
    x = base.embed(sample_ids(base, length, seed=7))
    pos = _positions(length, 100)
    plain = base.forward(x, pos, None, use_cache=False).logits
    zero = base.forward(x, pos, None, sigma=torch.zeros(1, length), use_cache=False).logits
    sigma = torch.zeros(1, length)
    sigma[0, at] = 32.0
    wide = base.forward(x, pos, None, sigma=sigma, use_cache=False).logits
    identity = float((plain.float() - zero.float()).abs().max())
    prefix = gap(plain[:, :at], wide[:, :at]).kl
    effect = max_diff(plain[:, at:], wide[:, at:])
    ok = identity == 0.0 and prefix <= tolerance(base, "splice_prefix") and effect > 0
    detail = f"sigma=0 identity err {identity:.3g}; prefix {prefix:.3g}; effect {effect:.3g}"
    return CheckResult("gaussian", ok, identity, 0.0, detail=detail)


@_no_grad
def router_choices(base: BaseAdapter, ids: Tensor) -> list[Tensor]:
    """Top-k expert indices chosen by every MoE router for ``ids`` (one tensor per layer)."""
    chosen: list[Tensor] = []

    def hook(_module: Any, _args: Any, output: Any) -> None:
        chosen.append(output[-1].detach().clone())

    routers = [m for name, m in base.model.named_modules() if name.endswith("mlp.gate")]
    handles = [r.register_forward_hook(hook) for r in routers]
    try:
        base.forward(base.embed(ids), _positions(ids.shape[1]), None, use_cache=False)
    finally:
        for handle in handles:
            handle.remove()
    return chosen


def check_moe_routing(base: BaseAdapter, length: int = 24) -> CheckResult:
    """MoE routing is deterministic under a seed and picks ``top_k`` distinct experts."""
    top_k = getattr(base.config, "num_experts_per_tok", None)
    if top_k is None:
        return CheckResult("moe_routing", True, skipped=True, detail="not a mixture of experts")
    ids = sample_ids(base, length, batch=2, seed=8)
    runs = []
    for seed in (0, 0, 1):
        torch.manual_seed(seed)
        runs.append(router_choices(base, ids))
    same = all(torch.equal(a, b) for run in runs[1:] for a, b in zip(runs[0], run, strict=True))
    shapes_ok = bool(runs[0]) and all(c.shape[-1] == top_k for c in runs[0])
    distinct = all(bool((c.sort(dim=-1).values.diff(dim=-1) != 0).all()) for c in runs[0])
    ok = same and shapes_ok and distinct
    detail = (
        f"{len(runs[0])} routers, top-{top_k}; identical across seeds 0, 0, 1: {same}; "
        f"distinct experts per token: {distinct}"
    )
    return CheckResult("moe_routing", ok, None, None, detail=detail)


def reference_logits(base: BaseAdapter, length: int = 24) -> Tensor:
    """Logits on fixed seeded ids, for comparing the same checkpoint across dtypes."""
    ids = sample_ids(base, length, batch=2, seed=9)
    with torch.no_grad():
        out = base.forward(base.embed(ids), _positions(length), None, use_cache=False)
    return out.logits.float()


def compare_dtypes(low: Tensor, high: Tensor, *, moe: bool = False) -> CheckResult:
    """bf16 logits vs fp32 logits of the same checkpoint on the same inputs."""
    measured = gap(high, low)
    bound = BF16_VS_FP32_MAX_KL_MOE if moe else BF16_VS_FP32_MAX_KL
    ok = measured.kl <= bound and measured.top1 >= BF16_VS_FP32_MIN_TOP1
    detail = f"top-1 agreement {measured.top1:.3f} (min {BF16_VS_FP32_MIN_TOP1})"
    return CheckResult(
        "bf16_vs_fp32", ok, measured.kl, bound, detail=detail, extra=measured.extra()
    )


CHECKS: dict[str, Callable[[BaseAdapter], CheckResult]] = {
    "embeds_vs_ids": check_embeds_vs_ids,
    "rope_relativity": check_rope_relativity,
    "exact_phases": check_exact_phases,
    "kv_crop": check_kv_crop,
    "padding": check_padding,
    "splice": check_splice,
    "global_gaps": check_global_gaps,
    "gaussian": check_gaussian,
    "moe_routing": check_moe_routing,
    "lora_roundtrip": check_lora_roundtrip,
}


def run_checks(
    base: BaseAdapter,
    *,
    dtypes: tuple[str, ...] = ("float32", "bfloat16"),
    progress: Callable[[str], None] | None = None,
) -> list[CheckResult]:
    """Run every check in each dtype (casting the model in place), then bf16 vs fp32.

    The model ends in the last dtype of ``dtypes``; its fingerprint is unaffected because
    weights are hashed in their stored dtype.
    """
    say = progress or (lambda _msg: None)
    results: list[CheckResult] = []
    references: dict[str, Tensor] = {}
    for name in dtypes:
        base.model.to(getattr(torch, name))
        for check, fn in CHECKS.items():
            say(f"{check} ({name})")
            result = copy.copy(fn(base))
            result.name = f"{result.name}[{name}]"
            results.append(result)
        references[name] = reference_logits(base)
    if "float32" in references and "bfloat16" in references:
        say("bf16_vs_fp32")
        moe = getattr(base.config, "num_experts_per_tok", None) is not None
        results.append(compare_dtypes(references["bfloat16"], references["float32"], moe=moe))
    return results


__all__ = [
    "BF16_VS_FP32_MAX_KL",
    "BF16_VS_FP32_MAX_KL_MOE",
    "BF16_VS_FP32_MIN_TOP1",
    "CHECKS",
    "EXACT_OFFSETS",
    "RELATIVITY_OFFSETS",
    "TOLERANCES",
    "CheckResult",
    "Gap",
    "check_embeds_vs_ids",
    "check_exact_phases",
    "check_gaussian",
    "check_global_gaps",
    "check_kv_crop",
    "check_lora_roundtrip",
    "check_moe_routing",
    "check_padding",
    "check_rope_relativity",
    "check_splice",
    "compare_dtypes",
    "gap",
    "reference_logits",
    "relativity_error",
    "relativity_gap",
    "run_checks",
]
