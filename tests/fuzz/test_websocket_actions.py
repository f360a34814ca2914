"""Every hostile WebSocket frame of the catalog, for every action of docs/websocket.md: an error
frame or the action's reply and the connection still answering, or one of the documented closes;
never 1011, silence or an INTERNAL error, and the other tenant's next request unharmed."""

from __future__ import annotations

import pytest

from tests.fuzz.campaign import Report
from tests.fuzz.catalog import WS_CASES, params
from tests.fuzz.ws_attack import problems
from tests.fuzz.ws_cases import WsCase

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]


@pytest.mark.parametrize("case", params(WS_CASES))
def test_a_hostile_frame_is_refused_without_harm(case: WsCase, campaign: Report) -> None:
    outcome = campaign.websocket[case.id]
    found = problems(case, outcome)
    if found:
        evidence = [
            f"frame: {case.describe()}",
            f"the whole frame: python -m tests.fuzz {case.id!r}",
            *(f"log: {record}" for record in outcome.logs),
        ]
        pytest.fail("\n".join([*found, *evidence]))
