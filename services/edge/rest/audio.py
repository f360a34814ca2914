"""OpenAI-compatible `POST /v1/audio/speech` and `POST /v1/audio/transcriptions`: an agent's voice,
through OrchestratorService.Speak and Transcribe (voice seconds held at metering before any
provider is called, the seconds made or heard committed), so the official OpenAI SDKs speak and
listen through a MACP agent (model = agent id).

Whose settings: the agent's voice settings apply (docs/voice.md). Its voice is the agent's own
when it has one, else the request's `voice`; a `response_format` or `speed` the request gives is
honoured (the client decodes what it asked for). Only WAV and PCM (16-bit mono; PCM at 24 kHz, as
OpenAI's) are served; other formats are refused naming `response_format`.

Speech streams as it is made: `stream_format` "audio" (the default) is the audio itself, chunk by
chunk; "sse" is `speech.audio.delta` events then `speech.audio.done` with the usage. A
transcription takes one WAV `file` (16-bit PCM, 8 to 48 kHz, at most `MACP_EDGE_MAX_AUDIO_BYTES`)
and answers `json`, `text` or `verbose_json`, or with `stream=true` `transcript.text.delta` events
then `transcript.text.done`. Its usage is the audio's duration, as OpenAI bills whisper.

Why the first response is awaited before answering, as chat completions do: a refusal (unknown
agent, quota, bad audio) comes before any audio, and becomes a real HTTP status; a failure after
audio began can only end the stream (the audio stream is cut short, an SSE stream gets an `error`
event), which the SDKs raise.
"""

from __future__ import annotations

import base64
import json
import math
import re
import uuid
from collections.abc import AsyncIterator, Mapping
from http import HTTPStatus
from typing import Any, TypeAlias

import grpc
from macp.common.v1 import audio_pb2
from macp.orchestrator.v1 import orchestrator_service_pb2 as pb
from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.types import Message

from services.edge.context import edge_context
from services.edge.errors import HttpError
from services.edge.http import read_body, read_json_object
from services.edge.rest.openai_errors import (
    OPENAI_ERROR_SCHEMA,
    OpenAIError,
    bad_param,
    from_rpc,
    model_not_found,
    openai_error,
)
from services.edge.rest.openai_shapes import is_model_id
from services.edge.rest.sse import SSE_HEADERS
from services.edge.routes import ApiRoute, Content
from services.runtime.wav import read_wav

SpeakCall: TypeAlias = "grpc.aio.UnaryStreamCall[pb.SpeakRequest, pb.SpeakResponse]"
TranscribeCall: TypeAlias = "grpc.aio.UnaryStreamCall[pb.TranscribeRequest, pb.TranscribeResponse]"

FORMATS = {"wav": audio_pb2.AUDIO_FORMAT_WAV, "pcm": audio_pb2.AUDIO_FORMAT_PCM}
MEDIA_TYPES = {audio_pb2.AUDIO_FORMAT_WAV: "audio/wav", audio_pb2.AUDIO_FORMAT_PCM: "audio/pcm"}
OPENAI_ONLY_FORMATS = ("mp3", "opus", "aac", "flac")
MAX_INPUT_CHARACTERS = 4096
SPEECH_FIELDS = frozenset(
    {"model", "input", "voice", "response_format", "speed", "stream_format", "instructions"}
)
TRANSCRIPTION_FIELDS = frozenset(
    {"file", "model", "language", "prompt", "response_format", "stream", "temperature"}
)
TRANSCRIPT_FORMATS = ("json", "text", "verbose_json")
# A multipart form's own bytes beside its file: boundaries, part headers, the other fields.
FORM_OVERHEAD_BYTES = 64 * 1024
# OpenAI counts a speech's text in tokens; MACP meters characters and seconds. The SSE `usage` has
# OpenAI's keys, estimated at four characters a token in and twenty audio tokens a second out, and
# MACP's measured `audio_seconds` and `characters` beside them.
CHARACTERS_PER_TOKEN = 4
AUDIO_TOKENS_PER_SECOND = 20


def _data(document: Mapping[str, Any]) -> bytes:
    return f"data: {json.dumps(document, separators=(',', ':'), ensure_ascii=False)}\n\n".encode()


def _model(value: object) -> str:
    if not isinstance(value, str) or not value:
        raise bad_param("model", "required: the id of the agent whose voice speaks")
    if not is_model_id(value):
        raise model_not_found(value)
    return value


def _voice_name(value: object) -> str:
    """The request's `voice`: a name, or OpenAI's `{"id": ...}` of a custom voice."""
    if isinstance(value, Mapping):
        value = value.get("id")
    if not isinstance(value, str) or not value or len(value) > 64:
        raise bad_param("voice", 'required: a voice name (for example alloy), or {"id": <voice>}')
    if not all(c.isalnum() or c in "._-" for c in value) or not value[0].isalnum():
        raise bad_param("voice", "a voice name is letters, digits and . _ -")
    return value


