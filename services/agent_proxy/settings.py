"""The agent proxy's settings: which providers it calls, with which keys, and how hard it guards them.

Providers (`MACP_AGENT_PROXY_PROVIDERS`, a comma-separated list; the order is the fallback order):
each name N reads

| variable | meaning |
| --- | --- |
| `MACP_PROVIDER_<N>_PROTOCOL` | `anthropic` (Messages) or `openai` (Chat Completions; Ollama, vLLM, ...) |
| `MACP_PROVIDER_<N>_BASE_URL` | the API's base URL; unset: the SDK's own (api.anthropic.com, ...) |
| `MACP_PROVIDER_<N>_API_KEY` | the key; never logged, never in an error |
| `MACP_PROVIDER_<N>_MODELS` | the models offered, comma-separated (ListProviders and fallbacks) |
| `MACP_PROVIDER_<N>_SPEECH_MODELS` | the speech models (Synthesize), comma-separated, the default first |
| `MACP_PROVIDER_<N>_TRANSCRIPTION_MODELS` | the transcription models (Transcribe), likewise |

Unset, the list is `anthropic` and/or `openai` for each whose key is set, or else `local`: the local
provider server (services/provider_server) that `macp up` starts when no key is configured.

Speech and transcription go through OpenAI's audio API (`/v1/audio/*`), which a provider speaks
when its protocol is `openai`, and the local provider server whatever its protocol. Unset, the
audio models are `gpt-4o-mini-tts` and `gpt-4o-transcribe` for `openai`, `speech-1` and
`transcribe-1` for `local`, and none for other servers (an Ollama serves no speech): setting them
for a provider that does not speak the audio API is an error.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from services.runtime.a2a_remote_sealing import a2a_sealing_key
from services.runtime.registry import PROVIDER_SERVER
from services.runtime.settings import Env, SettingsError

Protocol = Literal["anthropic", "openai"]
PROTOCOLS: tuple[Protocol, ...] = ("anthropic", "openai")
LOCAL = "local"
# The providers that need a key, and the model each offers when MACP_PROVIDER_<N>_MODELS is unset.
KEYED_DEFAULT_MODELS = {
    "anthropic": ("claude-sonnet-4-5", "claude-haiku-4-5"),
    "openai": ("gpt-4o", "gpt-4o-mini"),
}
LOCAL_MODELS = ("echo-1", "echo-2")
# The audio models (speech, transcription) when MACP_PROVIDER_<N>_SPEECH_MODELS / _TRANSCRIPTION_MODELS
# are unset; a provider not named here offers none until told.
DEFAULT_SPEECH_MODELS: dict[str, tuple[str, ...]] = {"openai": ("gpt-4o-mini-tts",), LOCAL: ("speech-1",)}
DEFAULT_TRANSCRIPTION_MODELS: dict[str, tuple[str, ...]] = {
    "openai": ("gpt-4o-transcribe",),
    LOCAL: ("transcribe-1",),
}
# Spelled out for the keyed providers and the local one: deployments (compose) set these by name.
KEY_VARIABLES = {"anthropic": "MACP_PROVIDER_ANTHROPIC_API_KEY", "openai": "MACP_PROVIDER_OPENAI_API_KEY"}
LOCAL_BASE_URL_VARIABLE = "MACP_PROVIDER_LOCAL_BASE_URL"


class Secret:
    """A credential: usable through `reveal()`, printed as `***` everywhere else (logs, reprs, errors)."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__


def provider_variable(name: str, field: str) -> str:
    variable = f"MACP_PROVIDER_{name.upper().replace('-', '_')}_{field}"
    assert field != "API_KEY" or name not in KEY_VARIABLES or variable == KEY_VARIABLES[name]
    assert name != LOCAL or field != "BASE_URL" or variable == LOCAL_BASE_URL_VARIABLE
    return variable


def local_provider_url(env: Env) -> str:
    """Where the local provider server listens (the `macp up` default, or MACP_PROVIDER_SERVER_PORT)."""
    port = env.port("MACP_PROVIDER_SERVER_PORT", PROVIDER_SERVER.port)
    return f"http://127.0.0.1:{port}"


