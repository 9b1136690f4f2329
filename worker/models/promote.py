"""Promotion and rollback of the live model, behind the local-validation gate.

A version goes live only with a passing local validation (``cxr-triage validate``), unless
the operator forces it with a reason. Every decision, forced or not, is a ``model_promotion``
row: the audit trail of which model scored when, chosen by whom and why.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from sqlalchemy.orm import Session, sessionmaker

from db.models import ModelAction
from db.registry import (
    NewPromotion,
    get_model_version,
    latest_validation,
    live_stack,
    promotions,
    record_promotion,
)
from worker.models.store import ModelStoreError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Promoted:
    """What a promotion or rollback did."""

    version: str
    previous: str | None
    forced: bool
    validation_id: int | None
    note: str = ""


def _gate(session: Session, version: str, force: bool, reason: str | None
          ) -> tuple[int | None, str]:
    """The passing validation's id, or why promoting anyway is allowed; raise otherwise."""
    validation = latest_validation(session, version)
    if validation is not None and validation.passed:
        return validation.id, f"validation {validation.id} passed"
    why = ("it has never been validated on local data" if validation is None else
           f"its latest local validation ({validation.id}) failed the acceptance criteria")
    if not force:
        raise ModelStoreError(
            f"model {version} is not promoted: {why}. Run `cxr-triage validate --model "
            f"{version}` (docs/go-live.md), or promote anyway with --force --reason TEXT")
    if not reason or not reason.strip():
        raise ModelStoreError("--force needs --reason TEXT (recorded in the audit trail)")
    return None, f"FORCED although {why}"


def promote(sessions: sessionmaker[Session], version: str, *, by: str,
            reason: str | None = None, force: bool = False) -> Promoted:
    """Make ``version`` the live model (``cxr-triage model promote``)."""
    with sessions.begin() as session:
        if get_model_version(session, version) is None:
            raise ModelStoreError(f"model version {version!r} is not in the store; import it "
                                  "with `cxr-triage model import DIR|TARBALL`")
        stack = live_stack(promotions(session))
        previous = stack[-1] if stack else None
        if previous == version:
            raise ModelStoreError(f"model {version} is already live")
        validation_id, note = _gate(session, version, force, reason)
        record_promotion(session, NewPromotion(
            version=version, action=ModelAction.PROMOTE, previous_version=previous,
            promoted_by=by, reason=reason, forced=validation_id is None,
            validation_id=validation_id))
    logger.warning("model %s promoted by %s (was %s; %s)", version, by, previous, note)
    return Promoted(version, previous, validation_id is None, validation_id, note)


def rollback(sessions: sessionmaker[Session], *, by: str,
             reason: str | None = None) -> Promoted:
    """Go back to the model live before the last promotion (``cxr-triage model rollback``)."""
    with sessions.begin() as session:
        stack = live_stack(promotions(session))
        if len(stack) < 2:
            raise ModelStoreError("nothing to roll back to: no model was live before the "
                                  "current one (workers fall back to TRIAGE_MODEL_DIR only "
                                  "when nothing was ever promoted)")
        current, target = stack[-1], stack[-2]
        record_promotion(session, NewPromotion(
            version=target, action=ModelAction.ROLLBACK, previous_version=current,
            promoted_by=by, reason=reason))
    logger.warning("model rolled back from %s to %s by %s", current, target, by)
    return Promoted(target, current, False, None, "rollback")
