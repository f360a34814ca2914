"""Settings of the native stack itself: the ports of embedded parts and of Envoy.

| variable | default | meaning |
| --- | --- | --- |
| MACP_EMBEDDED_POSTGRES_PORT | 15432 | embedded Postgres (when MACP_DATABASE_URL is unset) |
| MACP_EMBEDDED_REDIS_PORT | 16379 | embedded Redis (when MACP_REDIS_URL is unset) |
| MACP_EMBEDDED_KAFKA_PORT | 19092 | embedded tansu broker (when MACP_KAFKA_BOOTSTRAP is unset) |
| MACP_EMBEDDED_S3_PORT | 19000 | embedded moto S3 server (when MACP_S3_ENDPOINT is unset) |
| MACP_ENVOY_FRONT_PORT / _MESH_PORT / _ADMIN_PORT | registry.ENVOY | Envoy's listeners and admin |

The defaults stay clear of the standard ports (5432, 6379, 9092, 9000) so an embedded part never
collides with a server the machine already runs. An embedded port of 0 means "pick a free one",
which is what tests use (see FREE_PORTS_ENV).
"""

from __future__ import annotations

import random
import socket
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

from services.runtime.registry import ENVOY
from services.runtime.settings import Env
from services.stack.process import PortClaim

EMBEDDED_PORTS: dict[str, tuple[str, int]] = {
    "postgres": ("MACP_EMBEDDED_POSTGRES_PORT", 15432),
    "redis": ("MACP_EMBEDDED_REDIS_PORT", 16379),
    "kafka": ("MACP_EMBEDDED_KAFKA_PORT", 19092),
    "s3": ("MACP_EMBEDDED_S3_PORT", 19000),
}

# Merge into a test's environment so every embedded part listens on a free port.
FREE_PORTS_ENV: dict[str, str] = {variable: "0" for variable, _ in EMBEDDED_PORTS.values()}


def _ephemeral_port_floor() -> int:
    """The lowest port the kernel hands out as a connection's source port (Linux: 32768)."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


_FREE_PORT_FLOOR = 10000
_handed_out: set[int] = set()


def free_port(host: str = "127.0.0.1", avoid: Collection[int] = ()) -> int:
    """A port nothing listens on right now, for a child process to bind a moment later.

    It is drawn at random from below the kernel's ephemeral range: a port from that range (what
    binding port 0 returns) can be taken as the source port of any outgoing connection between this
    pick and the child's bind, which made busy test runs fail with "address in use". Ports already
    handed out by this process are never handed out again, nor any in `avoid` (ports the
    environment already gives other parts, which another process may have picked).
    """
    ceiling = _ephemeral_port_floor()
    for _ in range(200):
        port = random.randrange(_FREE_PORT_FLOOR, ceiling)
        if port in _handed_out or port in avoid:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            try:
                probe.bind((host, port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:  # a crowded machine: the kernel's pick
        probe.bind((host, 0))
        picked: int = probe.getsockname()[1]
        return picked


def free_ports_in_a_row(count: int, host: str = "127.0.0.1", avoid: Collection[int] = ()) -> int:
    """The first of `count` consecutive free ports (free_port's rules for each): where replicas
    listen with `MACP_REPLICA_PORT_STEP=1` (services/stack/replicas.py)."""
    for _ in range(200):
        first = free_port(host, avoid)
        rest = list(range(first + 1, first + count))
        if all(port not in avoid and port not in _handed_out and not _taken(host, port) for port in rest):
            _handed_out.update(rest)
            return first
    raise OSError(f"no {count} consecutive free ports found on {host}")


def _taken(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((host, port))
        except OSError:
            return True
    return False


def embedded_port(env: Env, part: str) -> int:
    """The port of an embedded part (`postgres`, `redis`, `kafka`, `s3`); 0 picks a free one."""
    variable, default = EMBEDDED_PORTS[part]
    port = env.integer(variable, default, minimum=0, maximum=65535)
    return port or free_port(avoid=env.configured_ports())


def embedded_claim(part: str, port: int) -> PortClaim:
    return PortClaim(port, f"embedded {part}", EMBEDDED_PORTS[part][0])


@dataclass(frozen=True)
class EnvoyPorts:
    """Envoy's front (HTTP/WebSocket), mesh (h2c gRPC) and admin ports."""

    front: int
    mesh: int
    admin: int

    @classmethod
    def from_env(cls, env: Env) -> EnvoyPorts:
        return cls(
            front=env.port("MACP_ENVOY_FRONT_PORT", ENVOY.front_port),
            mesh=env.port("MACP_ENVOY_MESH_PORT", ENVOY.mesh_port),
            admin=env.port("MACP_ENVOY_ADMIN_PORT", ENVOY.admin_port),
        )

    def claims(self) -> tuple[PortClaim, ...]:
        return (
            PortClaim(self.front, "envoy front listener", "MACP_ENVOY_FRONT_PORT"),
            PortClaim(self.mesh, "envoy mesh listener", "MACP_ENVOY_MESH_PORT"),
            PortClaim(self.admin, "envoy admin", "MACP_ENVOY_ADMIN_PORT"),
        )
