"""Wiring of the token service: its registry entry, its servicer, its migrations."""

from __future__ import annotations

from pathlib import Path

import grpc
from macp.token.v1 import token_service_pb2_grpc as pb_grpc

from services.runtime.registry import service
from services.runtime.resources import Resources
from services.runtime.server import ServiceDefinition
from services.runtime.settings import Env
from services.token.domain import TokenDomain
from services.token.servicer import TokenServicer
from services.token.settings import TokenSettings


async def register(server: grpc.aio.Server, resources: Resources, env: Env) -> None:
    settings = TokenSettings.from_env(env)
    redis_settings = resources.settings.redis
    if redis_settings is None:
        raise RuntimeError("the token service declares a redis dependency in the registry")
    domain = await TokenDomain.start(
        settings, resources.require_db(), resources.require_redis(), redis_settings.key_prefix
    )
    pb_grpc.add_TokenServiceServicer_to_server(TokenServicer(domain), server)


DEFINITION = ServiceDefinition(
    spec=service("token"),
    register=register,
    migrations_dir=Path(__file__).parent / "migrations",
)
