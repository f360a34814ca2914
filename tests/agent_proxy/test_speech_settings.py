"""The audio models each provider offers, and where its audio API is, from the environment."""

from __future__ import annotations

import pytest

from services.agent_proxy.settings import ProxySettings
from services.runtime.settings import Env, SettingsError


def settings(environ: dict[str, str]) -> ProxySettings:
    return ProxySettings.from_env(Env(environ))


def test_openai_and_local_speak_with_their_default_models_and_a_chat_only_server_does_not() -> None:
    found = settings(
        {
            "MACP_AGENT_PROXY_PROVIDERS": "anthropic,openai,local,ollama",
            "MACP_PROVIDER_ANTHROPIC_API_KEY": "sk-ant",
            "MACP_PROVIDER_OPENAI_API_KEY": "sk-oai",
            "MACP_PROVIDER_OLLAMA_BASE_URL": "http://127.0.0.1:11434/v1",
            "MACP_PROVIDER_OLLAMA_MODELS": "llama3",
        }
    )
    audio = {p.name: (p.speaks_audio, p.speech_models, p.transcription_models) for p in found.providers}
    assert audio == {
        "anthropic": (False, (), ()),
        "openai": (True, ("gpt-4o-mini-tts",), ("gpt-4o-transcribe",)),
        "local": (True, ("speech-1",), ("transcribe-1",)),
        "ollama": (True, (), ()),  # OpenAI-compatible: it may speak, but offers nothing until told
    }


def test_audio_models_are_set_per_provider_with_the_default_first() -> None:
    found = settings(
        {
            "MACP_AGENT_PROXY_PROVIDERS": "vllm,local",
            "MACP_PROVIDER_VLLM_BASE_URL": "http://127.0.0.1:8000/v1",
            "MACP_PROVIDER_VLLM_MODELS": "qwen",
            "MACP_PROVIDER_VLLM_SPEECH_MODELS": " kokoro , piper,",
            "MACP_PROVIDER_VLLM_TRANSCRIPTION_MODELS": "whisper-large-v3",
            "MACP_PROVIDER_LOCAL_SPEECH_MODELS": "speech-2,speech-1",
        }
    )
    vllm, local = found.providers
    assert (vllm.speech_models, vllm.transcription_models) == (("kokoro", "piper"), ("whisper-large-v3",))
    assert (local.speech_models, local.transcription_models) == (("speech-2", "speech-1"), ("transcribe-1",))


def test_the_local_server_serves_audio_under_v1_whatever_protocol_it_chats_in() -> None:
    anthropic_side = settings({"MACP_PROVIDER_LOCAL_BASE_URL": "http://127.0.0.1:9999/"}).providers[0]
    assert anthropic_side.protocol == "anthropic"
    assert anthropic_side.base_url == "http://127.0.0.1:9999/"
    assert anthropic_side.audio_base_url == "http://127.0.0.1:9999/v1"
    openai_side = settings(
        {"MACP_PROVIDER_LOCAL_PROTOCOL": "openai", "MACP_PROVIDER_SERVER_PORT": "9998"}
    ).providers[0]
    assert openai_side.audio_base_url == openai_side.base_url == "http://127.0.0.1:9998/v1"
    openai = settings({"MACP_PROVIDER_OPENAI_API_KEY": "sk-oai"}).providers[0]
    assert openai.audio_base_url is None  # the SDK's own, api.openai.com/v1


def test_audio_models_for_a_provider_without_the_audio_api_are_refused_by_name() -> None:
    with pytest.raises(SettingsError, match="MACP_PROVIDER_ANTHROPIC_SPEECH_MODELS is set, but anthropic"):
        settings(
            {
                "MACP_PROVIDER_ANTHROPIC_API_KEY": "sk-ant",
                "MACP_PROVIDER_ANTHROPIC_SPEECH_MODELS": "tts-1",
            }
        )