def _format(value: object) -> audio_pb2.AudioFormat.ValueType:
    if value in OPENAI_ONLY_FORMATS:
        raise bad_param("response_format", f"{value} is not served here; use wav or pcm")
    if value not in FORMATS:
        raise bad_param("response_format", "must be wav or pcm")
    return FORMATS[value]


def _speed(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0.25 <= value <= 4:
        raise bad_param("speed", "must be a number from 0.25 to 4")
    return float(value)


def speak_request(document: Mapping[str, Any]) -> tuple[pb.SpeakRequest, bool]:
    """(the SpeakRequest, SSE?) of a `/v1/audio/speech` body, refused naming the parameter."""
    for name in document:
        if name not in SPEECH_FIELDS:
            raise bad_param(name, "not supported by this endpoint")
    text = document.get("input")
    if not isinstance(text, str) or not text:
        raise bad_param("input", "required: the text to speak")
    if len(text) > MAX_INPUT_CHARACTERS:
        raise bad_param("input", f"at most {MAX_INPUT_CHARACTERS} characters")
    if "\x00" in text:
        raise bad_param("input", "must not contain NUL (U+0000)")
    instructions = document.get("instructions", "")
    if not isinstance(instructions, str) or len(instructions) > MAX_INPUT_CHARACTERS:
        raise bad_param("instructions", f"a text of at most {MAX_INPUT_CHARACTERS} characters")
    if "\x00" in instructions:
        raise bad_param("instructions", "must not contain NUL (U+0000)")
    stream_format = document.get("stream_format", "audio")
    if stream_format not in ("audio", "sse"):
        raise bad_param("stream_format", "must be audio or sse")
    request = pb.SpeakRequest(request_id=str(uuid.uuid4()), agent_id=_model(document.get("model")), text=text)
    # The agent's own voice wins (docs/voice.md): the request's fills in for an agent without one.
    request.voice.voice = _voice_name(document.get("voice"))
    if "response_format" in document:
        request.voice.format = _format(document["response_format"])
    if "speed" in document:
        request.voice.speed = _speed(document["speed"])
    return request, stream_format == "sse"


async def speech(request: Request) -> Response:
    edge = edge_context(request)
    try:
        document = await read_json_object(request, edge.settings.max_body_bytes)
        speak, sse = speak_request(document)
        call: SpeakCall = edge.orchestrator.Speak(speak, timeout=edge.settings.completion_timeout_seconds)
        first = await call.read()
    except BaseException as exc:
        error = openai_error(exc)
        if error is None:
            raise
        return error.response()
    if first is grpc.aio.EOF:
        return OpenAIError(HTTPStatus.BAD_GATEWAY, "the speech ended before it began").response()
    assert isinstance(first, pb.SpeakResponse)
    if sse:
        return StreamingResponse(
            _speech_events(speak, first, call), media_type="text/event-stream", headers=SSE_HEADERS
        )
    # The format is known before the first byte: the request's, else the agent's (WAV unless set).
    media_type = MEDIA_TYPES.get(speak.voice.format, "audio/wav")
    if first.HasField("audio") and first.audio.data[:4] != b"RIFF":
        media_type = "audio/pcm"
    return StreamingResponse(_speech_bytes(first, call), media_type=media_type)


async def _speech_responses(first: pb.SpeakResponse, call: SpeakCall) -> AsyncIterator[pb.SpeakResponse]:
    """Every response of the Speak stream from `first`, the caller's leaving cancelling the call."""
    try:
        response: object = first
        while response is not grpc.aio.EOF:
            assert isinstance(response, pb.SpeakResponse)
            yield response
            response = await call.read()
    finally:
        call.cancel()


async def _speech_bytes(first: pb.SpeakResponse, call: SpeakCall) -> AsyncIterator[bytes]:
    """The audio itself. A failure after the first byte can only cut the body short: the server
    then ends the response without its last chunk, which every HTTP client reports."""
    async for response in _speech_responses(first, call):
        if response.HasField("audio"):
            yield response.audio.data


def _speech_usage(text: str, completion: audio_pb2.SpeechCompletion) -> dict[str, Any]:
    seconds = completion.usage.audio_seconds
    input_tokens = math.ceil(len(text) / CHARACTERS_PER_TOKEN)
    output_tokens = math.ceil(seconds * AUDIO_TOKENS_PER_SECOND)
    return {
        "input_tokens": input_tokens,
        "output_tokens": output_tokens,
        "total_tokens": input_tokens + output_tokens,
        "audio_seconds": seconds,
        "characters": completion.usage.characters,
    }


async def _speech_events(
    speak: pb.SpeakRequest, first: pb.SpeakResponse, call: SpeakCall
) -> AsyncIterator[bytes]:
    try:
        async for response in _speech_responses(first, call):
            if response.HasField("audio"):
                audio = base64.b64encode(response.audio.data).decode()
                yield _data({"type": "speech.audio.delta", "audio": audio})
            else:
                usage = _speech_usage(speak.text, response.completion)
                yield _data({"type": "speech.audio.done", "usage": usage})
    except grpc.aio.AioRpcError as exc:
        yield _data({"type": "error", **from_rpc(exc).document()})


async def _form(request: Request, max_audio_bytes: int) -> tuple[dict[str, str], UploadFile]:
    """The multipart form of a transcription: its text fields and its one `file`, bounded."""
    content_type = request.headers.get("content-type", "")
    if content_type.split(";")[0].strip().lower() != "multipart/form-data":
        raise HttpError(
            HTTPStatus.UNSUPPORTED_MEDIA_TYPE,
            "UNSUPPORTED_MEDIA_TYPE",
            "send the body as multipart/form-data",
        )
    body = await read_body(request, max_audio_bytes + FORM_OVERHEAD_BYTES)
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    try:
        form = await Request(request.scope, replay).form(max_files=1, max_fields=16)
    except HttpError:
        raise
    except Exception as exc:  # Starlette's parser: a malformed form, too many parts
        raise bad_param("file", f"the multipart form cannot be read: {exc}") from None
    fields: dict[str, str] = {}
    upload: UploadFile | None = None
    for name, value in form.multi_items():
        if name not in TRANSCRIPTION_FIELDS:
            raise bad_param(name, "not supported by this endpoint")
        if isinstance(value, UploadFile):
            if name != "file":
                raise bad_param(name, "a text field, not a file")
            upload = value
        else:
            fields[name] = value
    if upload is None:
        raise bad_param("file", "required: the audio, as a WAV file")
    return fields, upload


async def transcribe_request(
    request: Request, max_audio_bytes: int
) -> tuple[pb.TranscribeRequest, str, bool]:
    """(the TranscribeRequest, the response format, stream?) of a transcription form."""
    fields, upload = await _form(request, max_audio_bytes)
    audio = await upload.read()
    if len(audio) > max_audio_bytes:
        raise OpenAIError(
            HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
            f"file: at most {max_audio_bytes} bytes of audio",
            param="file",
            code="file_too_large",
        )
    try:
        _header, samples = read_wav(audio)
    except ValueError as exc:
        raise bad_param("file", str(exc).removeprefix("audio: ")) from None
    if not samples:
        raise bad_param("file", "the audio holds no samples: an empty utterance")
    response_format = fields.get("response_format", "json")
    if response_format not in TRANSCRIPT_FORMATS:
        raise bad_param("response_format", f"must be one of {', '.join(TRANSCRIPT_FORMATS)}")
    stream = fields.get("stream", "false")
    if stream not in ("true", "false"):
        raise bad_param("stream", "must be true or false")
    language = fields.get("language", "")
    if language and not re.fullmatch("[a-z]{2}", language):
        raise bad_param("language", "an ISO 639-1 code, such as en")
    transcribe = pb.TranscribeRequest(
        request_id=str(uuid.uuid4()),
        agent_id=_model(fields.get("model")),
        audio=audio,
        format=audio_pb2.AUDIO_FORMAT_WAV,
        language=language,
    )
    return transcribe, response_format, stream == "true"


async def transcriptions(request: Request) -> Response:
    edge = edge_context(request)
    try:
        transcribe, response_format, stream = await transcribe_request(request, edge.settings.max_audio_bytes)
        call: TranscribeCall = edge.orchestrator.Transcribe(
            transcribe, timeout=edge.settings.completion_timeout_seconds
        )
        first = await call.read()
        if stream:
            return StreamingResponse(
                _transcript_events(first, call), media_type="text/event-stream", headers=SSE_HEADERS
            )
        completion = await _transcription_end(first, call)
    except BaseException as exc:
        error = openai_error(exc)
        if error is None:
            raise
        return error.response()
    usage = {"type": "duration", "seconds": completion.usage.audio_seconds}
    if response_format == "text":
        return PlainTextResponse(completion.text)
    if response_format == "verbose_json":
        return JSONResponse(
            {
                "task": "transcribe",
                "language": transcribe.language or "unknown",
                "duration": completion.usage.audio_seconds,
                "text": completion.text,
                "segments": [],
                "usage": usage,
            }
        )
    return JSONResponse({"text": completion.text, "usage": usage})


async def _transcription_end(first: object, call: TranscribeCall) -> audio_pb2.TranscriptionCompletion:
    response = first
    try:
        while response is not grpc.aio.EOF:
            assert isinstance(response, pb.TranscribeResponse)
            if response.HasField("completion"):
                return response.completion
            response = await call.read()
    finally:
        call.cancel()
    raise OpenAIError(HTTPStatus.BAD_GATEWAY, "the transcription ended without its end", code="incomplete")


async def _transcript_events(first: object, call: TranscribeCall) -> AsyncIterator[bytes]:
    response = first
    try:
        while response is not grpc.aio.EOF:
            assert isinstance(response, pb.TranscribeResponse)
            if response.HasField("delta"):
                yield _data({"type": "transcript.text.delta", "delta": response.delta.text})
            else:
                completion = response.completion
                usage = {"type": "duration", "seconds": completion.usage.audio_seconds}
                yield _data({"type": "transcript.text.done", "text": completion.text, "usage": usage})
            response = await call.read()
    except grpc.aio.AioRpcError as exc:
        yield _data({"type": "error", **from_rpc(exc).document()})
    finally:
        call.cancel()


SPEECH_REQUEST_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["model", "input", "voice"],
    "properties": {
        "model": {
            "type": "string",
            "format": "uuid",
            "description": "The id of the agent whose voice speaks",
        },
        "input": {"type": "string", "minLength": 1, "maxLength": MAX_INPUT_CHARACTERS},
        "voice": {
            "oneOf": [
                {"type": "string", "maxLength": 64},
                {
                    "type": "object",
                    "required": ["id"],
                    "properties": {"id": {"type": "string", "maxLength": 64}},
                },
            ],
            "description": "Used when the agent has no voice of its own",
        },
        "response_format": {"type": "string", "enum": list(FORMATS)},
        "speed": {"type": "number", "minimum": 0.25, "maximum": 4},
        "stream_format": {"type": "string", "enum": ["audio", "sse"]},
        "instructions": {
            "type": "string",
            "maxLength": MAX_INPUT_CHARACTERS,
            "description": "Accepted and ignored",
        },
    },
    "additionalProperties": False,
}
SPEECH_RESPONSE_SCHEMA: dict[str, Any] = {"type": "string", "format": "binary"}
TRANSCRIPTION_REQUEST_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["file", "model"],
    "properties": {
        "file": {"type": "string", "format": "binary", "description": "A WAV file: 16-bit PCM, 8 to 48 kHz"},
        "model": {"type": "string", "format": "uuid", "description": "The id of the agent addressed"},
        "language": {"type": "string", "pattern": "^[a-z]{2}$"},
        "prompt": {"type": "string", "description": "Accepted and ignored"},
        "response_format": {"type": "string", "enum": list(TRANSCRIPT_FORMATS)},
        "stream": {"type": "boolean"},
        "temperature": {"type": "number", "description": "Accepted and ignored"},
    },
}
TRANSCRIPTION_RESPONSE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["text"],
    "properties": {
        "text": {"type": "string"},
        "usage": {
            "type": "object",
            "properties": {"type": {"type": "string", "enum": ["duration"]}, "seconds": {"type": "number"}},
        },
    },
}

