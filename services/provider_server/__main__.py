"""`python -m services.provider_server`: run the local provider server with uvicorn."""

from __future__ import annotations

import sys

from services.provider_server.server import run_provider_server

if __name__ == "__main__":
    sys.exit(run_provider_server())
