"""The protobuf contracts: gen/ is what proto/ generates, the services are the ones the registry
routes, and protovalidate enforces the rules written in the protos.
"""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import protovalidate
import pytest
from buf.validate import validate_pb2
from google.protobuf.descriptor import FileDescriptor, MethodDescriptor, ServiceDescriptor
from google.protobuf.message import Message
from macp.common.v1 import agent_settings_pb2
from macp.conversation.v1 import conversation_service_pb2 as conversation_pb

from services.runtime.reflection import contract_module
from services.runtime.registry import SERVICES, ServiceSpec

REPO_ROOT = Path(__file__).resolve().parents[2]
PROTO_ROOT = REPO_ROOT / "proto"
GEN_ROOT = REPO_ROOT / "gen"
GEN_SCRIPT = REPO_ROOT / "scripts" / "gen_protos.py"
FIX_COMMAND = "python scripts/gen_protos.py"

SERVICE_PROTOS = sorted(p.relative_to(PROTO_ROOT).as_posix() for p in PROTO_ROOT.rglob("*_service.proto"))


def _tree(root: Path) -> dict[str, bytes]:
    """Every generated file under `root` (relative path -> bytes), ignoring bytecode caches."""
    return {
        path.relative_to(root).as_posix(): path.read_bytes()
        for path in sorted(root.rglob("*"))
        if path.is_file() and "__pycache__" not in path.parts
    }


def _module_name(proto: str, suffix: str) -> str:
    """`macp/x/v1/x_service.proto` -> `macp.x.v1.x_service<suffix>`."""
    return proto.removesuffix(".proto").replace("/", ".") + suffix


def _file_descriptor(proto: str) -> FileDescriptor:
    module = importlib.import_module(_module_name(proto, "_pb2"))
    descriptor: FileDescriptor = module.DESCRIPTOR
    return descriptor


