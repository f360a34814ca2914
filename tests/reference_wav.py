"""WAV files written by Python's own `wave` module: a reference made independently of the code
under test (services/runtime/wav.py, the provider server's codec), for the tests that read them."""

from __future__ import annotations

import io
import wave


def stdlib_wav(pcm: bytes, rate: int, *, channels: int = 1, width: int = 2) -> bytes:
    """`pcm` (little-endian frames) as a RIFF WAV file of `rate` Hz, `channels`, `width` bytes a sample."""
    out = io.BytesIO()
    with wave.open(out, "wb") as writer:
        writer.setnchannels(channels)
        writer.setsampwidth(width)
        writer.setframerate(rate)
        writer.writeframes(pcm)
    return out.getvalue()
