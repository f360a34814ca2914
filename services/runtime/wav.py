"""The WAV facts every audio path needs: read a RIFF/WAVE header, write one, time 16-bit mono PCM.

MACP's audio is 16-bit signed little-endian mono PCM (macp.common.v1.AudioFormat), bare or in a
WAV. The edge checks uploads with `read_wav`, the agent proxy reads a provider's streamed header
with `parse_header` before the rest has arrived (`TruncatedWav` says to wait for more bytes), and
everyone measures seconds with `pcm_seconds`: usage is metered from the audio itself, never from a
duration someone reported. Messages start with `audio:` and say what is wrong, since they reach
users as the reason their upload was refused.

A streamed WAV cannot know its size when its header is sent: it says 0xFFFFFFFF (or 0) there, and
the data is whatever follows (`WavHeader.data_bytes` is None). Chunks other than `fmt ` and `data`
(LIST, fact, ...) are skipped, as the RIFF format asks.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

SAMPLE_WIDTH = 2  # bytes per sample: 16-bit PCM
MIN_SAMPLE_RATE, MAX_SAMPLE_RATE = 8_000, 48_000
HEADER_BYTES = 44  # the header `wav_header` writes
# Format tags: plain PCM, and WAVE_FORMAT_EXTENSIBLE whose sub-format GUID starts with the real tag.
PCM_FORMAT, EXTENSIBLE_FORMAT = 1, 0xFFFE
# A data size no one could know when the header went out (a stream): the data is what follows.
_STREAMED_SIZES = (0, 0xFFFFFFFF)


class TruncatedWav(ValueError):
    """The bytes end before the header does: a stream's reader waits for more, an upload is refused."""


@dataclass(frozen=True)
class WavHeader:
    sample_rate: int
    channels: int
    bits_per_sample: int
    data_offset: int  # where the samples start
    data_bytes: int | None  # the data chunk's declared size; None for a stream's unknown size


def parse_header(data: bytes) -> WavHeader:
    """The header at the start of `data` (which may hold more, or less, of the samples)."""
    if (len(data) >= 4 and data[:4] != b"RIFF") or (len(data) >= 12 and data[8:12] != b"WAVE"):
        raise ValueError("audio: not a WAV file")
    position = 12
    fmt: tuple[int, int, int, int] | None = None  # format tag, channels, rate, bits
    while True:
        if len(data) < position + 8:
            raise TruncatedWav("audio: the WAV header is cut short")
        chunk_id, size = struct.unpack_from("<4sI", data, position)
        body = position + 8
        if chunk_id == b"data":
            if fmt is None:
                raise ValueError("audio: the WAV has no fmt chunk before its data")
            return _checked(fmt, body, None if size in _STREAMED_SIZES else size)
        if chunk_id == b"fmt ":
            if size < 16:
                raise ValueError(f"audio: the WAV's fmt chunk is {size} bytes; at least 16 expected")
            if len(data) < body + min(size, 26):
                raise TruncatedWav("audio: the WAV header is cut short")
            tag, channels, rate, _, _, bits = struct.unpack_from("<HHIIHH", data, body)
            if tag == EXTENSIBLE_FORMAT and size >= 26:
                (tag,) = struct.unpack_from("<H", data, body + 24)  # the sub-format's first field
            fmt = (tag, channels, rate, bits)
        position = body + size + size % 2  # chunks are padded to an even size


def _checked(fmt: tuple[int, int, int, int], data_offset: int, data_bytes: int | None) -> WavHeader:
    tag, channels, rate, bits = fmt
    if tag != PCM_FORMAT:
        raise ValueError(f"audio: WAV format {tag} is not supported; 16-bit PCM only")
    if bits != 8 * SAMPLE_WIDTH:
        raise ValueError(f"audio: {bits}-bit samples are not supported; 16-bit PCM only")
    if channels != 1:
        raise ValueError(f"audio: {channels} channels are not supported; mono only")
    check_sample_rate(rate)
    return WavHeader(rate, channels, bits, data_offset, data_bytes)


def check_sample_rate(rate: int) -> None:
    if not MIN_SAMPLE_RATE <= rate <= MAX_SAMPLE_RATE:
        raise ValueError(
            f"audio: sample rate {rate} Hz is out of range {MIN_SAMPLE_RATE} to {MAX_SAMPLE_RATE}"
        )


def read_wav(data: bytes) -> tuple[WavHeader, bytes]:
    """A whole WAV file's header and samples; a file whose data is shorter than it says is refused
    (it was cut in transit), one with more (a trailing chunk) gives the declared samples."""
    header = parse_header(data)
    present = len(data) - header.data_offset
    if header.data_bytes is not None and header.data_bytes > present:
        raise ValueError(
            f"audio: the WAV says {header.data_bytes} bytes of samples but holds {present}; it was cut short"
        )
    size = present if header.data_bytes is None else header.data_bytes
    if size % SAMPLE_WIDTH:
        raise ValueError(f"audio: the WAV's data is {size} bytes, not a whole number of 16-bit samples")
    return header, data[header.data_offset : header.data_offset + size]


def wav_header(data_bytes: int, sample_rate: int) -> bytes:
    """The 44-byte header of `data_bytes` bytes of 16-bit mono PCM at `sample_rate`."""
    if data_bytes < 0 or data_bytes % SAMPLE_WIDTH or data_bytes > 0xFFFFFFFF - 36:
        raise ValueError(f"audio: {data_bytes} bytes is not a size of 16-bit samples a WAV can hold")
    check_sample_rate(sample_rate)
    return struct.pack(
        "<4sI4s4sIHHIIHH4sI",
        b"RIFF",
        36 + data_bytes,  # what follows this field
        b"WAVE",
        b"fmt ",
        16,  # a PCM fmt chunk's size
        PCM_FORMAT,
        1,  # mono
        sample_rate,
        sample_rate * SAMPLE_WIDTH,  # bytes per second
        SAMPLE_WIDTH,  # bytes per sample frame
        8 * SAMPLE_WIDTH,
        b"data",
        data_bytes,
    )


def pcm_seconds(pcm_bytes: int, sample_rate: int) -> float:
    """The duration of `pcm_bytes` bytes of 16-bit mono PCM (a trailing odd byte is no sample)."""
    return (pcm_bytes // SAMPLE_WIDTH) / sample_rate
