"""The per-family quirks table (DESIGN §6).

One adapter serves every supported family; what differs between families is data, kept here:
how positions enter the model (rotary vs learned absolute table), which position policies
(DESIGN D6) that allows, whether the tokenizer conventionally starts a sequence with BOS, which
modules LoRA targets, and the architecture details the portability suite must exercise (QKV bias,
QK-norm, mixture-of-experts routing, llama3 rope scaling, tied embeddings).

Adding a family means adding one :class:`FamilyQuirks` row and running
``megacontext port-model`` on a checkpoint of it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from megacontext.models.errors import NotACausalLMError, UnsupportedArchitectureError

PositionPolicy = Literal["compact", "global", "gaussian"]
POSITION_POLICIES: tuple[PositionPolicy, ...] = ("compact", "global", "gaussian")


@dataclass(frozen=True)
class FamilyQuirks:
    """What the adapter must know about one model family.

    Attributes:
        family: Short family name used in configs and reports.
        model_types: ``config.model_type`` values that belong to this family.
        position_kind: ``"rope"`` (rotary, relative) or ``"absolute"`` (learned position table).
        policies: Position policies the family supports, default first.
        prepend_bos: Whether sequences conventionally start with the tokenizer's BOS token.
        lora_targets: Module names LoRA attaches to by default.
        rope_types: Rotary scaling types (``rope_parameters["rope_type"]``) the adapter knows.
        notes: Human-readable quirks, copied into adapter configs and reports.
    """

    family: str
    model_types: tuple[str, ...]
    position_kind: Literal["rope", "absolute"]
    policies: tuple[PositionPolicy, ...]
    prepend_bos: bool
    lora_targets: tuple[str, ...]
    rope_types: tuple[str, ...] = ("default",)
    notes: tuple[str, ...] = field(default_factory=tuple)


_ROPE_POLICIES: tuple[PositionPolicy, ...] = ("compact", "global", "gaussian")

QUIRKS: dict[str, FamilyQuirks] = {
    q.family: q
    for q in (
        FamilyQuirks(
            family="llama",
            model_types=("llama",),
            position_kind="rope",
            policies=_ROPE_POLICIES,
            prepend_bos=True,
            lora_targets=("q_proj", "v_proj"),
            rope_types=("default", "llama3", "linear", "dynamic"),
            notes=(
                "Llama 3.x checkpoints use rope_type 'llama3' (per-frequency scaling of inv_freq); "
                "gaussian damping is applied to the already-scaled frequencies.",
                "The Llama tokenizer prepends BOS; the adapter never adds a second one.",
                "Llama 3.2 1B/3B tie input and output embeddings; 8B does not.",
            ),
        ),
        FamilyQuirks(
            family="qwen2",
            model_types=("qwen2",),
            position_kind="rope",
            policies=_ROPE_POLICIES,
            prepend_bos=False,
            lora_targets=("q_proj", "v_proj"),
            notes=(
                "Q, K and V projections carry a bias; LoRA detach must restore it untouched.",
                "Qwen tokenizers add no BOS; config.bos_token_id exists but is not prepended.",
                "Small checkpoints (0.5B-3B) tie embeddings; sliding window is off by default.",
            ),
        ),
        FamilyQuirks(
            family="qwen3",
            model_types=("qwen3",),
            position_kind="rope",
            policies=_ROPE_POLICIES,
            prepend_bos=False,
            lora_targets=("q_proj", "v_proj"),
            notes=(
                "RMSNorm on each head's queries and keys (QK-norm) before rotary embedding, so "
                "gaussian damping scales the normalised q/k.",
                "head_dim is set explicitly (128) and differs from hidden/heads.",
                "Qwen tokenizers add no BOS.",
            ),
        ),
        FamilyQuirks(
            family="mixtral",
            model_types=("mixtral",),
            position_kind="rope",
            policies=_ROPE_POLICIES,
            prepend_bos=True,
            lora_targets=("q_proj", "v_proj"),
            notes=(
                "Sparse mixture of experts with top-2 routing per token; router jitter noise is "
                "only active in training mode, and the adapter keeps the base in eval mode, so "
                "routing is a deterministic function of the inputs.",
                "The Mistral/Mixtral tokenizer prepends BOS.",
            ),
        ),
        FamilyQuirks(
            family="mistral",
            model_types=("mistral",),
            position_kind="rope",
            policies=_ROPE_POLICIES,
            prepend_bos=True,
            lora_targets=("q_proj", "v_proj"),
            notes=(
                "Llama's layout; GGUF files store Mistral models as 'llama' and transformers "
                "reads them as mistral when the model name says so.",
                "An optional sliding window (null in Mistral 7B v0.2+); the mask applies it.",
                "The tokenizer prepends BOS.",
            ),
        ),
        FamilyQuirks(
            family="phi3",
            model_types=("phi3",),
            position_kind="rope",
            policies=_ROPE_POLICIES,
            prepend_bos=False,
            lora_targets=("qkv_proj",),
            rope_types=("default", "longrope"),
            notes=(
                "Q, K and V are one fused projection (qkv_proj), and so are gate and up; LoRA "
                "targets the fused qkv_proj.",
                "Long-context checkpoints use rope_type 'longrope' (per-frequency factors).",
                "The tokenizer adds no BOS by default.",
            ),
        ),
        FamilyQuirks(
            family="gemma3",
            model_types=("gemma3_text",),
            position_kind="rope",
            policies=_ROPE_POLICIES,
            prepend_bos=True,
            lora_targets=("q_proj", "v_proj"),
            rope_types=("default", "linear"),
            notes=(
                "Two rotary tables in one module: sliding-window layers use theta 1e4, global "
                "layers theta 1e6 (rope_parameters per layer type); exact phases and gaussian "
                "damping are applied with each layer type's own frequencies.",
                "Most layers attend over a sliding window (512 tokens in Gemma 3 270M; 5 of every "
                "6 layers); the adapter keeps a full KV cache for every layer so that cropping "
                "and recomputing a suffix (D10) stays exact; the mask applies the window.",
                "The input embedding multiplies token vectors by sqrt(hidden_size) inside the "
                "embedding module, so embed() returns scaled vectors and gists live at that scale.",
                "The tokenizer prepends <bos>, which the model needs; a 262k vocabulary and tied "
                "embeddings.",
            ),
        ),
        FamilyQuirks(
            family="gpt2",
            model_types=("gpt2",),
            position_kind="absolute",
            policies=("compact",),
            prepend_bos=False,
            lora_targets=("c_attn",),
            notes=(
                "Learned absolute position table of n_positions entries: positions carry no "
                "relative structure, so only the compact policy is meaningful, and every "
                "position must be below n_positions.",
                "Attention projections are Conv1D; peft sets fan_in_fan_out automatically.",
                "Embeddings are tied; the tokenizer adds no BOS.",
            ),
        ),
    )
}

_CAUSAL_SUFFIXES = ("ForCausalLM", "LMHeadModel")


def family_for_model_type(model_type: str) -> FamilyQuirks:
    """Return the quirks row for a ``config.model_type``.

    Raises:
        UnsupportedArchitectureError: The model type is in no row of the table.
    """
    for quirks in QUIRKS.values():
        if model_type in quirks.model_types:
            return quirks
    supported = ", ".join(t for q in QUIRKS.values() for t in q.model_types)
    raise UnsupportedArchitectureError(
        f"model_type {model_type!r} has no entry in the quirks table (supported: {supported}); "
        "add a FamilyQuirks row in megacontext/models/quirks.py and run `megacontext port-model`"
    )


def quirks_for_config(config: Any) -> FamilyQuirks:
    """Select the quirks row for a transformers config, checking it describes a causal LM.

    Raises:
        NotACausalLMError: The config's architectures name no causal-LM head.
        UnsupportedArchitectureError: The family is not in the table, or its rope type is unknown.
    """
    architectures = list(getattr(config, "architectures", None) or [])
    if architectures and not any(a.endswith(_CAUSAL_SUFFIXES) for a in architectures):
        raise NotACausalLMError(
            f"config.architectures = {architectures} names no causal-LM head "
            f"(expected a class ending in {' or '.join(_CAUSAL_SUFFIXES)}); MegaContext needs a "
            "decoder-only next-token model such as LlamaForCausalLM"
        )
    quirks = family_for_model_type(str(getattr(config, "model_type", "")))
    if quirks.position_kind == "rope":
        for rope_type in rope_types_of(config).values():
            if rope_type not in quirks.rope_types:
                raise UnsupportedArchitectureError(
                    f"rope_type {rope_type!r} is not supported for family {quirks.family!r} "
                    f"(supported: {', '.join(quirks.rope_types)})"
                )
    return quirks


def rope_types_of(config: Any) -> dict[str, str]:
    """The rotary scaling type per layer type (``{"all": ...}`` when one table serves all).

    Families with several rotary tables (Gemma 3: sliding and full attention) keep one
    ``rope_parameters`` entry per layer type.
    """
    params = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {}
    nested = {k: v for k, v in params.items() if isinstance(v, dict)}
    if nested:
        return {k: str(v.get("rope_type", v.get("type", "default"))) for k, v in nested.items()}
    return {"all": str(params.get("rope_type", params.get("type", "default")))}


def rope_type_of(config: Any) -> str:
    """The rotary scaling type of a config (``"default"`` when unscaled); with one table per
    layer type, the types joined by ``/`` when they differ."""
    return "/".join(sorted(set(rope_types_of(config).values())))


__all__ = [
    "POSITION_POLICIES",
    "QUIRKS",
    "FamilyQuirks",
    "PositionPolicy",
    "family_for_model_type",
    "quirks_for_config",
    "rope_type_of",
    "rope_types_of",
]
