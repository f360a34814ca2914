"""`POST /v1/audio/speech` and `POST /v1/audio/transcriptions`: OpenAI's audio API, on real audio.

Speech is made by `audio_codec` (24 kHz 16-bit mono tones, one per byte of the text) and served as
`wav` or `pcm` only: the compressed formats OpenAI also offers (`mp3`, its default, `opus`, `aac`,
`flac`) would need a codec library, so they are refused with a 400 naming `response_format`. The
audio streams in chunks of 100 ms of audio (a WAV's header first, with the exact sizes), or with
`stream_format: "sse"` as `speech.audio.delta` events (base64 of the same bytes, a WAV's header in
the first) then `speech.audio.done` with the usage: input tokens are the text's characters / 4,
output tokens one per 50 ms of audio (both rounded up).

A transcription takes a 16-bit mono WAV (up to 25 MB, as OpenAI) and answers what `audio_codec`
decodes from it: JSON `{text, usage}`, plain text, or verbose JSON with the duration; with
`stream=true`, `transcript.text.delta` events (one per word and the spaces after it) then
`transcript.text.done`. The JSON answers bill by duration, `{"type": "duration", "seconds"}`, as
OpenAI bills whisper; the done event's usage can only be by tokens (the SDK's
`TranscriptionTextDoneEvent.usage` has no duration variant), so it counts input tokens as one per
50 ms of audio plus the prompt's characters / 4, and output tokens as the text's characters / 4.

Both honour the behavior book as chat does (status, slow, pace and cut between audio chunks or
transcript deltas) and count each request under its model.
"""

from __future__ import annotations

import base64
import re
import uuid
from collections.abc import Iterator, Mapping
from typing import Any

from starlette.datastructures import FormData, UploadFile
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response

from services.provider_server import audio_codec
from services.provider_server.openai_api import error_response
from services.provider_server.protocol import (
    ProtocolError,
    ProviderState,
    SseResponse,
    answer_stream,
    as_is,
    read_json,
    require,
    sse,
)

MAX_INPUT_CHARS = 4_096
SERVED_AUDIO = {"wav": "audio/wav", "pcm": "audio/pcm"}
REFUSED_AUDIO = ("mp3", "opus", "aac", "flac")
CHUNK_SAMPLES = audio_codec.SAMPLE_RATE // 10  # 100 ms of audio per chunk or delta event
SAMPLES_PER_TOKEN = audio_codec.SAMPLE_RATE // 20  # one audio token per 50 ms
CHARS_PER_TOKEN = 4
MAX_UPLOAD_BYTES = 25 * 1024 * 1024
FORM_OVERHEAD_BYTES = 64 * 1024  # room for the other fields and the part headers
TRANSCRIPT_FORMATS = ("json", "text", "verbose_json")
REFUSED_TRANSCRIPTS = ("srt", "vtt", "diarized_json")
SPEECH_MALFORMED = b'data: {"type":"speech.audio.delta","audio":\n\n'
TRANSCRIPT_MALFORMED = b'data: {"type":"transcript.text.delta","delta":\n\n'
_WORD = re.compile(r"\s*\S+\s*|\s+")


