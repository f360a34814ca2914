"""A deterministic stand-in for speech: text becomes tones that decode back to exactly that text.

Tests of audio paths (the OpenAI audio API of the local provider server, the agent proxy measuring
the audio it relays, the edge checking uploads) need speech that is real PCM, that is cheap to make
and to recognise, and whose transcript is known exactly. This codec makes it in pure Python:

- Audio is OpenAI's `pcm` format: 24 kHz, 16-bit signed little-endian, mono.
- Each UTF-8 byte `b` of the text is one symbol of `round(1440 / speed)` samples (60 ms at speed 1,
  15 ms at speed 4, 240 ms at speed 0.25): a tone of `K = 40 + b` half cycles filling the first
  seven eighths, then silence (exact zeros) for the last eighth.
- A tone's samples are never quiet (at least a quarter of the voice's amplitude), and each half
  cycle holds at least one sample (a symbol's tone is never shorter than 315 samples, and K is at
  most 295), so the number of sign changes in a tone is exactly `K - 1` whatever the speed.
- The voice sets the amplitude and the polarity (a phase of 0 or pi): neither changes a sign
  change, so neither changes what decodes.

Decoding therefore needs no arithmetic per sample in Python: the high byte of each sample says
whether it is quiet (`0x00` or `0xff`: -256 to 255) and its sign (`>= 0x80`: negative), so a run of
quiet samples at least 1 ms long separates symbols (a regular expression over the high bytes), and
a symbol's byte is its count of sign changes (`bytes.count` over its translated high bytes) minus
39. A stretch that cannot be such a symbol (too short or too long for any speed, quiet samples
inside, a count out of range) is skipped, so silence decodes to "" and noise (never quiet for a
whole millisecond) to "" too; any audio decodes the same way every time.
"""

from __future__ import annotations

import math
import re
import sys
from array import array
from collections.abc import Iterator
from functools import lru_cache

from services.runtime import wav

SAMPLE_RATE = 24_000
SAMPLE_WIDTH = 2  # bytes: 16-bit PCM
SYMBOL_SAMPLES = 1_440  # one byte at speed 1: 60 ms at 24 kHz
MIN_SPEED, MAX_SPEED = 0.25, 4.0
FIRST_HALF_CYCLES = 40  # byte 0 is a tone of 40 half cycles, byte 255 of 295
WAV_HEADER_BYTES = wav.HEADER_BYTES

# Every table entry of a half cycle is at least this fraction of the amplitude: never quiet.
_FLOOR = 0.25
_STEPS = 1_024  # table entries per half cycle
_GAP_SECONDS = 0.001  # the shortest quiet run that separates two symbols
# Tone lengths any speed makes, in seconds, with room for a WAV whose rate is a little off.
_MIN_TONE_SECONDS = (SYMBOL_SAMPLES / MAX_SPEED) * 7 / 8 / SAMPLE_RATE * 0.9
_MAX_TONE_SECONDS = (SYMBOL_SAMPLES / MIN_SPEED) * 7 / 8 / SAMPLE_RATE * 1.1
# High bytes of quiet samples (-256..255), and the sign of each high byte (1: negative).
_QUIET = b"[\x00\xff]"
_SIGN = bytes(1 if high >= 0x80 else 0 for high in range(256))


def symbol_samples(speed: float) -> int:
    """The samples of one symbol (one byte of text) at this speed."""
    _check_speed(speed)
    return round(SYMBOL_SAMPLES / speed)


def speech_samples(text: str, speed: float) -> int:
    """How many samples `synthesize(text, speed=speed)` makes, without making them (the size a
    WAV header announces before the audio streams)."""
    return len(text.encode()) * symbol_samples(speed)


def synthesize(text: str, *, voice: str, speed: float = 1.0) -> bytes:
    """The text as 24 kHz 16-bit mono PCM."""
    return b"".join(_symbols(text, voice, speed))


def speech_chunks(text: str, *, voice: str, speed: float = 1.0, chunk_samples: int) -> Iterator[bytes]:
    """`synthesize` in pieces of `chunk_samples` samples (the last shorter), made as they are
    consumed: a long text at a slow speed is never held whole."""
    if chunk_samples < 1:
        raise ValueError(f"chunk_samples: expected a positive number, got {chunk_samples}")
    size = chunk_samples * SAMPLE_WIDTH
    pending = bytearray()
    for symbol in _symbols(text, voice, speed):
        pending += symbol
        while len(pending) >= size:
            yield bytes(pending[:size])
            del pending[:size]
    if pending:
        yield bytes(pending)


