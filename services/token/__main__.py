"""`python -m services.token`: run the token service.

Its own settings are checked before anything is started, so a missing or malformed
MACP_TOKEN_KEY_ENCRYPTION_KEY stops it with one line instead of after the dependencies answer.
"""

from __future__ import annotations

import sys

from services.runtime.server import run_service
from services.runtime.settings import Env, SettingsError
from services.token.service import DEFINITION
from services.token.settings import TokenSettings


def run() -> int:
    try:
        TokenSettings.from_env(Env())
    except SettingsError as exc:
        print(f"{DEFINITION.spec.name}: {exc}", file=sys.stderr)
        return 2
    return run_service(DEFINITION)


sys.exit(run())