def keyed_providers(env: Env) -> list[str]:
    """The keyed providers whose key is set: with none, the stack needs the local provider server."""
    return [name for name, variable in KEY_VARIABLES.items() if env.raw(variable)]


def configured_provider_names(env: Env) -> list[str]:
    raw = env.raw("MACP_AGENT_PROXY_PROVIDERS")
    if raw is None:
        return keyed_providers(env) or [LOCAL]
    names = [name.strip().lower() for name in raw.split(",") if name.strip()]
    for name in names:
        if not name.replace("-", "").replace("_", "").isalnum() or not name[0].isalpha():
            raise SettingsError(
                f"MACP_AGENT_PROXY_PROVIDERS={raw!r} is malformed ({name!r} is not a provider name); "
                "set it to names such as anthropic,openai,local"
            )
    if not names or len(set(names)) != len(names):
        raise SettingsError(
            f"MACP_AGENT_PROXY_PROVIDERS={raw!r} is malformed (empty or repeated names); "
            "set it to names such as anthropic,openai,local"
        )
    return names


def local_provider_needed(env: Env) -> bool:
    """True when the agent proxy will call the local provider server, which `macp up` then starts."""
    return LOCAL in configured_provider_names(env)


@dataclass(frozen=True)
class ProviderConfig:
    name: str
    protocol: Protocol
    base_url: str | None
    api_key: Secret | None
    models: tuple[str, ...]
    # OpenAI's audio API (speech.py): the speech and transcription models, each kind's default first.
    speech_models: tuple[str, ...] = ()
    transcription_models: tuple[str, ...] = ()

    @property
    def local(self) -> bool:
        return self.name == LOCAL

    @property
    def speaks_audio(self) -> bool:
        """Whether it serves OpenAI's audio API: the local provider server does whatever its protocol."""
        return self.protocol == "openai" or self.local

    @property
    def audio_base_url(self) -> str | None:
        """The base URL of its audio API: the local server's, when it speaks the Anthropic protocol
        to chat, has no `/v1`, which OpenAI's SDK expects in a base URL."""
        if self.protocol == "anthropic" and self.base_url is not None:
            return self.base_url.rstrip("/") + "/v1"
        return self.base_url

    @property
    def configured(self) -> bool:
        """Ready to call: Anthropic and OpenAI need their key; local and self-hosted servers may not."""
        return self.api_key is not None or self.name not in KEY_VARIABLES

    @classmethod
    def from_env(cls, env: Env, name: str) -> ProviderConfig:
        default_protocol = "openai" if name == "openai" else "anthropic"
        if name not in (LOCAL, *KEYED_DEFAULT_MODELS):
            default_protocol = "openai"  # other names are OpenAI-compatible servers unless told otherwise
        protocol = env.choice(provider_variable(name, "PROTOCOL"), default_protocol, PROTOCOLS)
        base_url = env.url(
            provider_variable(name, "BASE_URL"), ("http", "https"), "http://127.0.0.1:11434/v1"
        )
        if name == LOCAL and base_url is None:
            base_url = local_provider_url(env)
            if protocol == "openai":
                base_url += "/v1"
        key = env.raw(provider_variable(name, "API_KEY"))
        if key is None and name == LOCAL:
            key = "local"  # the local server wants a key to be sent, any key
        models = _names(env, provider_variable(name, "MODELS"))
        if not models:
            models = LOCAL_MODELS if name == LOCAL else KEYED_DEFAULT_MODELS.get(name, ())
        if not models:
            raise SettingsError(
                f"{provider_variable(name, 'MODELS')} is not set; set it to the models {name} offers, "
                "comma-separated"
            )
        if base_url is None and name not in KEYED_DEFAULT_MODELS:
            raise SettingsError(
                f"{provider_variable(name, 'BASE_URL')} is not set; set it to the API's URL, "
                "such as http://127.0.0.1:11434/v1"
            )
        speech_models = _audio_models(env, name, protocol, "SPEECH_MODELS", DEFAULT_SPEECH_MODELS)
        transcription_models = _audio_models(
            env, name, protocol, "TRANSCRIPTION_MODELS", DEFAULT_TRANSCRIPTION_MODELS
        )
        return cls(
            name=name,
            protocol=protocol,  # type: ignore[arg-type]
            base_url=base_url,
            api_key=Secret(key) if key is not None else None,
            models=models,
            speech_models=speech_models,
            transcription_models=transcription_models,
        )


