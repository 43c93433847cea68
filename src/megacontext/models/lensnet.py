"""LensNet: one signed focus score per working-context entry (D7).

Positive scores ask for detail (expand), negative ones give it back (collapse). LensNet is
non-causal over all entries and conditioned on the query (the tail tokens the model is about to
continue from). What it reads per entry:

* the entry's vector (a raw token's embedding, or a gist) projected to ``width``;
* its level, and the numeric features ``log2(span)``, age (how far back it ends, log-scaled),
  ``is_tail``, its lexical (BM25) score against the query and its key·query similarity — the
  retrieval evidence that DESIGN §12 showed gists alone do not expose.

Each input group can be switched off (``use_gists``, ``use_lexical``, ``use_keys``) for ablations:
a switched-off input is zeroed, so the same architecture measures each input's share.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from megacontext.errors import InvalidInputError
from megacontext.models.gistnet import Block

LENSNET_VERSION = "lensnet-1"

# Column order of the numeric feature tensor.
FEATURES = ("log_span", "log_age", "is_tail", "lexical", "key_sim")


@dataclass(frozen=True)
class LensNetConfig:
    """Shape of a LensNet and which inputs it may use."""

    d_model: int
    width: int = 128
    n_layers: int = 2
    n_heads: int = 4
    mlp_ratio: int = 4
    max_level: int = 8
    use_gists: bool = True
    use_lexical: bool = True
    use_keys: bool = True

    def __post_init__(self) -> None:
        if self.width % self.n_heads:
            raise InvalidInputError(
                f"LensNet width {self.width} must be divisible by n_heads {self.n_heads}"
            )
        for name in ("d_model", "width", "n_layers", "n_heads", "max_level"):
            if getattr(self, name) < 1:
                raise InvalidInputError(f"LensNet {name} must be >= 1, got {getattr(self, name)}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class LensNet(nn.Module):
    """Scores entries ``(B, W, d_model)`` given a query ``(B, Q, d_model)``; returns ``(B, W)``."""

    def __init__(self, config: LensNetConfig):
        super().__init__()
        c = config
        self.config = c
        self.entry_proj = nn.Linear(c.d_model, c.width)
        self.query_proj = nn.Linear(c.d_model, c.width)
        self.level = nn.Embedding(c.max_level + 1, c.width)
        self.features = nn.Sequential(
            nn.Linear(len(FEATURES), c.width), nn.GELU(), nn.Linear(c.width, c.width)
        )
        self.kind = nn.Embedding(2, c.width)  # 0 = entry, 1 = query token
        self.blocks = nn.ModuleList(
            Block(c.width, c.n_heads, c.mlp_ratio) for _ in range(c.n_layers)
        )
        self.ln_f = nn.LayerNorm(c.width)
        self.head = nn.Linear(c.width, 1)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    def forward(
        self,
        entries: torch.Tensor,
        levels: torch.Tensor,
        features: torch.Tensor,
        query: torch.Tensor,
        entry_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Scores in ``(-1, 1)`` for each entry.

        Args:
            entries: ``(B, W, d_model)`` entry vectors.
            levels: ``(B, W)`` entry levels (0 = raw token).
            features: ``(B, W, len(FEATURES))`` numeric features in :data:`FEATURES` order.
            query: ``(B, Q, d_model)`` embeddings of the query / tail tokens.
            entry_mask: ``(B, W)`` True for real entries (False = padding), or None.
        """
        c = self.config
        b, w, _ = entries.shape
        if features.shape != (b, w, len(FEATURES)) or levels.shape != (b, w):
            raise InvalidInputError(
                f"LensNet got entries {tuple(entries.shape)}, levels {tuple(levels.shape)}, "
                f"features {tuple(features.shape)}; expected levels (B, W) and features "
                f"(B, W, {len(FEATURES)})"
            )
        features = self._ablate(features)
        vectors = entries if c.use_gists else entries * (levels == 0)[..., None]
        h = (
            self.entry_proj(vectors)
            + self.level(levels.clamp(max=c.max_level))
            + self.features(features)
            + self.kind.weight[0]
        )
        q = self.query_proj(query) + self.kind.weight[1]
        x = torch.cat([h, q], dim=1)
        padding = None
        if entry_mask is not None:
            query_ok = torch.ones(b, q.shape[1], dtype=torch.bool, device=x.device)
            padding = ~torch.cat([entry_mask, query_ok], dim=1)
        for block in self.blocks:
            x = block(x, key_padding=padding)
        scores = torch.tanh(self.head(self.ln_f(x[:, :w])).squeeze(-1))
        return scores if entry_mask is None else scores * entry_mask

    def _ablate(self, features: torch.Tensor) -> torch.Tensor:
        keep = torch.ones(len(FEATURES), device=features.device, dtype=features.dtype)
        if not self.config.use_lexical:
            keep[FEATURES.index("lexical")] = 0
        if not self.config.use_keys:
            keep[FEATURES.index("key_sim")] = 0
        return features * keep


def collapse_scores(scores: torch.Tensor, group_first: torch.Tensor, K: int) -> torch.Tensor:
    """A sibling group's score: the mean of its K members' scores (D7).

    ``scores``: ``(W,)``; ``group_first``: WC positions of each group's first member.
    """
    offsets = torch.arange(K, device=scores.device)
    return scores[group_first[:, None] + offsets].mean(dim=1)