def test_generated_code_is_fresh(tmp_path: Path) -> None:
    fresh_root = tmp_path / "gen"
    result = subprocess.run(
        [sys.executable, str(GEN_SCRIPT), "--out", str(fresh_root)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, f"{FIX_COMMAND} failed:\n{result.stdout}{result.stderr}"

    committed, fresh = _tree(GEN_ROOT), _tree(fresh_root)
    stale = sorted(name for name in fresh.keys() & committed.keys() if fresh[name] != committed[name])
    missing = sorted(fresh.keys() - committed.keys())
    extra = sorted(committed.keys() - fresh.keys())
    problems = [
        *(f"stale:   gen/{name}" for name in stale),
        *(f"missing: gen/{name}" for name in missing),
        *(f"extra:   gen/{name}" for name in extra),
    ]
    if problems:
        pytest.fail(
            "gen/ does not match proto/:\n" + "\n".join(problems) + f"\nRegenerate with: {FIX_COMMAND}"
        )


def test_every_service_proto_is_found() -> None:
    # One file per gRPC service; a process may serve more than one (the conversation process
    # serves WebhookService beside ConversationService).
    grpc_services = [name for spec in SERVICES for name in spec.grpc_services]
    assert len(SERVICE_PROTOS) == len(grpc_services), (
        f"{len(SERVICE_PROTOS)} *_service.proto files ({SERVICE_PROTOS}) "
        f"but {len(grpc_services)} gRPC services in services/runtime/registry.py"
    )


def _methods_of(spec: ServiceSpec) -> list[MethodDescriptor]:
    """Every method of every gRPC service `spec` serves (each in its own `*_service.proto`)."""
    methods: list[MethodDescriptor] = []
    for grpc_service in spec.grpc_services:
        module = importlib.import_module(contract_module(grpc_service))
        methods += module.DESCRIPTOR.services_by_name[grpc_service.rpartition(".")[2]].methods
    return methods


@pytest.mark.parametrize("proto", SERVICE_PROTOS)
def test_services_match_the_registry(proto: str) -> None:
    importlib.import_module(_module_name(proto, "_pb2_grpc"))
    services: list[ServiceDescriptor] = list(_file_descriptor(proto).services_by_name.values())
    assert services, f"{proto} defines no service"

    routed = {name: spec for spec in SERVICES for name in spec.grpc_services}
    for service in services:
        assert service.full_name in routed, (
            f"{service.full_name} (from {proto}) is not in services/runtime/registry.py; "
            f"registered: {sorted(routed)}"
        )
        spec = routed[service.full_name]
        # The registry names a process's RPCs across every gRPC service it serves.
        methods = {method.name: method for method in _methods_of(spec)}
        streaming = sorted(
            name for name, method in methods.items() if method.client_streaming or method.server_streaming
        )
        assert sorted(spec.streaming_rpcs) == streaming, (
            f"registry streaming_rpcs of {spec.name} are {sorted(spec.streaming_rpcs)}, "
            f"but {service.full_name} streams {streaming}"
        )
        unknown = sorted(set(spec.retry_safe_rpcs) - methods.keys())
        assert not unknown, f"registry retry_safe_rpcs of {spec.name} name unknown RPCs {unknown}"


def test_every_registered_service_is_defined() -> None:
    defined = {
        service.full_name
        for proto in SERVICE_PROTOS
        for service in _file_descriptor(proto).services_by_name.values()
    }
    registered = {name for spec in SERVICES for name in spec.grpc_services}
    assert registered <= defined, f"registered but not defined in proto/: {sorted(registered - defined)}"


def _valid_agent() -> conversation_pb.Agent:
    return conversation_pb.Agent(
        name="Research Assistant",
        provider="anthropic",
        model="claude-sonnet-4-5",
        system_prompt="You research things.",
        generation=agent_settings_pb2.GenerationSettings(max_tokens=1024, temperature=0.7),
        capabilities=["research", "finance.tax"],
        bidding=agent_settings_pb2.BiddingHints(keywords=["market"], eagerness=0.5),
    )


def test_generated_descriptors_carry_the_validate_options() -> None:
    options = conversation_pb.Agent.DESCRIPTOR.fields_by_name["name"].GetOptions()
    assert options.HasExtension(validate_pb2.field)
    assert options.Extensions[validate_pb2.field].string.max_len == 100


def test_protovalidate_accepts_a_good_create_agent_request() -> None:
    protovalidate.validate(conversation_pb.CreateAgentRequest(agent=_valid_agent()))


def test_protovalidate_rejects_an_agent_without_a_name() -> None:
    agent = _valid_agent()
    agent.ClearField("name")
    with pytest.raises(protovalidate.ValidationError) as caught:
        protovalidate.validate(conversation_pb.CreateAgentRequest(agent=agent))
    rule_ids = [violation.proto.rule_id for violation in caught.value.violations]
    assert rule_ids == ["agent.name_required"]


@pytest.mark.parametrize(
    ("request_message", "rule_id"),
    [
        (conversation_pb.CreateAgentRequest(), "required"),
        (
            conversation_pb.CreateAgentRequest(
                agent=conversation_pb.Agent(
                    name="A",
                    provider="anthropic",
                    model="m",
                    generation=agent_settings_pb2.GenerationSettings(temperature=2.5),
                )
            ),
            "double.gte_lte",
        ),
        (conversation_pb.GetAgentRequest(id="not-a-uuid"), "string.uuid"),
        (conversation_pb.ListAgentsRequest(page_size=1001), "int32.gte_lte"),
        (
            conversation_pb.CreateConversationRequest(
                conversation=conversation_pb.Conversation(
                    participant_agent_ids=["3f0e4a9e-8a53-4a0e-9a39-2f7d2c3c1b11"],
                )
            ),
            "conversation.turn_policy_required",
        ),
    ],
    ids=["missing-agent", "temperature-too-high", "bad-id", "page-too-large", "no-turn-policy"],
)
def test_protovalidate_rejects_bad_requests(request_message: Message, rule_id: str) -> None:
    with pytest.raises(protovalidate.ValidationError) as caught:
        protovalidate.validate(request_message)
    assert rule_id in [violation.proto.rule_id for violation in caught.value.violations]
