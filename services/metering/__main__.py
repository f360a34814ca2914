"""`python -m services.metering`: run the metering service."""

from __future__ import annotations

from services.metering.service import DEFINITION
from services.runtime.server import main

main(DEFINITION)