class FieldError(ProtocolError):
    """A 400 about one field of the request; OpenAI's error names it in `param` too."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(400, f"{field}: {message}")
        self.field = field


def _refusal(exc: ProtocolError) -> Response:
    return error_response(exc.status, exc.message, exc.field if isinstance(exc, FieldError) else None)


def _authorize(request: Request) -> None:
    authorization = request.headers.get("authorization", "")
    if not authorization.lower().startswith("bearer ") or not authorization[7:].strip():
        raise ProtocolError(401, "an Authorization: Bearer <key> header is required")


def _tokens_for_text(text: str) -> int:
    return -(-len(text) // CHARS_PER_TOKEN)


def _tokens_for_audio(samples: int) -> int:
    return -(-samples // SAMPLES_PER_TOKEN)


# --- speech -------------------------------------------------------------------------------------


async def speech(request: Request) -> Response:
    state: ProviderState = request.app.state.provider
    try:
        _authorize(request)
        body = await read_json(request)
        model = require(body, "model", str, "a model name")
        text = require(body, "input", str, "the text to speak")
        if not 1 <= len(text) <= MAX_INPUT_CHARS:
            raise FieldError("input", f"expected 1 to {MAX_INPUT_CHARS} characters, got {len(text)}")
        voice = _voice(body.get("voice"))
        audio_format = _audio_format(body.get("response_format", "mp3"))
        speed = _speed(body.get("speed", 1.0))
        if not isinstance(body.get("instructions", ""), str):
            raise FieldError("instructions", "expected a string")
        stream_format = body.get("stream_format", "audio")
        if stream_format not in ("audio", "sse"):
            raise FieldError("stream_format", f"expected 'audio' or 'sse', got {stream_format!r}")
        behavior = state.behavior_for(request, model)
    except ProtocolError as exc:
        return _refusal(exc)
    if (status := await behavior.injected_status()) is not None:
        return error_response(status, f"injected failure {status}")
    samples = audio_codec.speech_samples(text, speed)
    chunks = audio_codec.speech_chunks(text, voice=voice, speed=speed, chunk_samples=CHUNK_SAMPLES)
    headers = {"x-request-id": f"req_{uuid.uuid4().hex}"}
    if stream_format == "sse":
        usage = {
            "input_tokens": _tokens_for_text(text),
            "output_tokens": _tokens_for_audio(samples),
            "total_tokens": _tokens_for_text(text) + _tokens_for_audio(samples),
        }
        done = sse({"type": "speech.audio.done", "usage": usage})
        if audio_format == "wav":  # the deltas join to the same file the audio stream sends
            chunks = _after(audio_codec.wav_header(samples * audio_codec.SAMPLE_WIDTH), chunks)
        events = answer_stream([], chunks, _audio_delta, [done], SPEECH_MALFORMED, behavior)
        return SseResponse(events, state, headers)
    head = [audio_codec.wav_header(samples * audio_codec.SAMPLE_WIDTH)] if audio_format == "wav" else []
    # A raw audio stream has no event to spoil: `malformed` has nothing to act on here.
    audio = answer_stream(head, chunks, as_is, [], b"", behavior)
    return SseResponse(audio, state, {**headers, "content-type": SERVED_AUDIO[audio_format]})


def _after(header: bytes, chunks: Iterator[bytes]) -> Iterator[bytes]:
    """The chunks with the header in front of the first one."""
    for number, chunk in enumerate(chunks):
        yield header + chunk if number == 0 else chunk


def _audio_delta(pcm: bytes) -> bytes:
    return sse({"type": "speech.audio.delta", "audio": base64.b64encode(pcm).decode("ascii")})


def _voice(raw: Any) -> str:
    """A built-in voice's name, or a custom voice `{"id": ...}`; any name is a voice here."""
    if isinstance(raw, dict) and isinstance(raw.get("id"), str) and raw["id"]:
        return str(raw["id"])
    if raw is None:
        raise FieldError("voice", "Field required")
    if not isinstance(raw, str) or not raw:
        raise FieldError("voice", "expected a voice name such as 'alloy', or {id: 'voice_...'}")
    return raw


def _audio_format(raw: Any) -> str:
    served = " and ".join(f"'{name}'" for name in SERVED_AUDIO)
    if raw in REFUSED_AUDIO:
        raise FieldError("response_format", f"'{raw}' is not served here; this server makes {served} only")
    if raw not in SERVED_AUDIO:
        raise FieldError("response_format", f"expected {served}, got {raw!r}")
    return str(raw)


def _speed(raw: Any) -> float:
    low, high = audio_codec.MIN_SPEED, audio_codec.MAX_SPEED
    if not isinstance(raw, int | float) or isinstance(raw, bool) or not low <= raw <= high:
        raise FieldError("speed", f"expected a number from {low} to {high}, got {raw!r}")
    return float(raw)


# --- transcriptions -----------------------------------------------------------------------------