def _names(env: Env, variable: str) -> tuple[str, ...]:
    raw = env.raw(variable)
    return tuple(m.strip() for m in raw.split(",") if m.strip()) if raw else ()


def _audio_models(
    env: Env, name: str, protocol: str, field: str, defaults: dict[str, tuple[str, ...]]
) -> tuple[str, ...]:
    variable = provider_variable(name, field)
    models = _names(env, variable)
    if protocol != "openai" and name != LOCAL:
        if models:
            raise SettingsError(
                f"{variable} is set, but {name} speaks the {protocol} protocol, which has no audio API; "
                f"unset it, or set {provider_variable(name, 'PROTOCOL')}=openai"
            )
        return ()
    return models or defaults.get(name, ())


@dataclass(frozen=True)
class ProxySettings:
    providers: tuple[ProviderConfig, ...]
    max_concurrency: int
    queue_limit: int
    tenant_queue_limit: int
    call_timeout_seconds: float
    breaker_failures: int
    breaker_open_seconds: float
    retries: int
    retry_base_seconds: float
    default_max_tokens: int
    # Outside A2A agents (remote_agents.py): the most one answer may take, how long a fetched
    # agent card is used, and the key their client secrets are sealed under (MACP_A2A_SEALING_KEY).
    a2a_timeout_seconds: float = 120.0
    a2a_card_seconds: float = 300.0
    a2a_sealing_key: bytes | None = field(default=None, repr=False)
    # The proxy's own client at the token service (exchanges for outside A2A agents, and the
    # caller's token for the conversation service); registered on first use when none is set.
    client_id: str | None = None
    client_secret: str | None = None
    initial_access_token: str | None = None

    @classmethod
    def from_env(cls, env: Env) -> ProxySettings:
        return cls(
            providers=tuple(ProviderConfig.from_env(env, name) for name in configured_provider_names(env)),
            max_concurrency=env.integer("MACP_AGENT_PROXY_MAX_CONCURRENCY", 64, minimum=1, maximum=10_000),
            queue_limit=env.integer("MACP_AGENT_PROXY_QUEUE_LIMIT", 1000, minimum=0, maximum=1_000_000),
            tenant_queue_limit=env.integer(
                "MACP_AGENT_PROXY_TENANT_QUEUE_LIMIT", 250, minimum=1, maximum=1_000_000
            ),
            call_timeout_seconds=env.number("MACP_AGENT_PROXY_CALL_TIMEOUT_SECONDS", 30.0, minimum=0.1),
            breaker_failures=env.integer("MACP_AGENT_PROXY_BREAKER_FAILURES", 5, minimum=1, maximum=1000),
            breaker_open_seconds=env.number("MACP_AGENT_PROXY_BREAKER_OPEN_SECONDS", 60.0, minimum=0.01),
            retries=env.integer("MACP_AGENT_PROXY_RETRIES", 2, minimum=0, maximum=10),
            retry_base_seconds=env.number("MACP_AGENT_PROXY_RETRY_BASE_SECONDS", 0.2, minimum=0.0),
            default_max_tokens=env.integer(
                "MACP_AGENT_PROXY_DEFAULT_MAX_TOKENS", 1024, minimum=1, maximum=200_000
            ),
            a2a_timeout_seconds=env.number("MACP_AGENT_PROXY_A2A_TIMEOUT_SECONDS", 120.0, minimum=0.1),
            a2a_card_seconds=env.number("MACP_AGENT_PROXY_A2A_CARD_SECONDS", 300.0, minimum=0.0),
            a2a_sealing_key=a2a_sealing_key(env),
            client_id=env.optional_string("MACP_AGENT_PROXY_CLIENT_ID"),
            client_secret=env.optional_string("MACP_AGENT_PROXY_CLIENT_SECRET"),
            initial_access_token=env.optional_string("MACP_TOKEN_INITIAL_ACCESS_TOKEN"),
        )

    def provider(self, name: str) -> ProviderConfig | None:
        return next((p for p in self.providers if p.name == name), None)
