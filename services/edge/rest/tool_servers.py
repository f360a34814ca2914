"""REST routes of the tool gateway: `/v1/tool-servers` (a tenant's MCP servers, and the platform's
it shares), `/v1/tools` (the catalogue of their tools) and `/v1/tools/{name}/calls` (one call) →
ToolGatewayService.

A server's body is the `ToolServer` message as JSON, its credential included: `staticCredential`
(`header`, `value`) or `clientCredentials` (`tokenUrl`, `clientId`, `clientSecret`, `scope`,
`resource`). The secrets (`value`, `clientSecret`) are input only: no answer carries them."""

from __future__ import annotations

from macp.tool_gateway.v1 import tool_gateway_service_pb2 as pb
from starlette.requests import Request
from starlette.responses import Response

from services.edge.context import edge_context
from services.edge.http import message_response, parse_document, read_json_object
from services.edge.rest.conventions import (
    COMMON_ERRORS,
    ITS_ID,
    PAGE_QUERY,
    WRITE_ERRORS,
    page,
    query,
    same_id,
)
from services.edge.rest.resources import StoredResource
from services.edge.routes import ApiRoute, Link

TOOL_SERVERS = StoredResource(
    "tool-servers",
    pb.ToolServer,
    pb,
    "ToolGatewayService",
    lambda edge: edge.tool_gateway,
    verbs=("Create", "Get", "Delete"),
    required=("name", "url"),  # the tool gateway refuses a registration without them
)


async def list_tool_servers(request: Request) -> Response:
    edge = edge_context(request)
    params = query(request, ("page_size", "page_token"))
    reply: pb.ListToolServersResponse = await edge.tool_gateway.ListToolServers(
        pb.ListToolServersRequest(**page(params)), timeout=edge.timeout
    )
    return message_response(reply)


async def list_tools(request: Request) -> Response:
    edge = edge_context(request)
    query(request, ())
    reply: pb.ListToolsResponse = await edge.tool_gateway.ListTools(
        pb.ListToolsRequest(), timeout=edge.timeout
    )
    return message_response(reply)


async def call_tool(request: Request) -> Response:
    edge = edge_context(request)
    query(request, ())
    name = request.path_params["name"]
    document = await read_json_object(request, edge.settings.max_body_bytes)
    same_id(document, name, "name")
    call = parse_document({**document, "name": name}, pb.CallToolRequest())
    # The gateway's own deadline per upstream bounds the call; the edge's covers the hop to it.
    reply: pb.CallToolResponse = await edge.tool_gateway.CallTool(call, timeout=edge.timeout)
    return message_response(reply)


TOOL_SERVER_LINKS = (
    Link("GetToolServer", "getToolServer", (ITS_ID,)),
    Link("DeleteToolServer", "deleteToolServer", (ITS_ID,)),
    Link("ListTools", "listTools"),
)
TAGS = ("tools",)

ROUTES = [
    ApiRoute(
        method="POST",
        path="/v1/tool-servers",
        operation_id="createToolServer",
        summary="Register an MCP server of the caller's tenant (its name is its tools' namespace; "
        "its credential's secret is input only)",
        handler=TOOL_SERVERS.create,
        body=pb.ToolServer,
        required=TOOL_SERVERS.required,
        response=pb.ToolServer,
        status=201,
        errors=(*WRITE_ERRORS, 409),
        tags=TAGS,
        links=TOOL_SERVER_LINKS,
    ),
    ApiRoute(
        method="GET",
        path="/v1/tool-servers",
        operation_id="listToolServers",
        summary="List the tenant's MCP servers and the platform's, oldest first",
        handler=list_tool_servers,
        response=pb.ListToolServersResponse,
        query=PAGE_QUERY,
        errors=COMMON_ERRORS,
        tags=TAGS,
    ),
    ApiRoute(
        method="GET",
        path="/v1/tool-servers/{id}",
        operation_id="getToolServer",
        summary="Get one MCP server",
        handler=TOOL_SERVERS.get,
        response=pb.ToolServer,
        errors=(*COMMON_ERRORS, 404),
        tags=TAGS,
        links=TOOL_SERVER_LINKS,
    ),
    ApiRoute(
        method="DELETE",
        path="/v1/tool-servers/{id}",
        operation_id="deleteToolServer",
        summary="Remove an MCP server; its tools leave the catalogue (If-Match: optional etag; "
        "a platform server only by an operator)",
        handler=TOOL_SERVERS.delete,
        response=None,
        status=204,
        errors=(*COMMON_ERRORS, 404, 412),
        tags=TAGS,
    ),
    ApiRoute(
        method="GET",
        path="/v1/tools",
        operation_id="listTools",
        summary="The tenant's tool catalogue: every server's tools, named <server>__<tool>",
        handler=list_tools,
        response=pb.ListToolsResponse,
        errors=COMMON_ERRORS,
        tags=TAGS,
    ),
    ApiRoute(
        method="POST",
        path="/v1/tools/{name}/calls",
        operation_id="callTool",
        summary="Call one tool of the catalogue with its arguments",
        handler=call_tool,
        body=pb.CallToolRequest,
        response=pb.CallToolResponse,
        errors=(*WRITE_ERRORS, 404, 409, 429),
        tags=TAGS,
    ),
]
