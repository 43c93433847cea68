"""The pure core engine (numpy only, never torch): span arithmetic, the tree index, the working
context, position policies and the focus allocator. Every structural invariant lives here."""

from megacontext.core.allocator import (
    AllocatorConfig,
    AllocatorState,
    FocusAllocator,
    FocusStats,
    sibling_groups,
)
from megacontext.core.gisters import HashGister, MeanPoolGister
from megacontext.core.positions import (
    POLICIES,
    PositionPolicy,
    Positions,
    entry_positions,
    wc_positions,
)
from megacontext.core.spans import (
    DEFAULT_K,
    Node,
    coarsest_size,
    coarsest_tiling,
    entry_costs,
    levels_needed,
    node_end,
    node_start,
    span_tokens,
)
from megacontext.core.tree import (
    AppendResult,
    GistBatch,
    Gister,
    MegaContextTree,
    MemoryBackend,
    TreeBackend,
    as_token_ids,
)
from megacontext.core.working_context import (
    DEFAULT_W_MAX,
    ApplyResult,
    Edit,
    EditKind,
    EditPlan,
    WorkingContext,
    default_protected_recent,
    entries_of_runs,
    layout_runs,
)

__all__ = [
    "DEFAULT_K",
    "DEFAULT_W_MAX",
    "POLICIES",
    "AllocatorConfig",
    "AllocatorState",
    "AppendResult",
    "ApplyResult",
    "Edit",
    "EditKind",
    "EditPlan",
    "FocusAllocator",
    "FocusStats",
    "GistBatch",
    "Gister",
    "HashGister",
    "MeanPoolGister",
    "MegaContextTree",
    "MemoryBackend",
    "Node",
    "PositionPolicy",
    "Positions",
    "TreeBackend",
    "WorkingContext",
    "as_token_ids",
    "coarsest_size",
    "coarsest_tiling",
    "default_protected_recent",
    "entries_of_runs",
    "entry_costs",
    "entry_positions",
    "layout_runs",
    "levels_needed",
    "node_end",
    "node_start",
    "sibling_groups",
    "span_tokens",
    "wc_positions",
]
