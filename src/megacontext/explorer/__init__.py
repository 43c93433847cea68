"""Explorers: see inside a tree — overview, drill-down to raw text, focus playback, search and
annotations. :mod:`megacontext.explorer.browse` answers them as JSON-ready data; the web
explorer (``web/``, served by :mod:`megacontext.server.explore`) and the terminal explorer
(:mod:`megacontext.explorer.tui`) draw them."""

from megacontext.explorer.browse import TreeBrowser, browse

__all__ = ["TreeBrowser", "browse"]
