"""The console room's model (console/src/room/model.ts) keeps a message once whichever way it comes
first: the room subscribes before it reads the stored history, so a message stored in that moment
arrives both as live events and in the history page, in either order, and a page read again to
close the gap repeats what is shown. Run in node on the module as TypeScript compiles it."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from scripts.gen_console_api import REPO_ROOT

MODEL = REPO_ROOT / "console" / "src" / "room" / "model.ts"
TYPESCRIPT = REPO_ROOT / "node_modules" / "typescript" / "lib" / "typescript.js"

# Each scenario (console_room_scenarios.mjs) builds a room from live event frames and stored
# pages in a given order and prints its entries.
SCENARIOS = Path(__file__).with_name("console_room_scenarios.mjs")


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[dict[str, Any]]]:
    node = shutil.which("node")
    if node is None or not TYPESCRIPT.exists():
        pytest.fail("node and node_modules (npm ci) are needed to run the console's model")
    work: Path = tmp_path_factory.mktemp("room-model")
    compile_model = (
        f"const ts = require({json.dumps(str(TYPESCRIPT))});"
        f"const source = require('fs').readFileSync({json.dumps(str(MODEL))}, 'utf8');"
        "const out = ts.transpileModule(source, {compilerOptions: {module: ts.ModuleKind.ESNext,"
        " target: ts.ScriptTarget.ES2022}});"
        f"require('fs').writeFileSync({json.dumps(str(work / 'model.mjs'))}, out.outputText);"
    )
    subprocess.run([node, "-e", compile_model], check=True, timeout=60)
    shutil.copy(SCENARIOS, work / "scenarios.mjs")
    ran = subprocess.run(
        [node, str(work / "scenarios.mjs")], check=True, capture_output=True, text=True, timeout=60
    )
    parsed: dict[str, list[dict[str, Any]]] = json.loads(ran.stdout)
    return parsed


HI = {"id": "U", "turn": None, "text": "Hi", "state": "stored"}
THANKS = {"id": "L", "turn": None, "text": "Thanks", "state": "stored"}


def test_an_answer_seen_live_and_stored_is_shown_once_in_its_stored_place(
    results: dict[str, list[dict[str, Any]]],
) -> None:
    hello = {"id": "M", "turn": "T", "text": "Hello", "state": "completed"}
    assert results["live_then_stored"] == [HI, hello, THANKS]
    assert results["stored_then_live"] == [HI, hello]


def test_an_answer_still_streaming_stays_after_the_stored_messages(
    results: dict[str, list[dict[str, Any]]],
) -> None:
    assert results["streaming_then_stored"] == [
        HI,
        {"id": None, "turn": "T", "text": "Hello", "state": "streaming"},
    ]


def test_a_page_read_again_adds_only_what_the_gap_held(results: dict[str, list[dict[str, Any]]]) -> None:
    hello = {"id": "M", "turn": "T", "text": "Hello", "state": "completed"}
    assert results["page_twice"] == [HI, hello]
    assert results["gap"] == [HI, hello, THANKS]
