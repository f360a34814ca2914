"""OpenAI's audio API through the official `openai` SDK: speech from text, a transcript from speech;
which providers speak it, their default models, and each call's candidates.

A provider speaks the audio API when its protocol is `openai` (OpenAI, vLLM, ... with audio
models configured) or it is the local provider server, whichever protocol it chats in
(settings.py). Every such provider gets an `AsyncOpenAI` client of its own at its audio base URL,
without the SDK's retries (the fallback walk retries, fallback.py). Its (provider, model) breakers
are the chat models' registry's (`Providers.breaker`), so ListProviders shows them too.

As a chat adapter's `stream()`, each call is an async generator: `Started` once the provider took
the call, then its output as it arrives (bytes of audio; transcript deltas, then one `Transcribed`
with the whole text), and every failure a `ProviderFailure` whose message never holds a key.
Closing the generator early closes the HTTP response.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import Literal

import openai

from services.agent_proxy.provider import ProviderFailure, Started, as_failure, redacted
from services.agent_proxy.providers import Providers
from services.agent_proxy.settings import ProviderConfig, ProxySettings
from services.runtime.breaker import CircuitBreaker
from services.runtime.errors import FailedPrecondition, InvalidArgument

Kind = Literal["speech", "transcription"]
AudioFormat = Literal["wav", "pcm"]
# The request field that names each kind's model, for errors.
MODEL_FIELDS: dict[Kind, str] = {"speech": "voice.speech_model", "transcription": "voice.transcription_model"}


@dataclass(frozen=True)
class SpeechAsk:
    """What a speech call asks for, whichever candidate makes it."""

    text: str
    voice: str
    format: AudioFormat
    speed: float


@dataclass(frozen=True)
class Transcribed:
    """The provider's end of a transcript, with the whole text as it says it."""

    text: str


class AudioProvider:
    def __init__(self, config: ProviderConfig) -> None:
        self.config = config
        self._client = openai.AsyncOpenAI(
            api_key=config.api_key.reveal() if config.api_key else "none",
            base_url=config.audio_base_url,
            max_retries=0,
        )

    def models(self, kind: Kind) -> tuple[str, ...]:
        return self.config.speech_models if kind == "speech" else self.config.transcription_models

    async def close(self) -> None:
        await self._client.close()

    async def speak(self, model: str, ask: SpeechAsk, read_timeout: float) -> AsyncGenerator[Started | bytes]:
        """The audio as the provider sends it, in the pieces the network delivers."""
        try:
            opened = self._client.audio.speech.with_streaming_response.create(
                model=model,
                input=ask.text,
                voice=ask.voice,
                response_format=ask.format,
                speed=ask.speed,
                timeout=read_timeout,
            )
            response = await opened.__aenter__()
        except Exception as exc:
            raise as_failure(exc, self.config) from None
        try:
            yield Started(request_id=response.headers.get("x-request-id", ""), input_tokens=None)
            async for piece in response.iter_bytes():
                if piece:
                    yield piece
        except Exception as exc:
            raise as_failure(exc, self.config) from None
        finally:
            await opened.__aexit__(None, None, None)

    async def transcribe(
        self, model: str, wav: bytes, language: str, read_timeout: float
    ) -> AsyncGenerator[Started | str | Transcribed]:
        """The transcript's deltas as the provider hears them, then its whole text."""
        try:
            stream = await self._client.audio.transcriptions.create(
                file=("speech.wav", wav, "audio/wav"),
                model=model,
                stream=True,
                language=language or openai.omit,
                timeout=read_timeout,
            )
        except Exception as exc:
            raise as_failure(exc, self.config) from None
        try:
            yield Started(request_id=stream.response.headers.get("x-request-id", ""), input_tokens=None)
            async for event in stream:
                if event.type == "transcript.text.delta" and event.delta:
                    yield event.delta
                elif event.type == "transcript.text.done":
                    yield Transcribed(event.text)
                    return
        except openai.APIError as exc:
            if not isinstance(exc, openai.APIStatusError | openai.APIConnectionError):
                # An error event mid-stream (the SDK raises the bare APIError): worth another try,
                # as compatible servers send them for overload and internal failures alike.
                message = redacted(exc.message, self._keys())[:300]
                raise ProviderFailure(
                    f"{self.config.name} sent an error mid-transcript: {message}", retryable=True
                ) from None
            raise as_failure(exc, self.config) from None
        except Exception as exc:
            raise as_failure(exc, self.config) from None
        finally:
            await stream.close()
        raise ProviderFailure(
            f"{self.config.name} ended the transcript without its end event", retryable=True
        )

    def _keys(self) -> list[str]:
        return [self.config.api_key.reveal()] if self.config.api_key is not None else []


@dataclass(frozen=True)
class AudioTarget:
    """A candidate of a speech or transcription call (fallback.py's Candidate)."""

    provider: AudioProvider
    model: str
    breaker: CircuitBreaker

    @property
    def name(self) -> str:
        return f"{self.provider.config.name}/{self.model}"


class AudioProviders:
    """The providers that speak the audio API, in the configured order (the fallback order)."""

    def __init__(self, settings: ProxySettings, providers: Providers) -> None:
        self._providers = {c.name: AudioProvider(c) for c in settings.providers if c.speaks_audio}
        self._configured = [c.name for c in settings.providers]
        self._breakers = providers

    def resolve(self, kind: Kind, provider: str, model: str) -> tuple[str, str]:
        """The (provider, model) a call asked for, its unset parts filled with the defaults: the
        first provider offering models of the kind (or else the first that speaks audio at all, for
        a call naming its model), and that provider's first model of the kind."""
        if provider:
            found = self._providers.get(provider)
            if found is None:
                speaking = ", ".join(self._providers) or "none"
                why = (
                    "is not configured here"
                    if provider not in self._configured
                    else "does not speak OpenAI's audio API"
                )
                raise InvalidArgument(
                    f"voice.provider: {provider!r} {why}; providers of {kind} here: {speaking}"
                )
        else:
            offering = [p for p in self._providers.values() if p.models(kind)]
            found = next(iter(offering or self._providers.values()), None)
            if found is None:
                raise FailedPrecondition(
                    f"voice.provider: no provider of {kind} is configured here (one whose protocol is "
                    "openai, with its audio models set, or the local provider server)"
                )
        if not model:
            defaults = found.models(kind)
            if not defaults:
                raise InvalidArgument(
                    f"{MODEL_FIELDS[kind]}: {found.config.name} has no default {kind} model; name one"
                )
            model = defaults[0]
        return found.config.name, model

    def candidates(self, kind: Kind, provider: str, model: str) -> list[AudioTarget]:
        """The requested pair first, then every other configured pair of the same kind."""
        pairs = [(provider, model)]
        pairs += [
            (p.config.name, m)
            for p in self._providers.values()
            for m in p.models(kind)
            if (p.config.name, m) != (provider, model)
        ]
        return [AudioTarget(self._providers[p], m, self._breakers.breaker(p, m)) for p, m in pairs]

    async def close(self) -> None:
        for provider in self._providers.values():
            await provider.close()
