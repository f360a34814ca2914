"""Every default port stays below Linux's ephemeral range (32768-60999), so an outgoing
connection's source port never holds one a moment before `macp up` binds it: with the old
defaults inside the range (50051-50055, 55432, ...), a busy machine refused to start."""

from __future__ import annotations

from services.runtime.registry import EDGE, ENVOY, PROVIDER_SERVER, SERVICES
from services.stack.config import EMBEDDED_PORTS

EPHEMERAL_RANGE_START = 32768  # Linux's default net.ipv4.ip_local_port_range


def default_ports() -> dict[str, int]:
    ports = {f"{spec.name} gRPC": spec.port for spec in SERVICES}
    ports |= {f"{spec.name} metrics": spec.metrics_port for spec in SERVICES}
    ports |= {"edge": EDGE.port, "edge metrics": EDGE.metrics_port, "provider server": PROVIDER_SERVER.port}
    ports |= {"envoy front": ENVOY.front_port, "envoy mesh": ENVOY.mesh_port, "envoy admin": ENVOY.admin_port}
    ports |= {f"embedded {part}": port for part, (_, port) in EMBEDDED_PORTS.items()}
    return ports


def test_no_default_port_is_in_the_ephemeral_range() -> None:
    inside = {name: port for name, port in default_ports().items() if port >= EPHEMERAL_RANGE_START}
    assert not inside, f"default ports inside the ephemeral range: {inside}"


def test_no_two_parts_share_a_default_port() -> None:
    ports = default_ports()
    assert len(set(ports.values())) == len(ports), ports
