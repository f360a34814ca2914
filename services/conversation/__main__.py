"""`python -m services.conversation`: run the conversation service."""

from __future__ import annotations

from services.conversation.service import DEFINITION
from services.runtime.server import main

main(DEFINITION)
