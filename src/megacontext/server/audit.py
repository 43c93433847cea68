"""The service's own audit chain: what happens to the service rather than inside one tree —
trees created and deleted, API keys created and revoked — in ``ROOT/audit.sqlite`` (or the
shared PostgreSQL of ``--metadata-url``), chain ``service``. Each tree's own chain lives in its
metadata database (:mod:`megacontext.store.audit`)."""

from __future__ import annotations

from pathlib import Path

from megacontext.store.audit import SERVICE_CHAIN, AuditLog
from megacontext.store.metadata import MetadataDB

SERVICE_AUDIT_DB = "audit.sqlite"


def service_audit_url(root: Path, metadata_url: str | None = None) -> str:
    return metadata_url or f"sqlite:///{root / SERVICE_AUDIT_DB}"


def service_audit(root: Path, metadata_url: str | None = None) -> AuditLog:
    """The service chain of the service at ``root`` (the caller closes ``.db``)."""
    return AuditLog(MetadataDB(service_audit_url(root, metadata_url)), SERVICE_CHAIN)


__all__ = ["SERVICE_AUDIT_DB", "service_audit", "service_audit_url"]
