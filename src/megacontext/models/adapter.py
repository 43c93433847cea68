"""The base adapter: one class over ``transformers.AutoModelForCausalLM`` (DESIGN §6).

Everything above this layer talks to a frozen base model through five calls::

    ids    = base.encode("some text")                 # BOS per family quirks
    x      = base.embed(torch.tensor([ids]))          # (B, T, d) in input-embedding space
    out    = base.forward(x, position_ids, cache)     # logits, hidden, cache
    cache  = base.crop_cache(out.cache, n)            # keep the first n entries (D10)
    base.fingerprint                                  # sha256 of config, weights, tokenizer (D13)

``forward`` takes embeddings, never ids, so a working context can mix token embeddings and
gists freely; positions are explicit so the position policy (D6) is the caller's decision.

Two details matter for correctness and are handled here once:

* transformers treats ``position_ids`` with jumps as *packed sequences* when it gets neither an
  attention mask nor a cache, and then blocks attention across each jump, which would silently
  cut a ``global``-policy working context (a gist at its span centre, then tokens) into pieces.
  The adapter therefore always passes a cache or, when ``use_cache=False``, an all-ones mask.
* ``gaussian`` damping (D6) multiplies each entry's rotary cos/sin by ``exp(-½(σ·ω_k)²)`` per
  frequency ``ω_k`` (the model's own, already-scaled ``inv_freq``) through a hook on the rotary
  module; exact fractional positions ``mu`` (a gist's span centre) replace the phases the same
  way. With neither, the hook returns the module's output untouched.
"""

from __future__ import annotations

from functools import cached_property
from typing import Any, NamedTuple

import torch
from torch import Tensor

from megacontext.errors import InvalidInputError
from megacontext.models import fingerprint as fp
from megacontext.models.errors import UnsupportedPositionPolicyError
from megacontext.models.quirks import FamilyQuirks, PositionPolicy, quirks_for_config, rope_type_of


class _StopForward(Exception):
    """Raised by a forward hook once the wanted layer has run (``hidden_states``)."""


class ForwardOutput(NamedTuple):
    """What :meth:`BaseAdapter.forward` returns (unpacks as ``logits, hidden, cache``)."""

    logits: Tensor
    """(B, T, vocab) next-token logits for every input position."""
    hidden: Tensor
    """(B, T, d_model) final hidden states (after the final norm, before the LM head)."""
    cache: Any
    """The KV cache (a ``transformers.DynamicCache``) extended by this call, or ``None``."""


