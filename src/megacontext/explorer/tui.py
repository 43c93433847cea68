"""The terminal explorer: a keyboard-driven Textual app over a :class:`TreeBrowser`, usable
over SSH (no mouse needed). It shows what the web explorer shows:

* **Overview** (top line): tokens, K, the levels with their node counts, the base model, the
  number of sources and annotations.
* **Tree** (left): the top level's nodes a page at a time (a "more…" node loads the next page),
  then the tail the top level does not cover yet. Opening a node loads its K children, down to
  level 0, the tokens as text pieces. Each line: level, index, token range and the start of
  the node's text.
* **Detail** (right): the highlighted node's text, level, token range, gist norm, sources
  (with lines) and annotations; while a trace step is shown and the node is an entry of the
  context that step scored, its LensNet score and the lexical and key-similarity evidence.
* **Timeline** (bottom): the working context of one step of a focus trace, one cell per entry
  (or per group of entries when they outnumber the columns), coloured by level; cells that the
  step's edits touch are shaded. Below it, the step's status: number, expands, collapses,
  utilization.
* **Search** (``/``): the LOD1 blocks matching some words; choosing a hit opens the tree down
  to that block.
* **Annotations**: notes and tags on the highlighted node, stored in the session's metadata
  database with who wrote them. A failed change (read-only explorer, someone else's edit in
  between, a bad tag) is reported on the message line; what was typed is kept as a draft for
  the next try.

Keys (``?`` shows them in the app; :data:`KEYS` holds them):

* ``↑ ↓``: move in the tree (or in a list)
* ``enter`` / ``space``: open or close the node; on “more…”, load the next page
* ``shift+←``: to the parent node
* ``shift+↑`` / ``shift+↓``: previous / next sibling
* ``tab`` / ``shift+tab``: move the focus: tree → detail → timeline
* ``/``: search the text; picking a hit opens the tree at it
* ``t``: pick a focus trace to play back
* ``]`` / ``[``: next / previous step of the trace
* ``→`` / ``←``: next / previous step, when the timeline has the focus
* ``home`` / ``end``: first / last step, when the timeline has the focus
* ``a``: show the context before / after the step's edits
* ``n``: new annotation (note, tags) on the highlighted node
* ``e``: edit the node's annotation (its own, else the first overlapping)
* ``d``: delete that annotation (asks y / n)
* ``?``: these keys
* ``q``: quit
* ``escape``: close a dialog without doing anything

Nothing here touches the session or the tree directly: every datum comes from the
:class:`TreeBrowser` methods, so the explorers show the same thing.
"""

from __future__ import annotations

import getpass
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, ParamSpec, TypeVar

from rich.text import Text
from textual import on
from textual.app import App, ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widget import Widget
from textual.widgets import Footer, Input, Label, OptionList, Static, Tree
from textual.widgets.option_list import Option
from textual.widgets.tree import TreeNode

from megacontext.core import entries_of_runs
from megacontext.errors import MegaContextError
from megacontext.explorer.browse import PAGE, TreeBrowser, browse
from megacontext.store.annotations import AnnotationConflictError

T = TypeVar("T")
P = ParamSpec("P")

# One colour per level of the working context (raw tokens, LOD1, LOD2, ...); deeper levels reuse
# the last colours, which a tree of K >= 4 rarely reaches in a working context.
LEVEL_COLOURS = ("grey70", "green3", "dodger_blue1", "gold1", "magenta", "red3", "cyan")
PREVIEW_CHARS = 60  # of a node's preview in its tree line
CELL = "█"
TOUCHED_CELL = "▓"  # an entry the step's edits remove (before) or create (after)

KEYS: tuple[tuple[str, str], ...] = (
    ("↑ ↓", "move in the tree (or in a list)"),
    ("enter / space", "open or close the node; on “more…”, load the next page"),
    ("shift+←", "to the parent node"),
    ("shift+↑ / shift+↓", "previous / next sibling"),
    ("tab / shift+tab", "move the focus: tree → detail → timeline"),
    ("/", "search the text; picking a hit opens the tree at it"),
    ("t", "pick a focus trace to play back"),
    ("] / [", "next / previous step of the trace"),
    ("→ / ←", "next / previous step, when the timeline has the focus"),
    ("home / end", "first / last step, when the timeline has the focus"),
    ("a", "show the context before / after the step's edits"),
    ("n", "new annotation (note, tags) on the highlighted node"),
    ("e", "edit the node's annotation (its own, else the first overlapping)"),
    ("d", "delete that annotation (asks y / n)"),
    ("?", "these keys"),
    ("q", "quit"),
    ("escape", "close a dialog without doing anything"),
)


