"""`python -m services.agent_proxy`: run the agent-proxy service."""

from __future__ import annotations

from services.agent_proxy.service import DEFINITION
from services.runtime.server import main

main(DEFINITION)
