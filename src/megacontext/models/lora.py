"""LoRA on the frozen base's attention projections ("interface alignment, not knowledge").

Co-learning (issue 6 §6) may let the base adapt slightly to reading gists through low-rank
adapters on its attention projections, via peft. The base's own weights never change (D1): the
adapter is a separate, optional part of a bundle, and detaching it leaves the base bit-identical.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from megacontext.errors import InvalidInputError
from megacontext.models.adapter import BaseAdapter

LORA_VERSION = "lora-1"


@dataclass(frozen=True)
class LoraSettings:
    """Rank, scale and target modules (default: the family's ``lora_targets``)."""

    r: int = 4
    alpha: int = 8
    targets: tuple[str, ...] = ()
    dropout: float = 0.0

    def __post_init__(self) -> None:
        if self.r < 1 or self.alpha < 1:
            raise InvalidInputError(
                f"LoRA r and alpha must be >= 1, got r={self.r}, alpha={self.alpha}"
            )

    @classmethod
    def from_mapping(cls, data: dict[str, Any]) -> LoraSettings:
        """Settings from a run config's mapping (YAML gives ``targets`` as a list)."""
        unknown = sorted(set(data) - {"r", "alpha", "targets", "dropout"})
        if unknown:
            raise InvalidInputError(
                f"unknown LoRA setting(s) {', '.join(unknown)}; known: r, alpha, targets, dropout"
            )
        return cls(**{**data, "targets": tuple(data.get("targets", ()))})

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class LoraAdapter(nn.Module):
    """A LoRA adapter attached to a base; ``state_dict`` holds only the LoRA weights.

    Use :meth:`disabled` for the teacher (the plain base) and :meth:`detach` to remove it.
    """

    def __init__(self, base: BaseAdapter, settings: LoraSettings | None = None):
        super().__init__()
        from peft import LoraConfig, inject_adapter_in_model

        # The base's fingerprint (D13) names the plain base: compute and cache it before the
        # adapter renames and extends the model's parameters.
        _ = base.fingerprints
        self.config = settings or LoraSettings()
        targets = list(self.config.targets or base.quirks.lora_targets)
        peft_config = LoraConfig(
            r=self.config.r,
            lora_alpha=self.config.alpha,
            lora_dropout=self.config.dropout,
            target_modules=targets,
            fan_in_fan_out=base.quirks.family == "gpt2",
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            inject_adapter_in_model(peft_config, base.model)
        from peft.tuners.tuners_utils import BaseTunerLayer

        self._base = base
        self._modules_with_lora = [m for m in base.model.modules() if isinstance(m, BaseTunerLayer)]
        if not self._modules_with_lora:
            raise InvalidInputError(f"no module of the base matches LoRA targets {targets}")
        for name, param in base.model.named_parameters():
            param.requires_grad_("lora_" in name)
        self.attached = True

    def lora_parameters(self) -> list[nn.Parameter]:
        return [p for n, p in self._base.model.named_parameters() if "lora_" in n]

    def state_dict(self, *args: Any, **kwargs: Any) -> dict[str, torch.Tensor]:  # type: ignore[override]
        return {
            n: p.detach().clone() for n, p in self._base.model.named_parameters() if "lora_" in n
        }

    def load_state_dict(
        self, state: dict[str, torch.Tensor], strict: bool = True, assign: bool = False
    ) -> Any:  # type: ignore[override]
        params = dict(self._base.model.named_parameters())
        missing = [k for k in params if "lora_" in k and k not in state]
        unexpected = [k for k in state if k not in params]
        if strict and (missing or unexpected):
            raise InvalidInputError(
                f"LoRA weights do not fit this base (missing {missing[:3]}, unexpected "
                f"{unexpected[:3]}); were they trained for another base?"
            )
        with torch.no_grad():
            for key, value in state.items():
                params[key].copy_(value)
        return None

    @contextlib.contextmanager
    def disabled(self) -> Iterator[None]:
        """Run the plain base (the teacher) while the adapter stays attached."""
        for module in self._modules_with_lora:
            module.enable_adapters(False)
        try:
            yield
        finally:
            for module in self._modules_with_lora:
                module.enable_adapters(True)

    def detach(self) -> None:
        """Remove the adapter: the base returns to its exact original modules and weights."""
        if not self.attached:
            return
        from peft.tuners.tuners_utils import BaseTunerLayer

        for module in list(self._base.model.modules()):
            for child_name, child in list(module.named_children()):
                if isinstance(child, BaseTunerLayer):
                    setattr(module, child_name, child.get_base_layer())
        if hasattr(self._base.model, "peft_config"):
            del self._base.model.peft_config
        self._base.model.requires_grad_(False)
        self.attached = False