def level_name(level: int) -> str:
    return "raw" if level == 0 else f"LOD{level}"


def level_colour(level: int) -> str:
    return LEVEL_COLOURS[min(level, len(LEVEL_COLOURS) - 1)]


def visible(text: str, limit: int | None = None) -> str:
    """``text`` on one line with its line breaks and tabs drawn, so that a token "\\n" shows
    as something (a tree line keeps only its first line)."""
    shown = text.replace("\r", "␍").replace("\n", "⏎").replace("\t", "⇥")
    if limit is not None and len(shown) > limit:
        return shown[: limit - 1] + "…"
    return shown


def merged_provenance(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Provenance rows with the consecutive pieces of one source joined: a source is recorded
    in pieces, and a node spanning many would otherwise list each of them."""
    merged: list[dict[str, Any]] = []
    for row in rows:
        last = merged[-1] if merged else None
        if last and last["source"] == row["source"] and last["stop"] == row["start"]:
            lines = [last["lines"], row["lines"]]
            last["stop"] = row["stop"]
            last["lines"] = [lines[0][0], lines[1][1]] if all(lines) else None
        else:
            merged.append(dict(row))
    return merged


def parse_tags(text: str) -> list[str]:
    return [tag.strip() for tag in text.split(",") if tag.strip()]


@dataclass(frozen=True)
class NodeRef:
    """A node of the tree widget: level ``level``'s node ``index``, tokens ``[start, stop)``."""

    level: int
    index: int
    start: int
    stop: int

    @classmethod
    def of(cls, node: dict[str, Any]) -> NodeRef:
        return cls(node["level"], node["index"], node["start"], node["stop"])


@dataclass(frozen=True)
class MoreNodes:
    """The "more…" line after a page of the top level: the next page starts at ``first``."""

    level: int
    first: int


@dataclass(frozen=True)
class NoteDraft:
    """What was typed in the annotation dialog (the tags as typed, comma-separated)."""

    note: str = ""
    tags: str = ""


@dataclass
class Playback:
    """A focus trace being played back: its steps, the one shown, and which side of its edits."""

    name: str
    K: int
    steps: list[dict[str, Any]]
    index: int = 0
    after: bool = True  # the context the step left (else the one it scored)
    _positions: dict[int, dict[tuple[int, int], int]] = field(default_factory=dict)

    @property
    def step(self) -> dict[str, Any]:
        return self.steps[self.index]

    def runs(self) -> list[list[int]] | None:
        """The runs drawn for this step; ``None`` for a step recorded without a layout."""
        key = "after" if self.after else "layout"
        runs: list[list[int]] | None = self.step.get(key)
        return runs

    def position(self, level: int, index: int) -> int | None:
        """Where ``(level, index)`` sits in the context the step scored (its ``layout``), which
        is what its scores and evidence are listed by."""
        if "layout" not in self.step:
            return None
        if self.index not in self._positions:
            self._positions[self.index] = {
                entry: at for at, entry in enumerate(entries_of_runs(self.step["layout"]))
            }
        return self._positions[self.index].get((level, index))

    def touched(self) -> set[tuple[int, int]]:
        """The entries the step's edits remove from the context (shown before) or create in it
        (shown after)."""
        out: set[tuple[int, int]] = set()
        for kind, level, index in self.step.get("edits", []):
            parent = {(level, index)}
            children = {(level - 1, index * self.K + k) for k in range(self.K)}
            if kind == "expand":
                out |= children if self.after else parent
            else:
                out |= parent if self.after else children
        return out


class Timeline(Widget, can_focus=True):
    """The working context of the shown step: one cell per entry (or per group of entries when
    they outnumber the columns), coloured by level, and a legend with the counts per level."""

    DEFAULT_CSS = """
    Timeline { height: 3; padding: 0 1; }
    Timeline:focus { background: $boost; }
    """
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("right", "app.step(1)", "Next step", show=False),
        Binding("left", "app.step(-1)", "Previous step", show=False),
        Binding("home", "app.first_step", "First step", show=False),
        Binding("end", "app.last_step", "Last step", show=False),
    ]

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.entries: list[tuple[int, int]] = []
        self.touched: set[tuple[int, int]] = set()
        self.note = "no trace shown: press t to pick one"

    def show(
        self, entries: list[tuple[int, int]], touched: set[tuple[int, int]], note: str = ""
    ) -> None:
        self.entries, self.touched, self.note = entries, touched, note
        self.refresh()

    def cells(self, width: int) -> list[tuple[int, bool]]:
        """(level, touched) per cell for ``width`` columns: a cell that stands for several
        entries takes the highest level among them (gists are what a glance looks for)."""
        n = len(self.entries)
        if n == 0 or width <= 0:
            return []
        groups = min(n, width)
        out = []
        for cell in range(groups):
            group = self.entries[cell * n // groups : (cell + 1) * n // groups]
            out.append((max(level for level, _ in group), any(e in self.touched for e in group)))
        return out

    def legend(self) -> Text:
        counts: dict[int, int] = {}
        for level, _ in self.entries:
            counts[level] = counts.get(level, 0) + 1
        text = Text()
        for level in sorted(counts):
            text.append(f"{CELL} ", style=level_colour(level))
            text.append(f"{level_name(level)} {counts[level]}  ")
        if self.touched:
            text.append(f"{TOUCHED_CELL} changed by the step's edits  ")
        text.append(f"({len(self.entries)} entries)", style="dim")
        return text

    def render(self) -> Text:
        if not self.entries:
            return Text(self.note, style="dim")
        strip = Text(no_wrap=True, overflow="crop")
        for level, touched in self.cells(self.size.width):
            strip.append(TOUCHED_CELL if touched else CELL, style=level_colour(level))
        return Text("\n").join([strip, self.legend()])


class NoteScreen(ModalScreen[NoteDraft | None]):
    """Asks for a note and its tags; enter saves, escape cancels."""

    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "cancel", "Cancel")]

    def __init__(self, title: Text, draft: NoteDraft) -> None:
        super().__init__()
        self.title_text, self.draft = title, draft

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Label(self.title_text)
            yield Input(value=self.draft.note, placeholder="note", id="note")
            yield Input(value=self.draft.tags, placeholder="tags, comma-separated", id="tags")
            yield Label(Text("enter: save · tab: next field · escape: cancel", style="dim"))

    @on(Input.Submitted)
    def save(self) -> None:
        note, tags = self.query_one("#note", Input).value, self.query_one("#tags", Input).value
        self.dismiss(NoteDraft(note, tags))

    def action_cancel(self) -> None:
        self.dismiss(None)


