"""`python -m services.tool_gateway`: run the tool gateway."""

from __future__ import annotations

from services.runtime.server import main
from services.tool_gateway.service import DEFINITION

main(DEFINITION)
