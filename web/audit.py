"""The audit log: who saw which study's data, when and how (no PHI in it beyond the UID)."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from db.models import AuditLog


def audit(session: Session, username: str, action: str, study_uid: str | None = None,
          detail: str | None = None, client: str | None = None) -> None:
    """Record one view; committed with the request's session."""
    session.add(AuditLog(username=username, action=action, study_instance_uid=study_uid,
                         detail=detail[:255] if detail else None,
                         client=client[:64] if client else None))


def recent(session: Session, *, limit: int = 200, study_uid: str | None = None,
           username: str | None = None) -> list[AuditLog]:
    """The newest entries first, optionally of one study or one user."""
    query = select(AuditLog).order_by(AuditLog.id.desc()).limit(limit)
    if study_uid:
        query = query.where(AuditLog.study_instance_uid == study_uid)
    if username:
        query = query.where(AuditLog.username == username)
    return list(session.scalars(query))
