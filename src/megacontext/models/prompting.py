"""How a question is put to a base model: its chat template, or plain text with an answer cue.

An instruct model such as SmolLM2-135M-Instruct expects its chat template; a pretrained or tiny
model expects plain text. A history may be far longer than anything the base reads, so the
template is split around the user's content once, with a sentinel, into

* ``prefix`` — everything before the user's content (system turn, user-turn header). It is fed
  before the working context, is never part of the tree, and is never collapsed;
* the history (the working context), then the question and the template's closing part (end of
  the user turn, the assistant header): :meth:`PromptFormat.question_ids`.

Three styles, chosen by measurement (``megacontext bench longctx`` and BENCHMARKS.md):

``raw``
    ``[BOS where the family uses one][history]\\n{question} {cue}`` — the answer continues the
    cue (" The pass key is" → " 12345"). What small pretrained bases answer best.
``chat``
    ``[template prefix][history]\\n\\n{question}[end of turn][assistant header]`` — a free answer.
``chat-cue``
    ``chat`` with the cue already written at the start of the assistant's turn.

A base without a chat template only has ``raw``; asking it for a chat style is an error.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from megacontext.errors import InvalidInputError

if TYPE_CHECKING:
    from megacontext.models.adapter import BaseAdapter

PromptStyle = Literal["raw", "chat", "chat-cue"]
PROMPT_STYLES: tuple[PromptStyle, ...] = ("raw", "chat", "chat-cue")
# The style used when none is asked for, for bases that have a chat template and for those
# that do not. Chosen by measurement (BENCHMARKS.md, "prompt styles on SmolLM2").
DEFAULT_STYLE_CHAT_BASE: PromptStyle = "raw"
DEFAULT_STYLE_PLAIN_BASE: PromptStyle = "raw"
_SENTINEL = "\u2063MEGACONTEXT-HISTORY\u2063"
# Tokens that end an assistant turn in common chat templates (besides the tokenizer's EOS).
_END_OF_TURN = ("<|im_end|>", "<end_of_turn>", "<|eot_id|>", "<|end|>", "<|endoftext|>")


@dataclass(frozen=True)
class PromptFormat:
    """The fixed parts of a prompt for one base and style.

    Attributes:
        style: ``raw``, ``chat`` or ``chat-cue``.
        prefix: Token ids before the history (the template's prefix; BOS or nothing for raw).
        closing: Text after the question in chat styles (end of turn, assistant header).
        stop_ids: Token ids that end an answer (EOS, end-of-turn markers).
        stop_text: Text that ends an answer too (a newline in the raw style).
    """

    style: PromptStyle
    prefix: tuple[int, ...]
    closing: str
    stop_ids: frozenset[int]
    stop_text: tuple[str, ...]

    @classmethod
    def for_base(cls, base: BaseAdapter, style: PromptStyle | str = "raw") -> PromptFormat:
        """The format of ``style`` for ``base``.

        Raises:
            InvalidInputError: Unknown style, or a chat style for a base without a chat template.
        """
        if style not in PROMPT_STYLES:
            raise InvalidInputError(
                f"unknown prompt style {style!r}; use one of {', '.join(PROMPT_STYLES)}"
            )
        stops = {t for t in (base.eos_token_id,) if t is not None}
        for marker in _END_OF_TURN:
            token = base.tokenizer.convert_tokens_to_ids(marker)
            unk = getattr(base.tokenizer, "unk_token_id", None)
            if isinstance(token, int) and token != unk:
                stops.add(token)
        if style == "raw":
            bos = base.bos_token_id
            prefix = (int(bos),) if base.prepends_bos and bos is not None else ()
            return cls("raw", prefix, "", frozenset(stops), ("\n",))
        template = getattr(base.tokenizer, "chat_template", None)
        if not template:
            raise InvalidInputError(
                f"the base {base.source!r} has no chat template, so prompt style {style!r} is "
                "not available; use --prompt raw"
            )
        rendered = base.tokenizer.apply_chat_template(
            [{"role": "user", "content": _SENTINEL}], tokenize=False, add_generation_prompt=True
        )
        if rendered.count(_SENTINEL) != 1:
            raise InvalidInputError(
                f"the chat template of {base.source!r} does not place the user's message once "
                "in the prompt; use --prompt raw"
            )
        head, closing = rendered.split(_SENTINEL)
        prefix = tuple(base.tokenizer(head, add_special_tokens=False)["input_ids"])
        return cls(style, prefix, closing, frozenset(stops), ())  # type: ignore[arg-type]

    @staticmethod
    def default_style(base: BaseAdapter) -> PromptStyle:
        """The style for ``base`` when none is asked for."""
        if getattr(base.tokenizer, "chat_template", None):
            return DEFAULT_STYLE_CHAT_BASE
        return DEFAULT_STYLE_PLAIN_BASE

    def question_text(self, question: str, cue: str = "") -> str:
        """The text after the history: the question, the template's closing part, the cue."""
        if self.style == "raw":
            return f"\n{question} {cue}".rstrip() if cue else f"\n{question}"
        text = f"\n\n{question}{self.closing}"
        if self.style == "chat-cue" and cue:
            text += cue.lstrip()
        return text

    def question_ids(self, base: BaseAdapter, question: str, cue: str = "") -> list[int]:
        """Token ids of :meth:`question_text` (special tokens of the template recognised)."""
        return list(
            base.tokenizer(self.question_text(question, cue), add_special_tokens=False)["input_ids"]
        )

    def answers_after_cue(self, cue: str) -> bool:
        """Whether the answer continues a written cue (raw and chat-cue with a cue)."""
        return bool(cue) and self.style in ("raw", "chat-cue")


__all__ = ["PROMPT_STYLES", "PromptFormat", "PromptStyle"]
