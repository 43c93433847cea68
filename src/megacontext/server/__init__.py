"""The MegaContext service: HTTP (REST and OpenAI-compatible) over trees, with API keys.

``megacontext serve`` runs it; ``create_app`` builds it for any ASGI server.
"""

from megacontext.server.app import create_app
from megacontext.server.keys import KeyStore

__all__ = ["KeyStore", "create_app"]
