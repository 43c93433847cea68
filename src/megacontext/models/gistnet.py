"""GistNet: K vectors in, one gist (for the base to read) and one key (for LensNet to match) out.

Reads top to bottom like nanoGPT's ``model.py``: a config dataclass, a bidirectional transformer
block, the network. Design (DESIGN §6, D4, D5, D7):

* input: K vectors — at level 1 the base model's token embeddings (``inputs: embeddings``) or
  its hidden states of the block read alone (``inputs: hidden``: the base as encoder, as in
  ICAE and CompLLM; the final ones, or those after layer ``input_layer`` for a fraction of a
  forward per block at ingest), child gists above — plus a learned intra-block position
  embedding and a level embedding (one network for every level);
* a few **bidirectional** pre-norm transformer layers at width ``width`` (projections in and out
  when it differs from the base width ``d_model``);
* pooling ``mean`` | ``query`` (a learned query attends over the K outputs) | ``cls`` (a learned
  token prepended to the block);
* the **gist head**, an MLP into the base's embedding space whose output norm is set to the base's
  typical embedding norm (``target_norm``), so a gist looks like an input the base knows. With
  ``gist_head: anchored`` the gist is a learned **placeholder** plus a **content** term: the head's
  output minus its mean over the batch (a running mean at inference), scaled to a fixed share
  ``content_ratio`` of the placeholder's norm. A plain head can satisfy the distillation loss with
  one placeholder for every span (issue 16 measured a shared component of norm 218 against 0.6 of
  per-span deviation: after the output normalisation spans differed by 0.15%); the anchored head
  cannot make spans alike, so the loss has to make their differences useful;
* the **key head**, a small unit vector matched against queries by LensNet;
* ``gists_per_block`` G > 1 (query pooling: G learned queries) writes G gists per block, each
  slot with its own anchored placeholder; the tree stores the G vectors as one node and the
  working context gives the node G positions (``gists_per_node``). At level ≥ 2 a child of G
  vectors is read as their mean.

GistNet only ever sees complete nodes: there is no padding and so no attention mask.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import asdict, dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from megacontext.errors import InvalidInputError

Pooling = Literal["mean", "query", "cls"]
GistHead = Literal["direct", "anchored"]
Level1Inputs = Literal["embeddings", "hidden"]
GISTNET_VERSION = "gistnet-1"


@dataclass(frozen=True)
class GistNetConfig:
    """Shape of a GistNet. ``d_model`` is the base model's embedding width."""

    d_model: int
    K: int = 32
    width: int = 256
    n_layers: int = 2
    n_heads: int = 4
    mlp_ratio: int = 4
    max_level: int = 8
    pooling: Pooling = "mean"
    key_dim: int = 64
    target_norm: float = 1.0
    gist_head: GistHead = "direct"
    content_ratio: float = 1.0
    content_momentum: float = 0.01
    inputs: Level1Inputs = "embeddings"
    # With inputs "hidden": 0 reads the final hidden states (after the base's final norm); L ≥ 1
    # the residual stream after decoder layer L (scaled to unit RMS per position), for about
    # L/n of a forward at ingest.
    input_layer: int = 0
    # Gists written per block (a compression of K / gists_per_block tokens per vector), from as
    # many learned queries (pooling "query"); the tree stores them as one node of that many
    # vectors, each taking a position of the working context.
    gists_per_block: int = 1

    def __post_init__(self) -> None:
        if self.width % self.n_heads:
            raise InvalidInputError(
                f"GistNet width {self.width} must be divisible by n_heads {self.n_heads}"
            )
        if self.pooling not in ("mean", "query", "cls"):
            raise InvalidInputError(f"pooling must be mean, query or cls, got {self.pooling!r}")
        for name in ("d_model", "K", "width", "n_layers", "n_heads", "max_level", "key_dim"):
            if getattr(self, name) < 1:
                raise InvalidInputError(f"GistNet {name} must be >= 1, got {getattr(self, name)}")
        if self.target_norm <= 0:
            raise InvalidInputError(f"target_norm must be > 0, got {self.target_norm}")
        if self.gist_head not in ("direct", "anchored"):
            raise InvalidInputError(f"gist_head must be direct or anchored, got {self.gist_head!r}")
        if self.inputs not in ("embeddings", "hidden"):
            raise InvalidInputError(f"inputs must be embeddings or hidden, got {self.inputs!r}")
        if self.gists_per_block < 1:
            raise InvalidInputError(f"gists_per_block must be >= 1, got {self.gists_per_block}")
        if self.gists_per_block > 1 and self.pooling != "query":
            raise InvalidInputError(
                "gists_per_block > 1 needs pooling: query (one learned query per gist)"
            )
        if self.input_layer < 0:
            raise InvalidInputError(f"input_layer must be >= 0, got {self.input_layer}")
        if self.content_ratio <= 0 or not 0 < self.content_momentum <= 1:
            raise InvalidInputError(
                "content_ratio must be > 0 and content_momentum in (0, 1], got "
                f"{self.content_ratio} and {self.content_momentum}"
            )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Block(nn.Module):
    """Pre-norm transformer block with full (bidirectional) self-attention."""

    def __init__(self, width: int, n_heads: int, mlp_ratio: int):
        super().__init__()
        self.n_heads = n_heads
        self.ln1 = nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.ln2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(
            nn.Linear(width, mlp_ratio * width), nn.GELU(), nn.Linear(mlp_ratio * width, width)
        )

    def forward(self, x: torch.Tensor, key_padding: torch.Tensor | None = None) -> torch.Tensor:
        """``key_padding``: ``(n, t)`` True where a position is padding (never attended to)."""
        n, t, c = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(c, dim=-1)
        q, k, v = (z.view(n, t, self.n_heads, c // self.n_heads).transpose(1, 2) for z in (q, k, v))
        mask = None if key_padding is None else ~key_padding[:, None, None, :]
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # no causal mask
        x = x + self.proj(y.transpose(1, 2).reshape(n, t, c))
        return x + self.mlp(self.ln2(x))


class GistNet(nn.Module):
    """Summarises K vectors into a gist (``d_model``) and a unit key (``key_dim``)."""

    def __init__(self, config: GistNetConfig):
        super().__init__()
        self.config = config
        c = config
        self.in_proj: nn.Module = (
            nn.Identity() if c.width == c.d_model else nn.Linear(c.d_model, c.width)
        )
        self.position = nn.Parameter(torch.zeros(c.K, c.width))
        self.level = nn.Embedding(c.max_level + 1, c.width)
        self.cls = nn.Parameter(torch.zeros(1, 1, c.width)) if c.pooling == "cls" else None
        self.query = (
            nn.Parameter(torch.zeros(1, c.gists_per_block, c.width))
            if c.pooling == "query"
            else None
        )
        self.blocks = nn.ModuleList(
            Block(c.width, c.n_heads, c.mlp_ratio) for _ in range(c.n_layers)
        )
        self.ln_f = nn.LayerNorm(c.width)
        self.gist_head = nn.Sequential(
            nn.Linear(c.width, c.width), nn.GELU(), nn.Linear(c.width, c.d_model)
        )
        self.key_head = nn.Linear(c.width, c.key_dim)
        if c.gist_head == "anchored":
            # One placeholder per gist of a block: (d_model,) or (gists_per_block, d_model).
            slots = () if c.gists_per_block == 1 else (c.gists_per_block,)
            self.placeholder = nn.Parameter(torch.zeros(*slots, c.d_model))
            # The head's mean output, per level: what "no content" looks like at inference.
            self.register_buffer("content_mean", torch.zeros(c.max_level + 1, *slots, c.d_model))
            self.register_buffer("content_updates", torch.zeros(c.max_level + 1))
        self._init_weights()

    def _init_weights(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Embedding):
                nn.init.normal_(module.weight, std=0.02)
        nn.init.normal_(self.position, std=0.02)
        for extra in (self.cls, self.query):
            if extra is not None:
                nn.init.normal_(extra, std=0.02)
        if self.config.gist_head == "anchored":
            nn.init.normal_(self.placeholder, std=0.02)

    def forward(
        self, inputs: torch.Tensor, level: int | torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``inputs``: ``(n, K, d_model)``; ``level``: int or ``(n,)``. Returns (gists, keys):
        gists ``(n, d_model)``, or ``(n, gists_per_block, d_model)`` when that is above 1."""
        return self.heads(self.pooled(inputs, level), level)

    def heads(
        self, pooled: torch.Tensor, level: int | torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The trunk's pooled features (:meth:`pooled`) to (gists, keys), as :meth:`forward`."""
        gist = self.gist_head(pooled)
        if self.config.gist_head == "anchored":
            gist = self._anchored(gist, level)
        gist = self.config.target_norm * gist / gist.norm(dim=-1, keepdim=True).clamp_min(1e-6)
        return gist, self.keys_of(pooled)

    def keys_of(self, pooled: torch.Tensor) -> torch.Tensor:
        """Unit keys of pooled features: after training the key head alone, the keys of stored
        nodes follow from their pooled features without reading the nodes again."""
        return F.normalize(self.key_head(self.key_input(pooled)), dim=-1)

    @staticmethod
    def key_input(pooled: torch.Tensor) -> torch.Tensor:
        """What the key head reads of pooled features: ``(n, width)``, the mean of a node's
        slots when it has several gists (one key per node)."""
        return pooled if pooled.ndim == 2 else pooled.mean(1)

    def _anchored(self, raw: torch.Tensor, level: int | torch.Tensor) -> torch.Tensor:
        """Placeholder + content of a fixed relative norm; the content is ``raw`` centred on the
        batch's mean (training, two or more gists of one level) or the running mean. With
        several gists per block, each slot has its own placeholder and mean."""
        c = self.config
        levels = torch.as_tensor(level, device=raw.device).expand(raw.shape[0])
        single = bool((levels == levels[0]).all())
        if self.training and single and raw.shape[0] > 1:
            mean = raw.mean(dim=0)
            with torch.no_grad():  # an average of every batch so far, then a moving one
                lvl = int(levels[0])
                self.content_updates[lvl] += 1
                weight = max(c.content_momentum, 1.0 / float(self.content_updates[lvl]))
                self.content_mean[lvl].lerp_(mean.detach().to(self.content_mean.dtype), weight)
            centred = raw - mean
        else:
            centred = raw - self.content_mean[levels].to(raw.dtype)
        content = F.normalize(centred, dim=-1)
        return F.normalize(self.placeholder, dim=-1) + c.content_ratio * content

    def pooled(self, inputs: torch.Tensor, level: int | torch.Tensor) -> torch.Tensor:
        """The trunk: ``(n, K, d_model)`` inputs to ``(n, width)`` pooled features (``(n,
        gists_per_block, width)`` when that is above 1)."""
        c = self.config
        if inputs.ndim != 3 or inputs.shape[1:] != (c.K, c.d_model):
            raise InvalidInputError(
                f"GistNet expects inputs of shape (n, {c.K}, {c.d_model}), "
                f"got {tuple(inputs.shape)}"
            )
        n = inputs.shape[0]
        levels = torch.as_tensor(level, device=inputs.device).expand(n)
        if int(levels.min()) < 1 or int(levels.max()) > c.max_level:
            raise InvalidInputError(f"GistNet levels must be in [1, {c.max_level}]")
        h = self.in_proj(inputs) + self.position + self.level(levels)[:, None, :]
        if self.cls is not None:
            h = torch.cat([self.cls.expand(n, 1, -1), h], dim=1)
        for block in self.blocks:
            h = block(h)
        return self._pool(self.ln_f(h))

    def _pool(self, h: torch.Tensor) -> torch.Tensor:
        if self.cls is not None:
            return h[:, 0]
        if self.query is not None:
            q = self.query.expand(h.shape[0], -1, -1)
            weights = torch.softmax(q @ h.transpose(1, 2) / math.sqrt(h.shape[-1]), dim=-1)
            pooled = weights @ h  # (n, gists_per_block, width)
            return pooled[:, 0] if pooled.shape[1] == 1 else pooled
        return h.mean(dim=1)

    def weights_version(self) -> str:
        """A short hash of the weights that shape the gists (not the key head, which gists do
        not depend on): focus labels made with these gists carry it."""
        digest = hashlib.sha256()
        for name, tensor in sorted(self.state_dict().items()):
            if name.startswith("key_head."):
                continue
            digest.update(name.encode())
            digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
        return digest.hexdigest()[:16]

    def key_version(self) -> str:
        """A short hash of everything that shapes the keys (trunk and key head)."""
        digest = hashlib.sha256(self.weights_version().encode())
        for name, tensor in sorted(self.key_head.state_dict().items()):
            digest.update(name.encode())
            digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
        return digest.hexdigest()[:16]

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())
