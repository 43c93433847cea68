"""The runtime: a session that ingests, refocuses and decodes over an unbounded history."""

from megacontext.focus import StepTelemetry
from megacontext.runtime.config import W_MAX, SessionConfig, default_protected_recent
from megacontext.runtime.focus_control import Focus
from megacontext.runtime.opening import open_session
from megacontext.runtime.session import Answer, EntryView, ForwardTiming, Session

__all__ = [
    "W_MAX",
    "Answer",
    "EntryView",
    "Focus",
    "ForwardTiming",
    "Session",
    "SessionConfig",
    "StepTelemetry",
    "default_protected_recent",
    "open_session",
]