class BaseAdapter:
    """A frozen causal LM behind the interface of DESIGN §6.

    Build one with :func:`megacontext.models.load_base`, or wrap an in-memory model with
    ``BaseAdapter(model, tokenizer)``. The model is put in eval mode and its weights are frozen
    (D1): gradients can still flow *through* it to ``inputs_embeds``, never into it.

    Args:
        model: A transformers causal LM of a family in the quirks table.
        tokenizer: Its tokenizer.
        source: Where the model came from (a path or hub id), for reports.
        stored_dtype: The dtype the checkpoint stores weights in (used by the fingerprint).
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        *,
        source: str = "<in-memory>",
        stored_dtype: torch.dtype | None = None,
    ) -> None:
        self.quirks: FamilyQuirks = quirks_for_config(model.config)
        model.eval()
        model.requires_grad_(False)
        self.model = model
        self.tokenizer = tokenizer
        self.config = model.config
        self.source = source
        self.stored_dtype = stored_dtype
        # Where load_base's time went (resolving, converting a GGUF, loading); empty otherwise.
        self.load_seconds: dict[str, float] = {}
        self._backbone = model.base_model
        self._lm_head = model.get_output_embeddings()
        self._embed_tokens = model.get_input_embeddings()
        self._sigma: Tensor | None = None
        self._mu: Tensor | None = None
        self._rotary = getattr(self._backbone, "rotary_emb", None)
        if self._rotary is not None:
            self._rotary.register_forward_hook(self._damp_rotary)

    # ----------------------------------------------------------------- description
    @property
    def family(self) -> str:
        """Family name from the quirks table (``llama``, ``qwen2``, ...)."""
        return self.quirks.family

    @property
    def d_model(self) -> int:
        """Width of the input-embedding space (what ``embed`` returns and ``forward`` takes)."""
        return int(self._embed_tokens.weight.shape[1])

    @property
    def vocab_size(self) -> int:
        """Number of rows of the LM head (may exceed the tokenizer's vocabulary)."""
        return int(self._lm_head.weight.shape[0])

    @property
    def dtype(self) -> torch.dtype:
        return self._embed_tokens.weight.dtype

    @property
    def device(self) -> torch.device:
        return self._embed_tokens.weight.device

    @property
    def position_policies(self) -> tuple[PositionPolicy, ...]:
        """Position policies (D6) this base supports, the default first."""
        if self.quirks.position_kind == "rope" and self._rotary is None:
            return ("compact", "global")
        return self.quirks.policies

    @property
    def max_position(self) -> int | None:
        """Exclusive upper bound on position ids for absolute-position families, else ``None``."""
        if self.quirks.position_kind == "absolute":
            return int(self.config.max_position_embeddings)
        return None

    @property
    def trained_positions(self) -> int | None:
        """How many positions the base was trained to read (``max_position_embeddings``), or
        ``None`` when its config does not say."""
        value = getattr(self.config, "max_position_embeddings", None)
        return int(value) if isinstance(value, int) and value > 0 else None

    @cached_property
    def embedding_norm(self) -> float:
        """Median L2 norm of what ``embed`` returns: the scale a gist should have (§6).

        Families that scale embeddings inside the embedding module (Gemma: by sqrt(d)) are
        measured after that scale.
        """
        weight = self._embed_tokens.weight.detach().float()
        scale = float(getattr(self._embed_tokens, "embed_scale", 1.0))
        return float(weight.norm(dim=-1).median()) * scale

    @property
    def tied_embeddings(self) -> bool:
        """Whether the LM head shares its weight with the input embedding."""
        return bool(self._lm_head.weight.data_ptr() == self._embed_tokens.weight.data_ptr())

    @property
    def bos_token_id(self) -> int | None:
        return getattr(self.tokenizer, "bos_token_id", None)

    @property
    def eos_token_id(self) -> int | None:
        return getattr(self.tokenizer, "eos_token_id", None)

    def describe(self) -> dict[str, Any]:
        """A JSON-able summary: family, sizes, quirks, policies (used by reports and the CLI)."""
        return {
            "source": self.source,
            "family": self.family,
            "model_type": self.config.model_type,
            "architectures": list(getattr(self.config, "architectures", None) or []),
            "d_model": self.d_model,
            "vocab_size": self.vocab_size,
            "num_layers": int(self.config.num_hidden_layers),
            "position_kind": self.quirks.position_kind,
            "rope_type": rope_type_of(self.config) if self.quirks.position_kind == "rope" else None,
            "position_policies": list(self.position_policies),
            "tied_embeddings": self.tied_embeddings,
            "prepend_bos": self.prepends_bos,
            "chat_template": bool(getattr(self.tokenizer, "chat_template", None)),
            "dtype": str(self.dtype).removeprefix("torch."),
            "parameters": sum(p.numel() for p in self.model.parameters()),
        }

    # ----------------------------------------------------------------- fingerprints
    @cached_property
    def fingerprints(self) -> dict[str, str]:
        """The parts of the fingerprint: ``config``, ``weights``, ``tokenizer`` (sha256 hex)."""
        return {
            "config": fp.config_digest(self.config),
            "weights": fp.weights_digest(self.model, self.stored_dtype),
            "tokenizer": fp.tokenizer_digest(self.tokenizer),
        }

    @property
    def fingerprint(self) -> str:
        """sha256 over config, weights and tokenizer (D13), computed once and cached."""
        parts = self.fingerprints
        return fp.combine(parts["config"], parts["weights"], parts["tokenizer"])

    @property
    def tokenizer_fingerprint(self) -> str:
        return self.fingerprints["tokenizer"]

    # ----------------------------------------------------------------- tokens
    @cached_property
    def prepends_bos(self) -> bool:
        """Whether a sequence starts with BOS: the family's convention, except where the BOS
        token opens the turns of the chat template (SmolLM2's ``<|im_start|>``): there it is a
        turn marker, and a history starts with the template's own prefix instead."""
        if not self.quirks.prepend_bos or self.bos_token_id is None:
            return False
        template = getattr(self.tokenizer, "chat_template", None) or ""
        bos = getattr(self.tokenizer, "bos_token", None)
        return not (isinstance(template, str) and bos and bos in template)

    def encode(self, text: str, *, add_bos: bool | None = None) -> list[int]:
        """Token ids for ``text``, with exactly one BOS where the base uses one.

        Args:
            text: The text to tokenize.
            add_bos: Force BOS on or off; ``None`` follows :attr:`prepends_bos`.
        """
        # verbose=False: the history is never fed to the base whole, so the tokenizer's warning
        # about sequences longer than the model reads does not apply.
        ids = list(self.tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"])
        want_bos = self.prepends_bos if add_bos is None else add_bos
        if want_bos and self.bos_token_id is not None and (not ids or ids[0] != self.bos_token_id):
            ids.insert(0, int(self.bos_token_id))
        return ids

    def encode_with_offsets(self, text: str) -> tuple[list[int], list[tuple[int, int]] | None]:
        """Token ids of ``text`` (no BOS) and, per token, the ``[start, end)`` characters of
        ``text`` it came from — ``None`` when the tokenizer cannot say (a slow tokenizer).

        Provenance uses the offsets to give every span of the history its lines in the source.
        """
        if not getattr(self.tokenizer, "is_fast", False):
            return self.encode(text, add_bos=False), None
        encoded = self.tokenizer(
            text, add_special_tokens=False, return_offsets_mapping=True, verbose=False
        )
        offsets = [(int(a), int(b)) for a, b in encoded["offset_mapping"]]
        return list(encoded["input_ids"]), offsets

    def decode(self, ids: list[int] | Tensor) -> str:
        if isinstance(ids, Tensor):
            ids = ids.tolist()
        return str(self.tokenizer.decode(ids, skip_special_tokens=True))

    def embed(self, ids: Tensor) -> Tensor:
        """Input embeddings of token ids: (B, T) or (T,) long → (B, T, d) or (T, d)."""
        if ids.dtype not in (torch.int32, torch.int64):
            raise InvalidInputError(f"embed() takes integer token ids, got dtype {ids.dtype}")
        if ids.numel():
            low, high = (int(v) for v in torch.aminmax(ids))
            if low < 0 or high >= self._embed_tokens.num_embeddings:
                raise InvalidInputError(
                    f"token ids must lie in [0, {self._embed_tokens.num_embeddings}); got "
                    f"[{low}, {high}] - were they made by another tokenizer?"
                )
        return self._embed_tokens(ids.to(self.device, torch.long))

    # ----------------------------------------------------------------- cache
    def new_cache(self) -> Any:
        """An empty KV cache for this model.

        Every layer keeps its whole history, sliding-window layers included (their window is
        applied by the attention mask): a sliding cache drops old entries, and then cropping
        to an earlier entry and recomputing the suffix (D10) would read a cache that lost them.
        """
        from transformers import DynamicCache

        if getattr(self.config, "sliding_window", None) and getattr(
            self.config, "layer_types", None
        ):
            return DynamicCache()
        return DynamicCache(config=self.config)

    def cache_length(self, cache: Any) -> int:
        return 0 if cache is None else int(cache.get_seq_length())

    def crop_cache(self, cache: Any, n: int) -> Any:
        """Keep the first ``n`` positions of ``cache`` (in place) and return it (D10).

        After an edit at working-context index ``n``, crop to ``n`` and recompute the suffix:
        the result equals a full recompute (the portability suite checks this).

        Raises:
            InvalidInputError: ``n`` is negative or longer than the cache.
        """
        length = self.cache_length(cache)
        if not 0 <= n <= length:
            raise InvalidInputError(f"cannot crop a cache of {length} positions to {n}")
        if n < length:
            cache.crop(n - length)
        return cache

    def cache_prefix(self, cache: Any, n: int, batch: int = 1) -> Any:
        """A new cache holding the first ``n`` positions of ``cache`` (one sequence), repeated
        ``batch`` times; ``cache`` itself is unchanged.

        Many variants of one context that agree up to entry ``n`` (the single edits that
        LensNet's labels compare) then recompute only their suffixes, in one batch (D10).

        Raises:
            InvalidInputError: ``n`` is outside the cache, ``batch`` < 1, or ``cache`` holds
                more than one sequence.
        """
        length = self.cache_length(cache)
        if not 0 <= n <= length:
            raise InvalidInputError(f"cannot take {n} positions of a cache of {length}")
        if batch < 1:
            raise InvalidInputError(f"batch must be >= 1, got {batch}")
        out = self.new_cache()
        for index, layer in enumerate(cache.layers):
            if layer.keys.shape[0] != 1:
                raise InvalidInputError(
                    f"cache_prefix repeats one sequence; this cache holds {layer.keys.shape[0]}"
                )
            keys = layer.keys[:, :, :n].expand(batch, -1, -1, -1).contiguous()
            values = layer.values[:, :, :n].expand(batch, -1, -1, -1).contiguous()
            out.update(keys, values, index)
        return out

    # ----------------------------------------------------------------- forward
    def forward(
        self,
        inputs_embeds: Tensor,
        position_ids: Tensor,
        cache: Any = None,
        *,
        attention_mask: Tensor | None = None,
        sigma: Tensor | None = None,
        mu: Tensor | None = None,
        use_cache: bool = True,
        logits_last: int | None = None,
    ) -> ForwardOutput:
        """Run the frozen base on embeddings at explicit positions.

        Args:
            inputs_embeds: (B, T, d) entry vectors (token embeddings or gists).
            position_ids: (B, T) or (T,) integer positions of the entries.
            cache: KV cache holding earlier entries, or ``None`` to start fresh.
            attention_mask: (B, past + T) with 1 for real entries and 0 for padding; all ones
                when omitted.
            sigma: (B, T) per-entry span width for the ``gaussian`` policy (0 = a token);
                ``None`` means plain rotary positions.
            mu: (B, T) exact, possibly fractional positions (a gist's span centre) for rotary
                families; the rotary phases are then computed from ``mu`` in float64, which
                also removes fp32 phase rounding at large positions. ``position_ids`` still
                drive everything else.
            use_cache: Return a cache extended by this call.
            logits_last: Compute logits for the last ``logits_last`` positions only (training
                scores a few tokens of long windows; the LM head over a 49k vocabulary is a
                large share of a small base's forward).

        Returns:
            ``ForwardOutput(logits, hidden, cache)``.
        """
        if inputs_embeds.dim() != 3 or inputs_embeds.shape[-1] != self.d_model:
            raise InvalidInputError(
                f"inputs_embeds must be (batch, length, {self.d_model}); got "
                f"{tuple(inputs_embeds.shape)}"
            )
        batch, length, _ = inputs_embeds.shape
        position_ids = self._check_positions(position_ids, batch, length)
        past = self.cache_length(cache)
        if attention_mask is not None and tuple(attention_mask.shape) != (batch, past + length):
            raise InvalidInputError(
                f"attention_mask must be (batch, cached + new) = {(batch, past + length)}; got "
                f"{tuple(attention_mask.shape)}"
            )
        if use_cache and cache is None:
            cache = self.new_cache()
        if attention_mask is None and not use_cache:
            # Without a cache and a mask, transformers reads position jumps as packed sequences.
            attention_mask = torch.ones(batch, length, dtype=torch.long, device=self.device)
        if sigma is not None:
            self.check_policy("gaussian")
            self._sigma = self._check_per_entry("sigma", sigma, batch, length)
        if mu is not None:
            self.check_policy("global")
            self._mu = self._check_per_entry("mu", mu, batch, length)
        try:
            out = self._backbone(
                inputs_embeds=inputs_embeds.to(self.dtype),
                attention_mask=attention_mask,
                position_ids=position_ids,
                cache=cache if use_cache else None,
                use_cache=use_cache,
            )
        finally:
            self._sigma = self._mu = None
        hidden = out.last_hidden_state
        logits = self._lm_head(hidden if logits_last is None else hidden[:, -logits_last:])
        return ForwardOutput(logits, hidden, cache if use_cache else None)

    __call__ = forward

    def hidden_states(
        self, inputs_embeds: Tensor, position_ids: Tensor, layer: int | None = None
    ) -> Tensor:
        """``(B, T, d)`` hidden states of entries read from scratch (no cache).

        ``layer`` None: the final hidden states (after the final norm). ``layer`` L ≥ 1: the
        residual stream after decoder layer L; the layers after it do not run, so reading
        layer L of an n-layer base costs about L/n of a forward.
        """
        if layer is None:
            return self.forward(inputs_embeds, position_ids, use_cache=False, logits_last=1).hidden
        layers = self._decoder_layers()
        if not 1 <= layer <= len(layers):
            raise InvalidInputError(
                f"layer must be in [1, {len(layers)}] for this {len(layers)}-layer base, got "
                f"{layer}"
            )
        captured: list[Tensor] = []

        def stop_after(_module: Any, _args: Any, output: Any) -> None:
            captured.append(output[0] if isinstance(output, tuple) else output)
            raise _StopForward

        handle = layers[layer - 1].register_forward_hook(stop_after)
        try:
            self.forward(inputs_embeds, position_ids, use_cache=False, logits_last=1)
        except _StopForward:
            pass
        finally:
            handle.remove()
        return captured[0]

    def _decoder_layers(self) -> torch.nn.ModuleList:
        for name in ("layers", "h"):  # Llama-like families, GPT-2
            found = getattr(self._backbone, name, None)
            if isinstance(found, torch.nn.ModuleList):
                return found
        raise InvalidInputError(f"no decoder layer list found in this {self.family} model")

    # ----------------------------------------------------------------- checks and hooks
    def check_policy(self, policy: str) -> PositionPolicy:
        """Return ``policy`` if this base supports it, else raise a typed error."""
        if policy not in self.position_policies:
            raise UnsupportedPositionPolicyError(
                f"position policy {policy!r} is not supported by {self.family} "
                f"({self.quirks.position_kind} positions); supported: "
                f"{', '.join(self.position_policies)}"
            )
        return policy

    def _check_positions(self, position_ids: Tensor, batch: int, length: int) -> Tensor:
        if position_ids.dim() == 1:
            position_ids = position_ids.unsqueeze(0)
        if position_ids.dtype not in (torch.int32, torch.int64):
            raise InvalidInputError(f"position_ids must be integers, got {position_ids.dtype}")
        if position_ids.shape[-1] != length or position_ids.shape[0] not in (1, batch):
            raise InvalidInputError(
                f"position_ids must be ({batch}, {length}) or ({length},); got "
                f"{tuple(position_ids.shape)}"
            )
        if position_ids.numel():
            low, high = (int(v) for v in torch.aminmax(position_ids))
            if low < 0:
                raise InvalidInputError("position_ids must be non-negative")
            limit = self.max_position
            if limit is not None and high >= limit:
                raise InvalidInputError(
                    f"{self.family} has a learned table of {limit} absolute positions; got "
                    f"position {high}. Use the compact policy and keep the working context "
                    f"below {limit} entries."
                )
        return position_ids.to(self.device, torch.long).expand(batch, length)

    def _check_per_entry(self, name: str, values: Tensor, batch: int, length: int) -> Tensor:
        if values.dim() == 1:
            values = values.unsqueeze(0)
        if values.shape[-1] != length or values.shape[0] not in (1, batch):
            raise InvalidInputError(
                f"{name} must be ({batch}, {length}) or ({length},); got {tuple(values.shape)}"
            )
        if values.numel() and not bool(torch.isfinite(values).all()):
            raise InvalidInputError(f"{name} must be finite")
        if values.numel() and float(values.min()) < 0:
            raise InvalidInputError(f"{name} must be non-negative")
        return values.to(self.device, torch.float64).expand(batch, length)

    def _damp_rotary(self, module: Any, args: Any, output: tuple[Tensor, Tensor]) -> Any:
        """Forward hook on the rotary module: exact phases (``mu``), damping (``sigma``), D6.

        Families with one rotary table per layer type (Gemma 3) call the module with the layer
        type as third argument and keep ``<type>_inv_freq`` per table.
        """
        sigma, mu = self._sigma, self._mu
        if sigma is None and mu is None:
            return output
        cos, sin = output
        inv_freq, scale = rotary_table(module, args[2] if len(args) > 2 else None)
        inv_freq = inv_freq.to(device=cos.device, dtype=torch.float64)
        if mu is not None:
            freqs = mu[..., None] * inv_freq  # (B, T, head_dim / 2), float64 phases
            emb = torch.cat((freqs, freqs), dim=-1)
            cos = (emb.cos() * scale).to(cos.dtype)
            sin = (emb.sin() * scale).to(sin.dtype)
        if sigma is not None:
            damp = torch.exp(-0.5 * (sigma[..., None] * inv_freq) ** 2)  # (B, T, head_dim / 2)
            damp = torch.cat((damp, damp), dim=-1).to(cos.dtype)
            cos, sin = cos * damp, sin * damp
        return cos, sin

    def __repr__(self) -> str:
        return (
            f"BaseAdapter(family={self.family!r}, d_model={self.d_model}, "
            f"vocab_size={self.vocab_size}, source={self.source!r})"
        )


def rotary_table(module: Any, layer_type: str | None) -> tuple[Tensor, float]:
    """The (already scaled) inverse frequencies and attention scaling of a rotary module, for
    ``layer_type`` when the module keeps one table per layer type."""
    if layer_type is not None and hasattr(module, f"{layer_type}_inv_freq"):
        return (
            getattr(module, f"{layer_type}_inv_freq"),
            float(getattr(module, f"{layer_type}_attention_scaling", 1.0)),
        )
    return module.inv_freq, float(getattr(module, "attention_scaling", 1.0))


__all__ = ["BaseAdapter", "ForwardOutput", "rotary_table"]
