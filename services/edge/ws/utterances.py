"""A spoken message arriving over a WebSocket (docs/websocket.md, "Voice"): the audio of one
utterance, gathered between `utterance_start` and `utterance_end` and checked as it comes.

Why the edge checks it all before anything is sent: the orchestrator meters an utterance in voice
seconds as soon as it hears it, so audio that is too big, not audio, or empty must be refused
here, where a refusal costs one error frame and no one is billed; and it is refused as soon as it
is known to be bad (the running total past the limit, a WAV header that is not one, a client too
fast), not after megabytes more have arrived.

Why a pace rule: an utterance is someone speaking. Audio frames do not count against the edge's
rate limits (a microphone sends tens of them a second), which is safe only because their pace is
bounded here: the audio received may run ahead of the wall time since `utterance_start` by
BURST_SECONDS, and grow at REAL_TIME_FACTOR after that. A client going faster is uploading a
recording, which `/v1/audio/transcriptions` takes under its own limits, or flooding.

What an utterance holds is its audio so far, at most `max_audio_bytes` (MACP_EDGE_MAX_AUDIO_BYTES);
a connection has at most MACP_EDGE_WS_MAX_SUBSCRIPTIONS of them open.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from macp.common.v1 import audio_pb2
from macp.orchestrator.v1 import orchestrator_service_pb2 as pb

from services.runtime.wav import SAMPLE_WIDTH, TruncatedWav, parse_header, pcm_seconds, read_wav

# How far ahead of real time a client may be: what a recorder buffers before its first send, or
# what a client holds back through a network stall and then sends at once.
BURST_SECONDS = 2.0
# After the burst, seconds of audio per second of wall time: a live microphone makes 1.0; the
# slack is for jitter and for catching up after a stall without being refused.
REAL_TIME_FACTOR = 1.5


class UtteranceRefused(Exception):
    """The utterance is refused and dropped; `message` starts with the field, `code` is the error
    frame's (INVALID_ARGUMENT, or RESOURCE_EXHAUSTED for the pace)."""

    def __init__(self, message: str, code: str = "INVALID_ARGUMENT") -> None:
        super().__init__(message)
        self.message = message
        self.code = code


@dataclass
class OpenUtterance:
    """One utterance between its start and its end. `template` is the Utterance as
    `utterance_start` described it (everything but the audio); `started` is when that frame
    arrived, on the loop's clock, from which the pace is measured."""

    template: pb.Utterance
    started: float
    max_bytes: int
    audio: bytearray = field(default_factory=bytearray)
    # A WAV's sample rate and where its samples start, once its header has arrived.
    _rate: int | None = field(default=None, init=False)
    _data_offset: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        if self.template.format == audio_pb2.AUDIO_FORMAT_PCM:
            self._rate = self.template.sample_rate

    @property
    def message_id(self) -> str:
        return self.template.message_id

    def add(self, data: bytes, arrived: float) -> None:
        """Appends audio that arrived at `arrived`, or `UtteranceRefused` when it makes the
        utterance too big, not the declared format, or faster than real time."""
        self.check_size(len(data))
        self.audio += data
        if self._rate is None:
            self._read_header()
        if self._rate is not None:
            self._check_pace(arrived)

    def check_size(self, more: int) -> None:
        """`UtteranceRefused` when `more` bytes would take the utterance past its limit."""
        if len(self.audio) + more > self.max_bytes:
            raise UtteranceRefused(
                f"audio: more than {self.max_bytes} bytes (MACP_EDGE_MAX_AUDIO_BYTES); "
                "say less in one utterance"
            )

    def finish(self, utterance: pb.Utterance) -> None:
        """Fills `utterance` (the Converse event to send) with the whole utterance, or
        `UtteranceRefused`."""
        audio = bytes(self.audio)
        if self.template.format == audio_pb2.AUDIO_FORMAT_WAV:
            try:
                _header, samples = read_wav(audio)
            except ValueError as exc:
                raise UtteranceRefused(_audio_message(exc)) from None
        else:
            if len(audio) % SAMPLE_WIDTH:
                raise UtteranceRefused(
                    f"audio: {len(audio)} bytes of PCM is not a whole number of 16-bit samples"
                )
            samples = audio
        if not samples:
            raise UtteranceRefused("audio: the utterance holds no samples")
        utterance.CopyFrom(self.template)
        utterance.audio = audio

    def _read_header(self) -> None:
        """A WAV's rate once its header is whole; a header that cannot be one is refused at once."""
        try:
            header = parse_header(bytes(self.audio))
        except TruncatedWav:
            return  # wait for more of it
        except ValueError as exc:
            raise UtteranceRefused(_audio_message(exc)) from None
        self._rate, self._data_offset = header.sample_rate, header.data_offset

    def _check_pace(self, arrived: float) -> None:
        assert self._rate is not None
        seconds = pcm_seconds(max(0, len(self.audio) - self._data_offset), self._rate)
        elapsed = max(0.0, arrived - self.started)
        if seconds > BURST_SECONDS + REAL_TIME_FACTOR * elapsed:
            raise UtteranceRefused(
                f"audio: {seconds:.1f} s of audio arrived in {elapsed:.1f} s; send it as it is "
                f"spoken (at most {BURST_SECONDS:g} s ahead, then {REAL_TIME_FACTOR:g}x real time)",
                code="RESOURCE_EXHAUSTED",
            )


def _audio_message(error: ValueError) -> str:
    """services/runtime/wav.py's refusals start with `audio:` already; say which format was declared."""
    text = str(error)
    detail = text.removeprefix("audio: ")
    return f"audio: {detail} (format wav: 16-bit mono PCM in a WAV, 8,000 to 48,000 Hz)"


class Utterances:
    """A connection's open utterances by conversation, and the bytes of binary frames waiting in
    its inbox (frames are handled in order, so audio may queue behind a frame that waits on the
    orchestrator; what may queue is bounded too)."""

    __slots__ = ("open", "queued_bytes")

    def __init__(self) -> None:
        self.open: dict[str, OpenUtterance] = {}
        self.queued_bytes = 0

    def binary_target(self) -> str:
        """The conversation of the one open utterance a binary frame (which names none) belongs
        to, or `UtteranceRefused` saying why there is none."""
        if not self.open:
            raise UtteranceRefused(
                "audio: a binary frame is an utterance's audio, taken only while one is open "
                "(utterance_start); every other frame is JSON text"
            )
        if len(self.open) > 1:
            raise UtteranceRefused(
                f"audio: utterances are open in {len(self.open)} conversations; a binary frame "
                "names none, so send their audio as audio frames naming conversation_id"
            )
        return next(iter(self.open))
