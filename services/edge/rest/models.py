"""OpenAI-compatible `GET /v1/models` and `GET /v1/models/{id}`: the caller's tenant's agents as
OpenAI model objects, so that the SDKs' `models.list()` and `models.retrieve()`, and every tool
that lists models before it talks, find what `/v1/chat/completions` takes as `model`: an agent's
id (openai_shapes.py).

A model is `{"id", "object": "model", "created", "owned_by"}`: the agent's id, its creation time
in Unix seconds, and its tenant (the organisation that owns it, in OpenAI's terms); `name`, the
agent's display name, is added for the tools that show one. The list is OpenAI's, unpaged: every
agent of the caller's tenant, oldest first, read from the conversation service a page at a time.
Errors are OpenAI's shape (openai_errors.py); an id that is none of the tenant's agents, or no
agent id at all, is 404 `model_not_found`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from macp.conversation.v1 import conversation_service_pb2 as pb
from starlette.requests import Request
from starlette.responses import Response

from services.edge.context import edge_context
from services.edge.errors import FastJSONResponse
from services.edge.rest.cached_reads import cached
from services.edge.rest.conventions import query
from services.edge.rest.openai_errors import OPENAI_ERROR_SCHEMA, model_not_found, openai_error
from services.edge.rest.openai_shapes import is_model_id
from services.edge.routes import ApiRoute, Content
from services.runtime import resource_cache

# Agents read per call while listing: the conversation service's largest page.
LIST_PAGE_SIZE = 1000

Handler = Callable[[Request], Awaitable[Response]]


def model_document(agent: pb.Agent) -> dict[str, Any]:
    return {
        "id": agent.id,
        "object": "model",
        "created": agent.create_time.seconds,
        "owned_by": agent.tenant_id,
        "name": agent.name,
    }


def _in_openai_shape(handler: Handler) -> Handler:
    """`handler` with each refusal it meets answered in OpenAI's shape."""

    async def answered(request: Request) -> Response:
        try:
            return await handler(request)
        except Exception as exc:
            error = openai_error(exc)
            if error is None:
                raise
            return error.response()

    return answered


@_in_openai_shape
async def list_models(request: Request) -> Response:
    query(request, ())
    edge = edge_context(request)
    models: list[dict[str, Any]] = []
    page_token = ""
    while True:
        reply: pb.ListAgentsResponse = await edge.conversation.ListAgents(
            pb.ListAgentsRequest(page_size=LIST_PAGE_SIZE, page_token=page_token), timeout=edge.timeout
        )
        models.extend(model_document(agent) for agent in reply.agents)
        page_token = reply.next_page_token
        if not page_token:
            return FastJSONResponse({"object": "list", "data": models})


@_in_openai_shape
async def get_model(request: Request) -> Response:
    query(request, ())
    model = request.path_params["id"]
    if not is_model_id(model):
        raise model_not_found(model)
    edge = edge_context(request)
    agent = await cached(edge, resource_cache.AGENT, model, pb.Agent.FromString)
    if agent is None:
        try:
            reply: pb.GetAgentResponse = await edge.conversation.GetAgent(
                pb.GetAgentRequest(id=model), timeout=edge.timeout
            )
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND:  # none of the tenant's agents
                raise model_not_found(model) from None
            raise
        agent = reply.agent
    return FastJSONResponse(model_document(agent))


MODEL_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["id", "object", "created", "owned_by"],
    "properties": {
        "id": {"type": "string", "description": "the agent's id: the `model` of a chat completion"},
        "object": {"const": "model"},
        "created": {"type": "integer", "description": "when the agent was created, in Unix seconds"},
        "owned_by": {"type": "string", "description": "the agent's tenant"},
        "name": {"type": "string", "description": "the agent's display name"},
    },
}
MODEL_LIST_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["object", "data"],
    "properties": {
        "object": {"const": "list"},
        "data": {"type": "array", "items": MODEL_SCHEMA},
    },
}
OPENAI_ERROR = Content(name="OpenAIError", schema=OPENAI_ERROR_SCHEMA)

ROUTES = [
    ApiRoute(
        method="GET",
        path="/v1/models",
        operation_id="listModels",
        summary=(
            "OpenAI-compatible list of models: the tenant's agents, each a model whose id is the "
            "agent's id, the `model` a chat completion takes"
        ),
        handler=list_models,
        response=Content(name="OpenAIModelList", schema=MODEL_LIST_SCHEMA),
        errors=(400, 401, 403, 429, 503),
        error=OPENAI_ERROR,
        tags=("openai",),
    ),
    ApiRoute(
        method="GET",
        path="/v1/models/{id}",
        operation_id="retrieveModel",
        summary="OpenAI-compatible model: one of the tenant's agents by its id (404 model_not_found if none)",
        handler=get_model,
        response=Content(name="OpenAIModel", schema=MODEL_SCHEMA),
        errors=(400, 401, 403, 404, 429, 503),
        error=OPENAI_ERROR,
        tags=("openai",),
    ),
]