async def transcriptions(request: Request) -> Response:
    state: ProviderState = request.app.state.provider
    try:
        _authorize(request)
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > MAX_UPLOAD_BYTES + FORM_OVERHEAD_BYTES:
            raise FieldError("file", f"{declared} bytes of request; files are limited to 25 MB")
        form = await _form(request)
        try:
            model = _form_text(form, "model", required=True)
            pcm, rate = await _audio(form)
            prompt = _form_text(form, "prompt")
            language = _form_text(form, "language")
            transcript_format = _transcript_format(_form_text(form, "response_format") or "json")
            stream = _form_flag(form, "stream")
        finally:
            await form.close()
        behavior = state.behavior_for(request, model)
    except ProtocolError as exc:
        return _refusal(exc)
    if (status := await behavior.injected_status()) is not None:
        return error_response(status, f"injected failure {status}")
    text = audio_codec.transcribe(pcm, rate)
    duration = audio_codec.seconds(pcm, rate)
    headers = {"x-request-id": f"req_{uuid.uuid4().hex}"}
    if stream:
        audio_tokens = _tokens_for_audio(round(duration * audio_codec.SAMPLE_RATE))
        prompt_tokens = _tokens_for_text(prompt)
        usage = {
            "type": "tokens",
            "input_tokens": audio_tokens + prompt_tokens,
            "output_tokens": _tokens_for_text(text),
            "total_tokens": audio_tokens + prompt_tokens + _tokens_for_text(text),
            "input_token_details": {"audio_tokens": audio_tokens, "text_tokens": prompt_tokens},
        }
        done = sse({"type": "transcript.text.done", "text": text, "usage": usage})
        events = answer_stream([], _words(text), _text_delta, [done], TRANSCRIPT_MALFORMED, behavior)
        return SseResponse(events, state, headers)
    if transcript_format == "text":
        return PlainTextResponse(text, headers=headers)
    usage_by_duration = {"type": "duration", "seconds": duration}
    if transcript_format == "json":
        return JSONResponse({"text": text, "usage": usage_by_duration}, headers=headers)
    verbose = {
        "task": "transcribe",
        "language": language or "english",
        "duration": duration,
        "text": text,
        "segments": [_segment(text, duration)],
        "usage": usage_by_duration,
    }
    return JSONResponse(verbose, headers=headers)


async def _form(request: Request) -> FormData:
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise ProtocolError(400, "the request body must be a multipart/form-data form")
    try:
        return await request.form(max_files=1, max_fields=100)
    except HTTPException as exc:  # Starlette's answer to a malformed multipart body
        raise ProtocolError(400, f"the request body is not a readable multipart form: {exc.detail}") from None


def _form_text(form: FormData, name: str, *, required: bool = False) -> str:
    value = form.get(name)
    if value is None:
        if required:
            raise FieldError(name, "Field required")
        return ""
    if not isinstance(value, str):
        raise FieldError(name, "expected a text field, got a file")
    return value


def _form_flag(form: FormData, name: str) -> bool:
    value = _form_text(form, name).lower()
    if value not in ("", "true", "false"):
        raise FieldError(name, f"expected 'true' or 'false', got {value!r}")
    return value == "true"


async def _audio(form: FormData) -> tuple[bytes, int]:
    upload = form.get("file")
    if upload is None:
        raise FieldError("file", "Field required")
    if not isinstance(upload, UploadFile):
        raise FieldError("file", "expected a file upload, got a text field")
    if upload.size is not None and upload.size > MAX_UPLOAD_BYTES:
        raise FieldError("file", f"{upload.size} bytes is over the 25 MB limit ({MAX_UPLOAD_BYTES} bytes)")
    data = await upload.read(MAX_UPLOAD_BYTES + 1)
    if len(data) > MAX_UPLOAD_BYTES:
        raise FieldError("file", f"over the 25 MB limit ({MAX_UPLOAD_BYTES} bytes)")
    try:
        return audio_codec.read_wav(data, field="file")
    except ValueError as exc:
        # read_wav's message already starts with "file: ".
        raise FieldError("file", str(exc).removeprefix("file: ")) from None


def _transcript_format(raw: str) -> str:
    served = ", ".join(TRANSCRIPT_FORMATS)
    if raw in REFUSED_TRANSCRIPTS:
        raise FieldError("response_format", f"'{raw}' is not served here; expected one of {served}")
    if raw not in TRANSCRIPT_FORMATS:
        raise FieldError("response_format", f"expected one of {served}, got {raw!r}")
    return raw


def _words(text: str) -> Iterator[str]:
    """The text in pieces of a word and the spaces around it; they join back to the text."""
    return (match.group() for match in _WORD.finditer(text))


def _text_delta(piece: str) -> bytes:
    return sse({"type": "transcript.text.delta", "delta": piece})


def _segment(text: str, duration: float) -> Mapping[str, Any]:
    """The whole audio as one segment (the codec knows no sentences), in OpenAI's segment shape."""
    return {
        "id": 0,
        "seek": 0,
        "start": 0.0,
        "end": duration,
        "text": text,
        "tokens": list(text.encode()),
        "temperature": 0.0,
        "avg_logprob": 0.0,
        "compression_ratio": 1.0,
        "no_speech_prob": 0.0 if text else 1.0,
    }
