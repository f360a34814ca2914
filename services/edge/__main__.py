"""`python -m services.edge`: run the edge (REST, WebSocket, SSE) with uvicorn."""

from __future__ import annotations

import sys

from services.edge.server import run_edge

if __name__ == "__main__":
    sys.exit(run_edge())
