"""`python -m services.orchestrator`: run the orchestrator service."""

from __future__ import annotations

from services.orchestrator.service import DEFINITION
from services.runtime.server import main

main(DEFINITION)