class SearchScreen(ModalScreen[dict[str, Any] | None]):
    """A query, its hits (LOD1 blocks, best first); choosing one returns it."""

    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "cancel", "Cancel")]

    def __init__(self, search: Callable[[str], dict[str, Any]]) -> None:
        super().__init__()
        self.search = search
        self.hits: list[dict[str, Any]] = []

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Label(Text("Search the history (enter runs it; escape closes)"))
            yield Input(placeholder="words to look for", id="query")
            yield Static(id="search-message")
            yield OptionList(id="hits")

    @on(Input.Submitted)
    def run_search(self, event: Input.Submitted) -> None:
        message = self.query_one("#search-message", Static)
        hits = self.query_one("#hits", OptionList)
        try:
            self.hits = self.search(event.value)["items"]
        except MegaContextError as error:
            message.update(Text(str(error), style="bold red"))
            return
        hits.clear_options()
        hits.add_options(
            Option(
                Text.assemble(
                    (f"{level_name(1)} #{hit['index']} ", level_colour(1)),
                    (f"[{hit['start']}, {hit['stop']}) score {hit['score']:g}  ", "dim"),
                    visible(hit["preview"], PREVIEW_CHARS),
                )
            )
            for hit in self.hits
        )
        count = len(self.hits)
        message.update(
            Text(f"{count} hit{'s' * (count != 1)}: ↑ ↓ and enter open one" if count else "no hit")
        )
        if count:
            hits.highlighted = 0
            hits.focus()

    @on(OptionList.OptionSelected)
    def choose(self, event: OptionList.OptionSelected) -> None:
        self.dismiss(self.hits[event.option_index])

    def action_cancel(self) -> None:
        self.dismiss(None)