def transcribe(pcm: bytes, sample_rate: int = SAMPLE_RATE) -> str:
    """The text of speech `synthesize` made (at any speed, in any voice); other audio gives
    whatever symbols it happens to hold, the same every time ("" for silence or noise)."""
    high = bytes(pcm[1 : len(pcm) - len(pcm) % SAMPLE_WIDTH : SAMPLE_WIDTH])
    shortest = math.floor(_MIN_TONE_SECONDS * sample_rate)
    longest = math.ceil(_MAX_TONE_SECONDS * sample_rate)
    decoded = bytearray()
    start = 0
    for gap in _gap_pattern(max(1, round(_GAP_SECONDS * sample_rate))).finditer(high):
        _decode_symbol(high[start : gap.start()], shortest, longest, decoded)
        start = gap.end()
    _decode_symbol(high[start:], shortest, longest, decoded)
    return decoded.decode("utf-8", errors="ignore")


def seconds(pcm: bytes, sample_rate: int = SAMPLE_RATE) -> float:
    """The duration of 16-bit mono PCM."""
    return wav.pcm_seconds(len(pcm), sample_rate)


def wav_header(data_bytes: int, sample_rate: int = SAMPLE_RATE) -> bytes:
    """The 44-byte RIFF/WAVE header of `data_bytes` bytes of 16-bit mono PCM: what a stream sends
    first, with the exact sizes, since a synthesized text's size is known before it is made."""
    return wav.wav_header(data_bytes, sample_rate)


def wav_bytes(pcm: bytes, sample_rate: int = SAMPLE_RATE) -> bytes:
    """16-bit mono PCM as a WAV file."""
    return wav.wav_header(len(pcm), sample_rate) + pcm


def read_wav(data: bytes, *, field: str = "file") -> tuple[bytes, int]:
    """The 16-bit mono PCM and the sample rate of a WAV file, or a ValueError naming `field` and
    what is wrong with it (services/runtime/wav.py: stereo is refused, not mixed down)."""
    try:
        header, pcm = wav.read_wav(data)
    except ValueError as exc:
        raise ValueError(f"{field}: {str(exc).removeprefix('audio: ')}") from None
    return pcm, header.sample_rate


def _check_speed(speed: float) -> None:
    if not MIN_SPEED <= speed <= MAX_SPEED:
        raise ValueError(f"speed: expected {MIN_SPEED} to {MAX_SPEED}, got {speed}")


def _voice(voice: str) -> tuple[int, int]:
    """A voice's amplitude and polarity, from a hash that is the same in every process (FNV-1a;
    Python's own string hash is salted per process)."""
    digest = 0x811C9DC5
    for byte in voice.encode():
        digest = ((digest ^ byte) * 0x01000193) & 0xFFFFFFFF
    amplitude = 6_000 + (digest % 9) * 1_000  # 6,000 to 14,000 of 32,767
    polarity = -1 if digest & 0x100 else 1
    return amplitude, polarity


def _symbols(text: str, voice: str, speed: float) -> Iterator[bytes]:
    samples = symbol_samples(speed)
    amplitude, polarity = _voice(voice)
    for byte in text.encode():
        yield _symbol(byte, samples, amplitude, polarity)


@lru_cache(maxsize=2_048)
def _symbol(byte: int, samples: int, amplitude: int, polarity: int) -> bytes:
    """One byte's tone and gap. Sample n sits at n + 1/2 and belongs to half cycle
    floor(K (2n + 1) / 2N) of the N-sample tone, found in integers so the count is exact."""
    gap = samples // 8
    tone = samples - gap
    half_cycles = FIRST_HALF_CYCLES + byte
    table = _cycle_table(amplitude, polarity)
    period = 2 * _STEPS
    values = array(
        "h", [table[(half_cycles * (2 * n + 1) * _STEPS // (2 * tone)) % period] for n in range(tone)]
    )
    values.frombytes(bytes(gap * SAMPLE_WIDTH))
    if sys.byteorder == "big":  # pragma: no cover - PCM is little-endian whatever the machine
        values.byteswap()
    return values.tobytes()


@lru_cache(maxsize=64)
def _cycle_table(amplitude: int, polarity: int) -> tuple[int, ...]:
    """One full cycle in `2 * _STEPS` entries: a sine whose magnitude never drops below the floor,
    positive in the first half (negative with polarity -1)."""
    half = [
        max(round(amplitude * math.sin(math.pi * (i + 0.5) / _STEPS)), round(amplitude * _FLOOR))
        for i in range(_STEPS)
    ]
    return tuple([polarity * value for value in half] + [-polarity * value for value in half])


@lru_cache(maxsize=16)
def _gap_pattern(quiet_samples: int) -> re.Pattern[bytes]:
    return re.compile(_QUIET + b"{%d,}" % quiet_samples)


def _decode_symbol(high: bytes, shortest: int, longest: int, out: bytearray) -> None:
    """Append the byte a stretch between two gaps encodes, if it is a symbol."""
    if not shortest <= len(high) <= longest or b"\x00" in high or b"\xff" in high:
        return
    signs = high.translate(_SIGN)
    half_cycles = signs.count(b"\x00\x01") + signs.count(b"\x01\x00") + 1
    byte = half_cycles - FIRST_HALF_CYCLES
    if 0 <= byte <= 255 and half_cycles <= len(high):
        out.append(byte)
