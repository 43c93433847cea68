"""``python -m megacontext.server openapi PATH``: write the OpenAPI document (docs/openapi.json)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from megacontext.server.app import openapi_document

if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] != "openapi":
        sys.exit("usage: python -m megacontext.server openapi PATH")
    Path(sys.argv[2]).write_text(json.dumps(openapi_document(), indent=2) + "\n", encoding="utf-8")