class TraceScreen(ModalScreen[str | None]):
    """The session's focus traces; choosing one returns its name."""

    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "cancel", "Cancel")]

    def __init__(self, traces: list[dict[str, Any]]) -> None:
        super().__init__()
        self.traces = traces

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Label(Text("Pick a focus trace (enter plays it back; escape closes)"))
            yield OptionList(
                *(
                    Option(Text(f"{t['name']}  ·  {t['steps']} steps  ·  {t['bytes']:,} bytes"))
                    for t in self.traces
                ),
                id="traces",
            )

    def on_mount(self) -> None:
        self.query_one("#traces", OptionList).highlighted = 0

    @on(OptionList.OptionSelected)
    def choose(self, event: OptionList.OptionSelected) -> None:
        self.dismiss(self.traces[event.option_index]["name"])

    def action_cancel(self) -> None:
        self.dismiss(None)


class ConfirmScreen(ModalScreen[bool]):
    """A yes/no question: ``y`` answers yes, ``n`` or escape no."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("y", "answer(True)", "Yes"),
        Binding("n,escape", "answer(False)", "No"),
    ]

    def __init__(self, question: Text) -> None:
        super().__init__()
        self.question = question

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Label(self.question)
            yield Label(Text("y: yes · n or escape: no", style="dim"))

    def action_answer(self, yes: bool) -> None:
        self.dismiss(yes)


class HelpScreen(ModalScreen[None]):
    """The key bindings."""

    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape,q,question_mark", "close", "Close")]

    def compose(self) -> ComposeResult:
        table = Text()
        width = max(len(keys) for keys, _ in KEYS) + 2
        for keys, what in KEYS:
            table.append(keys.ljust(width), style="bold")
            table.append(what + "\n")
        with Vertical(classes="dialog"):
            yield Label(Text("Keys of the terminal explorer", style="bold"))
            yield Static(table, id="keys")
            yield Label(Text("escape, q or ?: close", style="dim"))

    def action_close(self) -> None:
        self.dismiss(None)


TreeData = NodeRef | MoreNodes


class ExplorerApp(App[None]):
    """Browse one tree (see the module docstring); ``actor`` signs the annotations written."""

    TITLE = "MegaContext explorer"
    CSS = """
    #overview { height: auto; max-height: 3; padding: 0 1; background: $boost; }
    #main { height: 1fr; }
    #tree { width: 1fr; min-width: 30; }
    #detail-pane { width: 1fr; padding: 0 1; border-left: solid $primary; }
    #status { height: 1; padding: 0 1; background: $boost; }
    #message { height: auto; max-height: 2; padding: 0 1; }
    #message.error { color: $error; }
    .dialog {
        width: 80%; height: auto; max-height: 90%; margin: 2 4; padding: 1 2;
        background: $panel; border: round $primary;
    }
    #hits, #traces { height: auto; max-height: 16; }
    """
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("/", "search", "Search"),
        Binding("t", "pick_trace", "Trace"),
        Binding("[", "step(-1)", "Step back"),
        Binding("]", "step(1)", "Step"),
        Binding("a", "toggle_side", "Before/after"),
        Binding("n", "new_note", "Note"),
        Binding("e", "edit_note", "Edit note"),
        Binding("d", "delete_note", "Delete note"),
        Binding("?", "help", "Keys"),
        Binding("q", "quit", "Quit"),
    ]

    def __init__(self, browser: TreeBrowser, actor: str, *, page_size: int = PAGE) -> None:
        super().__init__()
        self.browser, self.actor, self.page_size = browser, actor, page_size
        self.current: NodeRef | None = None  # the highlighted node
        self.shown_span: dict[str, Any] | None = None  # its detail as last read
        self.playback: Playback | None = None
        self.drafts: dict[tuple[Any, ...], NoteDraft] = {}  # what a failed change had typed
        self.loaded: set[int] = set()  # tree nodes whose children were loaded
        self.view: dict[str, Any] = {}  # the overview: levels, K, node counts

    # -- layout ---------------------------------------------------------------------------

    def compose(self) -> ComposeResult:
        yield Static(id="overview")
        with Horizontal(id="main"):
            yield Tree[TreeData]("tree", id="tree")
            with VerticalScroll(id="detail-pane"):
                yield Static(id="detail")
        yield Timeline(id="timeline")
        yield Static(id="status")
        yield Static(id="message")
        yield Footer()

    def on_mount(self) -> None:
        tree = self.tree_widget
        tree.show_root = False
        tree.root.expand()
        self.refresh_overview()
        self.load_top_page(0)
        self.show_status()
        tree.focus()
        if tree.root.children:
            first = tree.root.children[0]
            # The tree places its nodes on lines at its next refresh.
            self.call_after_refresh(tree.move_cursor, first)
            self.show_node(first.data)

    @property
    def tree_widget(self) -> Tree[TreeData]:
        tree: Tree[TreeData] = self.query_one("#tree", Tree)
        return tree

    @property
    def timeline(self) -> Timeline:
        return self.query_one("#timeline", Timeline)

    def refresh_overview(self) -> None:
        view = self.guarded(self.browser.overview)
        if view is None:
            return
        self.view = view
        text = Text()
        text.append(f"{view['tokens']:,} tokens", style="bold")
        text.append(f" · K {view['K']} · levels ")
        text.append(
            ", ".join(f"{level_name(lv['level'])} {lv['nodes']:,}" for lv in view["levels"])
        )
        annotations = view["annotations"]
        text.append(
            f" · base {view['base']} · {view['sources']['total']} sources · "
            f"{annotations} annotation{'s' * (annotations != 1)}"
        )
        mode = "read-only" if not self.browser.writable else f"annotating as {self.actor}"
        text.append(f" · {mode}", style="dim")
        if view["path"]:
            text.append(f" · {view['path']}", style="dim")
        self.query_one("#overview", Static).update(text)

    # -- the tree -------------------------------------------------------------------------

    def node_label(self, node: dict[str, Any]) -> Text:
        """A tree line. A Text, never markup: the preview is the user's text, which may hold
        "[...]" that markup would swallow or choke on."""
        level = node["level"]
        head = f"{level_name(level)} #{node['index']}"
        span = f"[{node['start']}, {node['stop']})"
        return Text.assemble(
            (head, f"bold {level_colour(level)}"),
            " ",
            (span, "dim"),
            "  ",
            visible(node["preview"], PREVIEW_CHARS),
        )

    def add_node(self, parent: TreeNode[TreeData], node: dict[str, Any]) -> TreeNode[TreeData]:
        ref = NodeRef.of(node)
        if ref.level == 0:
            return parent.add_leaf(self.node_label(node), data=ref)
        return parent.add(self.node_label(node), data=ref)

    def load_top_page(self, first: int) -> None:
        """The next page of the top level's nodes; after the last one, the tail (the nodes of
        lower levels past the last complete top-level node)."""
        view = self.view
        if not view:  # the overview could not be read (and said why)
            return
        page = self.guarded(self.browser.nodes, self.top_level, first, self.page_size)
        if page is None:
            return
        root = self.tree_widget.root
        for node in page["items"]:
            self.add_node(root, node)
        loaded = first + len(page["items"])
        if loaded < page["total"]:
            more = page["total"] - loaded
            label = Text(f"more… ({more:,} more {level_name(self.top_level)} nodes)", "italic")
            root.add_leaf(label, data=MoreNodes(self.top_level, loaded))
            return
        counts = [lv["nodes"] for lv in view["levels"]]
        for level in range(self.top_level - 1, -1, -1):
            first_tail = counts[level + 1] * view["K"]
            if first_tail < counts[level]:
                tail = self.guarded(self.browser.nodes, level, first_tail)
                for node in tail["items"] if tail else []:
                    self.add_node(root, node)

    @property
    def top_level(self) -> int:
        top: int = self.view["top_level"]
        return top

    def load_children(self, node: TreeNode[TreeData]) -> None:
        if node.id in self.loaded or not isinstance(node.data, NodeRef) or node.data.level == 0:
            return
        ref = node.data
        page = self.guarded(self.browser.children, ref.level, ref.index)
        if page is None:
            return
        self.loaded.add(node.id)
        for child in page["items"]:
            self.add_node(node, child)

    @on(Tree.NodeExpanded)
    def node_opened(self, event: Tree.NodeExpanded[TreeData]) -> None:
        self.load_children(event.node)

    @on(Tree.NodeHighlighted)
    def node_highlighted(self, event: Tree.NodeHighlighted[TreeData]) -> None:
        self.show_node(event.node.data)

    @on(Tree.NodeSelected)
    def node_selected(self, event: Tree.NodeSelected[TreeData]) -> None:
        more = event.node.data
        if not isinstance(more, MoreNodes):
            return
        root, at = self.tree_widget.root, len(self.tree_widget.root.children) - 1
        event.node.remove()
        self.load_top_page(more.first)
        if len(root.children) > at:
            first_new = root.children[at]
            self.call_after_refresh(self.tree_widget.move_cursor, first_new)
            self.show_node(first_new.data)

    def open_path(self, token: int) -> TreeNode[TreeData] | None:
        """Open the tree down to the LOD1 block holding ``token`` (the pages of the top level
        it needs included) and put the cursor on that block."""
        path = self.guarded(self.browser.path_to, token)
        if not path:
            return None
        node = self.tree_widget.root
        for step in path:
            wanted = NodeRef.of(step)
            found = self.find_child(node, wanted)
            if found is None:
                self.report(f"the tree has no node {level_name(wanted.level)} #{wanted.index}")
                return None
            node = found
            if step is not path[-1]:
                self.load_children(node)
                node.expand()
        self.tree_widget.focus()
        # The tree places a newly opened node on a line at its next refresh.
        self.call_after_refresh(self.tree_widget.move_cursor, node)
        self.show_node(node.data)
        return node

    def find_child(self, parent: TreeNode[TreeData], wanted: NodeRef) -> TreeNode[TreeData] | None:
        """The child of ``parent`` for ``wanted``; under the root, loads pages until it shows."""
        while True:
            for child in parent.children:
                if child.data == wanted:
                    return child
            more = parent.children[-1].data if parent.children else None
            if not parent.is_root or not isinstance(more, MoreNodes):
                return None
            parent.children[-1].remove()
            self.load_top_page(more.first)

    # -- the detail pane ------------------------------------------------------------------

    def show_node(self, data: TreeData | None) -> None:
        detail = self.query_one("#detail", Static)
        if isinstance(data, MoreNodes):
            self.current, self.shown_span = None, None
            detail.update(Text("enter loads the next page of nodes", style="dim"))
            return
        if data is None:
            return
        span = self.guarded(self.browser.span, data.level, data.index)
        if span is None:
            return
        self.current, self.shown_span = data, span
        detail.update(self.detail_text(span))

    def detail_text(self, span: dict[str, Any]) -> Text:
        level = span["level"]
        text = Text()
        text.append(f"{level_name(level)} #{span['index']}", style=f"bold {level_colour(level)}")
        text.append(f"  tokens [{span['start']}, {span['stop']})")
        text.append(f" · {span['stop'] - span['start']:,} tokens")
        if "norm" in span:
            text.append(f" · gist norm {span['norm']:g}")
        text.append("\n")
        sources = merged_provenance(span["provenance"])
        for source in sources:
            lines = source["lines"]
            where = f" lines {lines[0]}–{lines[1]}" if lines else ""
            text.append(f"from {source['source']}{where}", style="cyan")
            text.append(f" (tokens [{source['start']}, {source['stop']}))\n", style="dim")
        listed = max((source["stop"] for source in sources), default=span["start"])
        if sources and listed < span["stop"]:  # the browser lists the first pieces only
            text.append(f"… the sources from token {listed} on are not listed\n", style="dim")
        text.append_text(self.annotations_text(span["annotations"]))
        text.append_text(self.focus_text(level, span["index"]))
        text.append("\n")
        text.append(span["text"])
        if span["text_truncated"]:
            text.append("\n… (the text goes on; open the children to read it)", style="dim")
        return text

    def annotations_text(self, annotations: list[dict[str, Any]]) -> Text:
        text = Text()
        if not annotations:
            text.append("no annotations (n adds one)\n", style="dim")
        for a in annotations:
            tags = f" [{', '.join(a['tags'])}]" if a["tags"] else ""
            text.append(f"✎ #{a['id']} v{a['version']}", style="bold yellow")
            text.append(f"{tags} {a['note']}")
            who = a["created_by"]
            if a["updated_by"] != a["created_by"] or a["version"] > 1:
                who += f", edited by {a['updated_by']}"
            text.append(
                f"  — {who} · {level_name(a['level'])} [{a['start']}, {a['stop']})\n",
                style="dim",
            )
        return text

    def focus_text(self, level: int, index: int) -> Text:
        """The node in the shown trace step: its entry, LensNet score and evidence."""
        playback = self.playback
        if playback is None:
            return Text()
        step = playback.step
        where = f"step {playback.index + 1}/{len(playback.steps)}"
        position = playback.position(level, index)
        if "layout" not in step:
            return Text(f"{where}: recorded without its layout (an old trace)\n", style="dim")
        edits = [kind for kind, lv, ix in step.get("edits", []) if (lv, ix) == (level, index)]
        text = Text()
        if position is None:
            after = (level, index) in entries_of_runs(step["after"])
            if not after:
                return Text(f"{where}: not an entry of the working context\n", style="dim")
            text.append(f"{where}: entry of the context after its edits (not scored)", "magenta")
        else:
            text.append(f"{where}: entry {position} of the context it scored", style="magenta")
            for key in ("scores", "lexical", "key_sim"):
                values = step.get(key)
                if values is not None and position < len(values):
                    name = "score" if key == "scores" else key
                    text.append(f" · {name} {values[position]:.3f}")
        for kind in edits:
            text.append(f" · {'expanded' if kind == 'expand' else 'collapsed'} by this step")
        text.append("\n")
        return text

    # -- playback -------------------------------------------------------------------------

    def action_pick_trace(self) -> None:
        traces = self.guarded(self.browser.traces)
        if traces is None:
            return
        if not traces:
            self.report("this session has no focus trace (a session writes one as it refocuses)")
            return
        self.push_screen(TraceScreen(traces), self.play_trace)

    def play_trace(self, name: str | None) -> None:
        if name is None:
            return
        trace = self.guarded(self.browser.trace, name)
        if trace is None:
            return
        if not trace["steps"]:
            self.report(f"trace {name} has no step")
            return
        self.playback = Playback(name, trace["K"], trace["steps"])
        self.show_step()

    def action_step(self, delta: int) -> None:
        if self.playback is not None:
            self.go_to_step(self.playback.index + delta)
        else:
            self.report("no trace shown: press t to pick one")

    def action_first_step(self) -> None:
        self.go_to_step(0)

    def action_last_step(self) -> None:
        self.go_to_step(len(self.playback.steps) - 1 if self.playback else 0)

    def go_to_step(self, index: int) -> None:
        """Show step ``index``, kept within the trace (stepping past an end stays there)."""
        playback = self.playback
        if playback is None:
            self.report("no trace shown: press t to pick one")
            return
        playback.index = max(0, min(len(playback.steps) - 1, index))
        self.show_step()

    def action_toggle_side(self) -> None:
        if self.playback is None:
            self.report("no trace shown: press t to pick one")
            return
        self.playback.after = not self.playback.after
        self.show_step()

    def show_step(self) -> None:
        playback = self.playback
        if playback is None:
            return
        runs = playback.runs()
        if runs is None:
            self.timeline.show([], set(), "this step was recorded without its layout")
        else:
            self.timeline.show(entries_of_runs(runs), playback.touched())
        self.show_status()
        if self.current is not None:  # its score and evidence belong to the step shown
            self.show_node(self.current)

    def show_status(self) -> None:
        status = self.query_one("#status", Static)
        playback = self.playback
        if playback is None:
            traces = self.guarded(self.browser.traces) or []
            status.update(Text(f"{len(traces)} focus trace(s): t plays one back", style="dim"))
            return
        step = playback.step
        side = "after its edits" if playback.after else "before its edits (as scored)"
        text = Text()
        text.append(f"step {playback.index + 1}/{len(playback.steps)}", style="bold")
        text.append(f" (session step {step['step']}) · {side} · ")
        text.append(f"expands {step['expands']} · collapses {step['collapses']} · ")
        text.append(f"utilization {step['utilization']:.2f} · {step['tokens']:,} tokens · ")
        text.append(playback.name, style="dim")
        status.update(text)

    # -- search ---------------------------------------------------------------------------

    def action_search(self) -> None:
        self.push_screen(SearchScreen(self.browser.search), self.open_hit)

    def open_hit(self, hit: dict[str, Any] | None) -> None:
        if hit is not None and self.open_path(hit["start"]) is not None:
            self.report(f"search hit: LOD1 #{hit['index']} [{hit['start']}, {hit['stop']})")

    # -- annotations ----------------------------------------------------------------------

    def target_annotation(self) -> dict[str, Any] | None:
        """The annotation ``e`` and ``d`` act on, as the detail pane last read it (its version
        is the one an edit must name): the one on exactly this node, else the first."""
        span, ref = self.shown_span, self.current
        if span is None or ref is None or not span["annotations"]:
            self.report("the highlighted node has no annotation (n adds one)")
            return None
        exact = [
            a
            for a in span["annotations"]
            if (a["level"], a["start"], a["stop"]) == (ref.level, ref.start, ref.stop)
        ]
        annotation: dict[str, Any] = (exact or span["annotations"])[0]
        return annotation

    def can_write(self) -> bool:
        if not self.browser.writable:
            self.report(
                "this explorer is read-only: annotating needs `megacontext explore` without "
                "--read-only",
                error=True,
            )
        return self.browser.writable

    def action_new_note(self) -> None:
        ref = self.current
        if ref is None:
            self.report("highlight a node of the tree first")
            return
        if not self.can_write():
            return
        key = ("new", ref.level, ref.start, ref.stop)
        title = Text(f"New annotation on {level_name(ref.level)} #{ref.index}")
        title.append(f" tokens [{ref.start}, {ref.stop})", style="dim")

        def save(draft: NoteDraft | None) -> None:
            if draft is not None:
                self.change_note(
                    key,
                    draft,
                    lambda: self.browser.annotate(
                        ref.level,
                        ref.start,
                        ref.stop,
                        draft.note,
                        parse_tags(draft.tags),
                        self.actor,
                    ),
                    "annotation saved",
                )

        self.push_screen(NoteScreen(title, self.drafts.get(key, NoteDraft())), save)

    def action_edit_note(self) -> None:
        annotation = self.target_annotation()
        if annotation is None or not self.can_write():
            return
        key = ("edit", annotation["id"])
        stored = NoteDraft(annotation["note"], ", ".join(annotation["tags"]))
        title = Text(f"Edit annotation #{annotation['id']} (version {annotation['version']})")

        def save(draft: NoteDraft | None) -> None:
            if draft is not None:
                self.change_note(
                    key,
                    draft,
                    lambda: self.browser.edit_annotation(
                        annotation["id"],
                        annotation["version"],
                        draft.note,
                        parse_tags(draft.tags),
                        self.actor,
                    ),
                    "annotation updated",
                )

        self.push_screen(NoteScreen(title, self.drafts.get(key, stored)), save)

    def action_delete_note(self) -> None:
        annotation = self.target_annotation()
        if annotation is None or not self.can_write():
            return
        question = Text(f"Delete annotation #{annotation['id']} ")
        question.append(visible(annotation["note"], PREVIEW_CHARS), style="italic")
        question.append("?")

        def delete(yes: bool | None) -> None:
            if yes:
                self.change_note(
                    ("delete", annotation["id"]),
                    NoteDraft(),
                    lambda: self.browser.delete_annotation(
                        annotation["id"], annotation["version"], self.actor
                    ),
                    "annotation deleted",
                )

        self.push_screen(ConfirmScreen(question), delete)

    def change_note(
        self, key: tuple[Any, ...], draft: NoteDraft, change: Callable[[], Any], done: str
    ) -> None:
        """Apply an annotation change; on failure say why and keep what was typed, so the next
        ``n`` or ``e`` starts from it. The pane is read again either way: after a conflict it
        shows the version that won, which the next edit then names."""
        try:
            change()
        except AnnotationConflictError as error:
            self.drafts[key] = draft
            self.report(f"{error} — your text is kept: press e to apply it again", error=True)
        except MegaContextError as error:
            self.drafts[key] = draft
            self.report(f"{error} — your text is kept for the next try", error=True)
        else:
            self.drafts.pop(key, None)
            self.report(done)
            self.refresh_overview()
        if self.current is not None:
            self.show_node(self.current)

    # -- help and messages ----------------------------------------------------------------

    def action_help(self) -> None:
        self.push_screen(HelpScreen())

    def report(self, message: str, *, error: bool = False) -> None:
        """Say something on the message line (and as a notification, which fades)."""
        line = self.query_one("#message", Static)
        line.update(Text(message))
        line.set_class(error, "error")
        self.notify(message, severity="error" if error else "information", markup=False)

    def guarded(self, call: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T | None:
        """``call(*args, **kwargs)``, or ``None`` after reporting the error it raised (a bad
        span, a vanished trace...) instead of ending the app."""
        try:
            return call(*args, **kwargs)
        except MegaContextError as error:
            self.report(str(error), error=True)
            return None


def run_terminal(
    path: Path, *, base: Any = None, read_only: bool = False, actor: str | None = None
) -> None:
    """Explore the session directory ``path`` in the terminal until ``q``; annotations are
    signed ``actor`` (the login name by default)."""
    with browse(path, base=base, writable=not read_only) as browser:
        ExplorerApp(browser, actor or login_name()).run()


def login_name() -> str:
    """Who runs the explorer; a uid where the system knows no name (a bare container)."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no $USER and no passwd entry
        return f"uid-{os.getuid()}"


__all__ = ["KEYS", "ExplorerApp", "run_terminal"]
