"""A typed Python client of MACP: REST, OAuth, SSE and WebSocket rounds with resume; async
(`AsyncMacpClient`) and blocking (`MacpClient`). See the package's README."""

from macp_client.auth import ClientCredentials, Grant, Password, RefreshToken
from macp_client.client import AsyncMacpClient
from macp_client.errors import MacpConnectionError, MacpError
from macp_client.events import Event, EventKind
from macp_client.sync import MacpClient, SyncConversationSocket
from macp_client.types import Page
from macp_client.websocket import ConversationSocket

__all__ = [
    "AsyncMacpClient",
    "ClientCredentials",
    "ConversationSocket",
    "Event",
    "EventKind",
    "Grant",
    "MacpClient",
    "MacpConnectionError",
    "MacpError",
    "Page",
    "Password",
    "RefreshToken",
    "SyncConversationSocket",
]