ROUTES = [
    ApiRoute(
        method="POST",
        path="/v1/audio/speech",
        operation_id="createSpeech",
        summary=(
            "OpenAI-compatible speech: the agent named by `model` speaks `input` in its voice, "
            "streamed as WAV or PCM audio (stream_format: sse answers speech.audio.delta events); "
            "metered in voice seconds"
        ),
        handler=speech,
        body=Content(name="SpeechRequest", schema=SPEECH_REQUEST_SCHEMA),
        response=Content(name="SpeechAudio", schema=SPEECH_RESPONSE_SCHEMA, media_type="audio/wav"),
        errors=(400, 401, 403, 404, 413, 415, 429, 503),
        error=Content(name="OpenAIError", schema=OPENAI_ERROR_SCHEMA),
        tags=("openai",),
    ),
    ApiRoute(
        method="POST",
        path="/v1/audio/transcriptions",
        operation_id="createTranscription",
        summary=(
            "OpenAI-compatible transcription of a WAV file for the agent named by `model` (stream: "
            "true answers transcript.text.delta events); metered in voice seconds"
        ),
        handler=transcriptions,
        body=Content(
            name="TranscriptionRequest", schema=TRANSCRIPTION_REQUEST_SCHEMA, media_type="multipart/form-data"
        ),
        response=Content(name="Transcription", schema=TRANSCRIPTION_RESPONSE_SCHEMA),
        errors=(400, 401, 403, 404, 413, 415, 429, 503),
        error=Content(name="OpenAIError", schema=OPENAI_ERROR_SCHEMA),
        tags=("openai",),
    ),
]
