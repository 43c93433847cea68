"""Explorers: see inside a tree — overview, drill-down to raw text, focus playback, search and
annotations (:mod:`megacontext.explorer.browse`). The web and terminal explorers that draw it
are still to come (issue 20)."""

from megacontext.explorer.browse import TreeBrowser, browse

__all__ = ["TreeBrowser", "browse"]
