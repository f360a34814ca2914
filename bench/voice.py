"""`python -m bench.voice`: the time from the end of a spoken message to the first audio of the
agent's spoken answer, beside the same two provider calls made straight with the `openai` SDK.

The stack is bench/orchestrator.py's: every part its own process on 127.0.0.1, as `macp up` runs
it, the seeded tenant on the PRO plan (voice minutes included, then overage: never refused). Rows:

- MACP: a conversation of one agent (the local provider's `echo-1`, its voice the defaults: the
  local provider server's `speech-1` and `transcribe-1`, WAV) per client, one WebSocket connection
  each on Envoy's front listener. A turn is `utterance_start` (wav, speak true), the question as
  a WAV the provider's codec makes (QUESTION, 1.5 s of audio, inside the edge's 2 s burst of the
  real-time rule, so it goes at once) in binary frames, and `utterance_end`; the clock starts
  when `utterance_end` is sent and stops at the first `speech_audio` event frame. Between them:
  the edge hands the utterance to the orchestrator, which transcribes it through the agent proxy,
  logs what it heard, posts it as the user's message, runs the round (the model generates), cuts
  the answer into sentences and speaks the first through the agent proxy, and the first audio
  chunk comes back through the event log, the orchestrator's Converse stream and the edge. The
  next turn starts after `round_completed`.
- Baseline: the two provider calls the agent proxy makes, straight from this process with
  `AsyncOpenAI` at the local provider server's /v1: the transcription of the same WAV (streamed,
  as the agent proxy asks for it), then the speech of the answer's first sentence (WAV); the clock
  runs from the transcription's start to the first audio byte. It leaves out the model's
  generation, which MACP runs between the two, so the chat completion's time to first token
  (the same SDK, streamed) is measured beside it: what that step costs on its own.

Concurrency 1 and 20, the rows taking turns at each; CPU per turn by process (bench/cpu.py).
Closed loop, bounded in count and time. `--spans N` instead runs N turns at one in flight with
tracing on and prints where the time goes, span by span (as bench/turn_path.py does for text).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import statistics
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import openai
import websockets

from bench.cpu import CLIENT, CpuMeter, cpu_per_turn_table
from bench.orchestrator import (
    SHORT_MODEL,
    TIMEOUT_SECONDS,
    Bench,
    Turn,
    new_conversations,
    running_parts,
    timed_loop,
)
from bench.stats import added_latency_row, machine_line, markdown_table, percentile
from bench.turn_path import EXPORT_EVERY_MS, SETTLE_SECONDS, SentTurn, SpanReceiver, path_table
from services.provider_server import audio_codec

# What the user says. Its answer from `echo-1` (the local provider's words, seeded by the prompt)
# starts with a sentence of five words, so speech can start early; later turns carry the
# conversation's history in their prompt, so their first sentences vary (4 to 10 words).
QUESTION = "what should we do now"
VOICE = "alloy"  # the agent proxy's default voice
SPEECH_MODEL = "speech-1"  # the local provider server's default models of each kind
TRANSCRIPTION_MODEL = "transcribe-1"
FRAME_BYTES = 32_768  # the utterance in binary frames of this size (the edge takes up to 64 KiB)
CPU_COLUMNS = (
    CLIENT,
    "envoy",
    "edge",
    "orchestrator",
    "agent-proxy",
    "conversation",
    "metering",
    "provider-server",
    "redis",
)


@dataclass
class VoiceTurn(Turn):
    """A spoken turn: `first_token` is the first audio (seconds from the clock's start), `total`
    the end (the round's, or the baseline's speech stream's); the stamps on the way are seconds
    from the same start, NaN where a row has no such step."""

    heard: float = math.nan  # MACP: `utterance_transcribed` arrived; baseline: the transcript's end
    first_text: float = math.nan  # MACP: the first `token_delta` arrived
    first_sentence_words: int = 0


def utterance() -> bytes:
    """The question as the user says it: a WAV of the provider's own codec (24 kHz mono)."""
    return audio_codec.wav_bytes(audio_codec.synthesize(QUESTION, voice=VOICE))


def first_sentence(text: str) -> str:
    """An answer's first sentence (echo-1's sentences end with a full stop)."""
    end = text.find(".")
    return text if end < 0 else text[: end + 1]


# --- MACP: a spoken message over the WebSocket ----------------------------------------------------


class VoiceClient:
    """One WebSocket connection subscribed to its own conversation, speaking to it."""

    def __init__(self, ws: Any, conversation_id: str, audio: bytes) -> None:
        self._ws = ws
        self._conversation_id = conversation_id
        self._frames = [audio[at : at + FRAME_BYTES] for at in range(0, len(audio), FRAME_BYTES)]
        self.sent: list[SentTurn] = []  # with tracing on: each turn's trace and wall-clock times

    @classmethod
    async def open(cls, bench: Bench, conversation_id: str, audio: bytes) -> VoiceClient:
        ws = await websockets.connect(bench.ws_url, max_size=None, open_timeout=TIMEOUT_SECONDS)
        await ws.send(json.dumps({"action": "subscribe", "conversation_id": conversation_id}))
        return cls(ws, conversation_id, audio)

    async def turn(self) -> Turn:
        message_id = str(uuid.uuid4())
        start = {
            "action": "utterance_start",
            "conversation_id": self._conversation_id,
            "message_id": message_id,
            "format": "wav",
            "speak": True,
        }
        await self._ws.send(json.dumps(start))
        # All at once: 1.5 s of audio is inside the edge's 2 s burst of the real-time rule.
        for frame in self._frames:
            await self._ws.send(frame)
        end = json.dumps({"action": "utterance_end", "conversation_id": self._conversation_id})
        started = time.perf_counter()
        started_ns = time.time_ns()
        await self._ws.send(end)
        async with asyncio.timeout(TIMEOUT_SECONDS):
            return await self._until_round_end(message_id, started, started_ns)

    async def typed_turn(self) -> Turn:
        """The same question typed (a `message` frame with `speak: true`): the round and the spoken
        answer without the hearing, so the two rows together say what the hearing costs and what
        a typed turn's own path (its first token) already takes."""
        message_id = str(uuid.uuid4())
        message = {
            "action": "message",
            "conversation_id": self._conversation_id,
            "message_id": message_id,
            "text": QUESTION,
            "speak": True,
        }
        started = time.perf_counter()
        started_ns = time.time_ns()
        await self._ws.send(json.dumps(message))
        async with asyncio.timeout(TIMEOUT_SECONDS):
            return await self._until_round_end(message_id, started, started_ns)

    async def _until_round_end(self, message_id: str, started: float, started_ns: int) -> VoiceTurn:
        turn = VoiceTurn(first_token=0.0, total=0.0, tokens=0)
        trace_id = b""
        first_audio_ns = 0
        text = ""
        while True:
            event = json.loads(await self._ws.recv())
            if event.get("type") == "error":
                raise RuntimeError(f"the edge refused a frame: {event}")
            if event.get("type") == "ack" and event.get("action") == "utterance_end":
                if "traceparent" in event:
                    trace_id = bytes.fromhex(event["traceparent"].split("-")[1])
                continue
            kind = event.get("kind")
            elapsed = time.perf_counter() - started
            if kind == "speech_audio" and not turn.first_token:
                turn.first_token = elapsed
                first_audio_ns = time.time_ns()
            elif kind == "utterance_transcribed":
                turn.heard = elapsed
            elif kind == "token_delta":
                if math.isnan(turn.first_text):
                    turn.first_text = elapsed
                text += event["event"]["token_delta"]["text"]
            elif kind == "error":
                raise RuntimeError(f"the round failed: {event['event']['error']}")
            elif kind == "round_completed" and event["event"][kind]["trigger_message_id"] == message_id:
                if not turn.first_token:
                    raise RuntimeError(f"the round ended without speech; its answer: {text!r}")
                turn.total = elapsed
                turn.tokens = len(text.split())
                turn.first_sentence_words = len(first_sentence(text).split())
                self.sent.append(SentTurn(trace_id, started_ns, first_audio_ns))
                return turn

    async def close(self) -> None:
        await self._ws.close()


# --- the baseline: the provider's audio API straight, with the openai SDK ----------------------


def provider_client(bench: Bench) -> openai.AsyncOpenAI:
    """The SDK at the local provider server's /v1, as the agent proxy's audio client is made."""
    return openai.AsyncOpenAI(
        base_url=f"{bench.provider_url}/v1", api_key="local", max_retries=0, timeout=TIMEOUT_SECONDS
    )


async def answer_first_sentence(client: openai.AsyncOpenAI) -> str:
    """The first sentence of echo-1's answer to the question alone (what the baseline speaks)."""
    answer = await client.chat.completions.create(
        model=SHORT_MODEL, messages=[{"role": "user", "content": QUESTION}]
    )
    return first_sentence(answer.choices[0].message.content or "")


def sdk_voice_turn(client: openai.AsyncOpenAI, audio: bytes, sentence: str) -> Callable[[], Awaitable[Turn]]:
    """Transcribe the WAV, then speak `sentence`, as the agent proxy calls them (audio_provider.py):
    the transcript streamed to its end, the speech's audio read as it comes."""

    async def turn() -> Turn:
        started = time.perf_counter()
        stream = await client.audio.transcriptions.create(
            file=("speech.wav", audio, "audio/wav"), model=TRANSCRIPTION_MODEL, stream=True
        )
        heard = ""
        async for event in stream:
            if event.type == "transcript.text.done":
                heard = event.text
        if heard != QUESTION:
            raise RuntimeError(f"the provider heard {heard!r}, not {QUESTION!r}")
        result = VoiceTurn(first_token=0.0, total=0.0, tokens=0, heard=time.perf_counter() - started)
        async with client.audio.speech.with_streaming_response.create(
            model=SPEECH_MODEL, voice=VOICE, input=sentence, response_format="wav"
        ) as response:
            async for piece in response.iter_bytes():
                if piece and not result.first_token:
                    result.first_token = time.perf_counter() - started
        result.total = time.perf_counter() - started
        result.first_sentence_words = len(sentence.split())
        return result

    return turn


def sdk_chat_turn(client: openai.AsyncOpenAI) -> Callable[[], Awaitable[Turn]]:
    """The step the baseline leaves out: echo-1's answer to the question, streamed, timed to its
    first content token."""

    async def turn() -> Turn:
        started = time.perf_counter()
        first = 0.0
        words = 0
        stream = await client.chat.completions.create(
            model=SHORT_MODEL, messages=[{"role": "user", "content": QUESTION}], stream=True
        )
        async for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                if not first:
                    first = time.perf_counter() - started
                words += 1
        return Turn(first, time.perf_counter() - started, words)

    return turn


# --- the run -----------------------------------------------------------------------------------------

Workers = Sequence[Callable[[], Awaitable[Turn]]]
Row = tuple[list[VoiceTurn], float, dict[str, float]]


def voice_turns(turns: Sequence[Turn]) -> list[VoiceTurn]:
    """The turns as VoiceTurns (the chat row's plain Turns with no stamps on the way)."""
    return [
        turn if isinstance(turn, VoiceTurn) else VoiceTurn(turn.first_token, turn.total, turn.tokens)
        for turn in turns
    ]


async def measured(meter: CpuMeter, workers: Workers, per_client: int) -> Row:
    """Each worker once untimed (warm: connections, token exchanges, caches), then `per_client`
    turns each, all at once, with the CPU every process spent on those."""
    await asyncio.gather(*(work() for work in workers))
    before = meter.read()
    turns, seconds = await timed_loop(workers, per_client)
    return voice_turns(turns), seconds, CpuMeter.spent(before, meter.read())


async def measure(
    bench: Bench, meter: CpuMeter, plan: Sequence[tuple[int, int]], say: Callable[[str], None]
) -> dict[str, Row]:
    """At each (concurrency, turns per client) of `plan`, the three rows one after the other."""
    rows: dict[str, Row] = {}
    audio = utterance()
    async with provider_client(bench) as client:
        sentence = await answer_first_sentence(client)
        say(f"the baseline speaks {sentence!r}")
        for c, per in plan:
            say(f"c={c}: MACP")
            conversations = await new_conversations(bench, c, SHORT_MODEL)
            clients = await asyncio.gather(*(VoiceClient.open(bench, id_, audio) for id_ in conversations))
            try:
                rows[f"macp c={c}"] = await measured(meter, [v.turn for v in clients], per)
            finally:
                await asyncio.gather(*(v.close() for v in clients))
            say(f"c={c}: MACP, the question typed")
            clients = await asyncio.gather(*(VoiceClient.open(bench, id_, audio) for id_ in conversations))
            try:
                rows[f"typed c={c}"] = await measured(meter, [v.typed_turn for v in clients], per)
            finally:
                await asyncio.gather(*(v.close() for v in clients))
            say(f"c={c}: the SDK's transcription and speech")
            rows[f"sdk c={c}"] = await measured(meter, [sdk_voice_turn(client, audio, sentence)] * c, per)
            say(f"c={c}: the SDK's chat completion")
            rows[f"chat c={c}"] = await measured(meter, [sdk_chat_turn(client)] * c, per)
    return rows


# --- the report --------------------------------------------------------------------------------------


def ms(values: Sequence[float], fraction: float) -> float:
    kept = sorted(v for v in values if not math.isnan(v))
    return percentile(kept, fraction) * 1000 if kept else math.nan


def report(rows: dict[str, Row], concurrencies: Sequence[int]) -> str:
    out = [machine_line(), ""]
    out.append(
        "Time to the first audio of the spoken answer (MACP: utterance_end sent → first speech_audio "
        "frame; SDK: transcription started → first audio byte of the first sentence's speech):\n"
    )
    table = []
    for c in concurrencies:
        sdk, macp = rows[f"sdk c={c}"][0], rows[f"macp c={c}"][0]
        table.append(
            added_latency_row(
                c, len(macp), sorted(t.first_token for t in sdk), sorted(t.first_token for t in macp)
            )
        )
    headers = ["c", "turns", "SDK p50 ms", "SDK p99 ms", "MACP p50 ms", "MACP p99 ms"]
    headers += ["added p50", "added p99"]
    out.append(markdown_table(headers, table))
    out.append("\nThe step the SDK row leaves out, echo-1's chat completion (SDK, streamed):\n")
    chat_rows = []
    for c in concurrencies:
        chat = rows[f"chat c={c}"][0]
        first = [t.first_token for t in chat]
        chat_rows.append([str(c), str(len(chat)), f"{ms(first, 0.5):.2f}", f"{ms(first, 0.99):.2f}"])
    out.append(markdown_table(["c", "calls", "first token p50 ms", "p99 ms"], chat_rows))
    out.append(
        "\nThe question typed instead (a `message` frame, `speak: true`): the same round and spoken "
        "answer without the hearing; its first token is what any MACP turn takes to its first word:\n"
    )
    typed_rows = []
    for c in concurrencies:
        typed, chat = rows[f"typed c={c}"][0], rows[f"chat c={c}"][0]
        first_text, first_audio = [t.first_text for t in typed], [t.first_token for t in typed]
        direct = ms([t.first_token for t in chat], 0.5)
        typed_rows.append(
            [
                str(c),
                str(len(typed)),
                f"{ms(first_text, 0.5):.2f}",
                f"{ms(first_text, 0.5) - direct:.2f}",
                f"{ms(first_audio, 0.5):.2f}",
                f"{ms(first_audio, 0.99):.2f}",
            ]
        )
    typed_headers = ["c", "turns", "first token p50 ms", "minus chat's p50", "first audio p50 ms", "p99 ms"]
    out.append(markdown_table(typed_headers, typed_rows))
    out.append("\nOn the way, medians (ms from the clock's start), and the words of the first sentence:\n")
    stamps = []
    for c in concurrencies:
        for name in ("sdk", "macp", "typed"):
            turns = rows[f"{name} c={c}"][0]
            stamps.append(
                [
                    f"{name} c={c}",
                    f"{ms([t.heard for t in turns], 0.5):.1f}",
                    f"{ms([t.first_text for t in turns], 0.5):.1f}" if name != "sdk" else "",
                    f"{ms([t.first_token for t in turns], 0.5):.1f}",
                    f"{ms([t.total for t in turns], 0.5):.1f}",
                    f"{statistics.median(t.first_sentence_words for t in turns):.0f}",
                ]
            )
    stamp_headers = ["row", "heard", "first token_delta", "first audio", "end", "first sentence words"]
    out.append(markdown_table(stamp_headers, stamps))
    out.append("\nCPU per turn (ms), by process:\n")
    out.append(cpu_per_turn_table(rows, CPU_COLUMNS))
    return "\n".join(out)


def spans(turns: int, say: Callable[[str], None]) -> str:
    """`turns` spoken turns one after the other with tracing on, and the path of their spans."""
    receiver = SpanReceiver()
    with receiver.serving():
        overrides = {"MACP_TRACES_ENDPOINT": receiver.url, "OTEL_BSP_SCHEDULE_DELAY": EXPORT_EVERY_MS}
        with running_parts(say, overrides=overrides) as bench:

            async def run() -> list[SentTurn]:
                [conversation] = await new_conversations(bench, 1, SHORT_MODEL)
                client = await VoiceClient.open(bench, conversation, utterance())
                try:
                    for _ in range(turns + 1):
                        await client.turn()
                finally:
                    await client.close()
                return client.sent[1:]  # the first warms up

            sent = asyncio.run(run())
            time.sleep(SETTLE_SECONDS)  # the last spans' export
    # path_table names the client's stop after text turns; here it is the first audio.
    table = path_table(sent, receiver.spans).replace("first token_delta", "first speech_audio")
    return f"{machine_line()}\n\nMedians over {len(sent)} turns, ms after utterance_end was sent:\n\n{table}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.voice", description=__doc__)
    parser.add_argument("--turns", type=int, default=200, help="turns per row at concurrency 1")
    parser.add_argument("--per-client", type=int, default=6, help="turns per client at concurrency 20")
    parser.add_argument("--spans", type=int, default=0, help="instead: this many traced turns, span by span")
    args = parser.parse_args(argv)
    if min(args.turns, args.per_client) < 1 or args.spans < 0:
        parser.error("--turns, --per-client: expected positive numbers; --spans: not negative")

    def say(line: str) -> None:
        print(f"# {line}", file=sys.stderr, flush=True)

    if args.spans:
        print(spans(args.spans, say))
        return 0
    plan = ((1, args.turns), (20, args.per_client))
    with running_parts(say) as bench:
        rows = asyncio.run(measure(bench, CpuMeter(bench.pids), plan, say))
    print(report(rows, [c for c, _ in plan]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
