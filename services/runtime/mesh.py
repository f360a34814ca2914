"""Client side of the mesh: one grpc.aio channel to Envoy's mesh listener, carrying the request id.

Every service-to-service call goes through Envoy (routing, retries, breakers, health), so a
caller needs one channel, not one per callee; Envoy picks the cluster from the gRPC service name.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from services.runtime.context import REQUEST_ID_HEADER, current_request_id

# Keepalive keeps long-lived streams through Envoy from being dropped as idle. Envoy is local (a
# sidecar or the compose network), so reconnecting soon after it comes up matters more than backing
# off: a process that started before Envoy would otherwise wait up to two minutes to reach it.
_CHANNEL_OPTIONS = [
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 2_000),
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.http2.max_pings_without_data", 0),
]


def _with_request_id(details: grpc.aio.ClientCallDetails) -> grpc.aio.ClientCallDetails:
    """The call's details with the request id, and waiting for the channel to be ready unless the
    caller said otherwise: Envoy is local, so a call made while the channel (re)connects to it (a
    process that started before Envoy, or an Envoy restart) waits within its deadline instead of
    failing at once. Callers on the mesh always set a deadline."""
    request_id = current_request_id()
    metadata = grpc.aio.Metadata(*(details.metadata or ()))
    if request_id is not None and metadata.get(REQUEST_ID_HEADER) is None:
        metadata.add(REQUEST_ID_HEADER, request_id)
    wait_for_ready = True if details.wait_for_ready is None else details.wait_for_ready
    return grpc.aio.ClientCallDetails(
        details.method, details.timeout, metadata, details.credentials, wait_for_ready
    )


class RequestIdUnaryUnary(grpc.aio.UnaryUnaryClientInterceptor):
    async def intercept_unary_unary(
        self,
        continuation: Callable[..., Awaitable[Any]],
        client_call_details: grpc.aio.ClientCallDetails,
        request: Any,
    ) -> Any:
        return await continuation(_with_request_id(client_call_details), request)


class RequestIdUnaryStream(grpc.aio.UnaryStreamClientInterceptor):
    async def intercept_unary_stream(
        self,
        continuation: Callable[..., Awaitable[Any]],
        client_call_details: grpc.aio.ClientCallDetails,
        request: Any,
    ) -> Any:
        return await continuation(_with_request_id(client_call_details), request)


class RequestIdStreamStream(grpc.aio.StreamStreamClientInterceptor):
    async def intercept_stream_stream(
        self,
        continuation: Callable[..., Awaitable[Any]],
        client_call_details: grpc.aio.ClientCallDetails,
        request_iterator: Any,
    ) -> Any:
        return await continuation(_with_request_id(client_call_details), request_iterator)


def open_mesh_channel(mesh_address: str) -> grpc.aio.Channel:
    """A channel to Envoy's mesh listener (plaintext h2c on loopback or the compose network)."""
    return grpc.aio.insecure_channel(
        mesh_address,
        options=_CHANNEL_OPTIONS,
        interceptors=[RequestIdUnaryUnary(), RequestIdUnaryStream(), RequestIdStreamStream()],
    )
