"""The WAV facts against the standard library's `wave` (an independent writer and reader), and
the refusals users will read."""

from __future__ import annotations

import io
import re
import struct
import wave

import pytest

from services.runtime.wav import (
    HEADER_BYTES,
    TruncatedWav,
    WavHeader,
    parse_header,
    pcm_seconds,
    read_wav,
    wav_header,
)
from tests.reference_wav import stdlib_wav

PCM = bytes(range(256)) * 10  # 1,280 samples


def test_a_header_written_here_is_read_by_the_standard_library() -> None:
    data = wav_header(len(PCM), 16_000) + PCM
    assert len(wav_header(0, 8_000)) == HEADER_BYTES
    with wave.open(io.BytesIO(data), "rb") as reader:
        assert (reader.getnchannels(), reader.getsampwidth(), reader.getframerate()) == (1, 2, 16_000)
        assert reader.readframes(reader.getnframes()) == PCM


def test_a_file_the_standard_library_wrote_is_read_here() -> None:
    header, pcm = read_wav(stdlib_wav(PCM, 22_050))
    assert header == WavHeader(22_050, 1, 16, HEADER_BYTES, len(PCM))
    assert pcm == PCM


def test_chunks_before_the_data_are_skipped_and_a_trailing_one_is_not_audio() -> None:
    plain = wav_header(len(PCM), 24_000)
    listed = b"LIST" + struct.pack("<I", 5) + b"abcde\x00"  # odd size: one byte of padding
    data = plain[:36] + listed + plain[36:] + PCM + b"id3 " + struct.pack("<I", 2) + b"xy"
    header, pcm = read_wav(data)
    assert header.data_offset == HEADER_BYTES + len(listed)
    assert pcm == PCM


def test_an_extensible_pcm_header_is_pcm() -> None:
    fmt = struct.pack("<HHIIHHHHI", 0xFFFE, 1, 16_000, 32_000, 2, 16, 22, 16, 4)
    guid = struct.pack("<H", 1) + b"\x00\x00\x00\x00\x10\x00\x80\x00\x00\xaa\x00\x38\x9b\x71"
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt + guid)) + fmt + guid
    body += b"data" + struct.pack("<I", len(PCM)) + PCM
    header, pcm = read_wav(b"RIFF" + struct.pack("<I", len(body)) + body)
    assert (header.sample_rate, header.channels, pcm) == (16_000, 1, PCM)


@pytest.mark.parametrize("size", [0xFFFFFFFF, 0])
def test_a_streamed_wav_of_unknown_size_holds_what_follows(size: int) -> None:
    streamed = wav_header(0, 24_000)[:40] + struct.pack("<I", size)
    assert parse_header(streamed).data_bytes is None
    header, pcm = read_wav(streamed + PCM)
    assert (header.data_bytes, pcm) == (None, PCM)


def test_a_header_cut_short_asks_for_more_and_a_stream_reader_can_wait() -> None:
    whole = wav_header(len(PCM), 24_000)
    for end in (0, 3, 11, 20, 30, HEADER_BYTES - 1):
        with pytest.raises(TruncatedWav, match=r"^audio: the WAV header is cut short$"):
            parse_header(whole[:end])
    assert parse_header(whole).data_offset == HEADER_BYTES  # no sample needed yet


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"ID3\x04 an mp3 file, not a wav", "audio: not a WAV file"),
        (b"RIFF\x00\x00\x00\x00AVI LIST", "audio: not a WAV file"),
        (
            stdlib_wav(b"\x80" * 100, 16_000, width=1),
            "audio: 8-bit samples are not supported; 16-bit PCM only",
        ),
        (stdlib_wav(PCM, 16_000, channels=2), "audio: 2 channels are not supported; mono only"),
        (stdlib_wav(PCM, 4_000), "audio: sample rate 4000 Hz is out of range 8000 to 48000"),
        (stdlib_wav(PCM, 96_000), "audio: sample rate 96000 Hz is out of range 8000 to 48000"),
        (wav_header(len(PCM), 24_000) + PCM[:100], "audio: the WAV says 2560 bytes of samples but holds 100"),
        (
            wav_header(0, 24_000)[:40] + struct.pack("<I", 0xFFFFFFFF) + b"\x01\x02\x03",
            "audio: the WAV's data is 3 bytes",
        ),
    ],
)
def test_what_is_refused_is_named(data: bytes, message: str) -> None:
    with pytest.raises(ValueError, match=f"^{re.escape(message)}") as refused:
        read_wav(data)
    assert not isinstance(refused.value, TruncatedWav)


def test_float_samples_and_data_without_a_format_are_refused() -> None:
    plain = wav_header(len(PCM), 24_000)
    floats = plain[:20] + struct.pack("<H", 3) + plain[22:] + PCM
    with pytest.raises(ValueError, match=r"^audio: WAV format 3 is not supported; 16-bit PCM only$"):
        read_wav(floats)
    headless = plain[:12] + plain[36:] + PCM
    with pytest.raises(ValueError, match=r"^audio: the WAV has no fmt chunk before its data$"):
        read_wav(headless)


def test_a_header_is_only_written_for_whole_samples_at_a_rate_in_range() -> None:
    with pytest.raises(ValueError, match="not a size of 16-bit samples"):
        wav_header(3, 24_000)
    with pytest.raises(ValueError, match="sample rate 4000 Hz is out of range"):
        wav_header(2, 4_000)


def test_seconds_are_samples_over_the_rate() -> None:
    assert pcm_seconds(48_000, 24_000) == 1.0
    assert pcm_seconds(48_001, 24_000) == 1.0  # a stray byte is no sample
    assert pcm_seconds(16_000, 8_000) == 1.0
    assert pcm_seconds(0, 16_000) == 0.0
