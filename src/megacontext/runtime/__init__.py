"""The runtime: a session that ingests, refocuses and decodes over an unbounded history."""

from megacontext.runtime.session import (
    EntryView,
    Focus,
    Session,
    SessionConfig,
    StepTelemetry,
    open_session,
)

__all__ = ["EntryView", "Focus", "Session", "SessionConfig", "StepTelemetry", "open_session"]
