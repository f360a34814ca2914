"""`python -m services.token`: run the token service."""

from __future__ import annotations

from services.runtime.server import main
from services.token.service import DEFINITION

main(DEFINITION)
