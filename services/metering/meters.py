"""What each usage event counts toward: its meter and its quantity in the meter's unit."""

from __future__ import annotations

from macp.common.v1 import usage_pb2
from macp.metering.v1 import metering_service_pb2 as pb

# Event type -> the meter it counts toward. Voice synthesis and transcription share one meter.
METER_OF_TYPE: dict[int, int] = {
    usage_pb2.USAGE_EVENT_TYPE_AGENT_TURN: pb.METER_AGENT_TURNS,
    usage_pb2.USAGE_EVENT_TYPE_ORCHESTRATION: pb.METER_ORCHESTRATIONS,
    usage_pb2.USAGE_EVENT_TYPE_VOICE_SYNTHESIS: pb.METER_VOICE_SECONDS,
    usage_pb2.USAGE_EVENT_TYPE_VOICE_TRANSCRIPTION: pb.METER_VOICE_SECONDS,
    usage_pb2.USAGE_EVENT_TYPE_STORAGE: pb.METER_STORAGE_MB,
    usage_pb2.USAGE_EVENT_TYPE_API_CALL: pb.METER_API_CALLS,
}

# Meter -> (description, unit) as invoices print them.
METER_LABELS: dict[int, tuple[str, str]] = {
    pb.METER_AGENT_TURNS: ("Agent turns", "turns"),
    pb.METER_ORCHESTRATIONS: ("Orchestrations", "orchestrations"),
    pb.METER_VOICE_SECONDS: ("Voice (synthesis and transcription)", "seconds"),
    pb.METER_STORAGE_MB: ("Storage", "MB"),
    pb.METER_API_CALLS: ("API calls", "calls"),
}


def quantity(event_type: int, event_count: int, audio_seconds: float, storage_mb: float) -> float:
    """What `event_count` events of one type add to their meter: counted meters one per event,
    measured ones (voice, storage) their summed measure."""
    meter = METER_OF_TYPE[event_type]
    if meter == pb.METER_VOICE_SECONDS:
        return audio_seconds
    if meter == pb.METER_STORAGE_MB:
        return storage_mb
    return float(event_count)


def meter_name(meter: int) -> str:
    return pb.Meter.Name(meter)  # type: ignore[arg-type]
