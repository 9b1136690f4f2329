"""``/api/worklist`` and ``/api/studies/{uid}``: the worklist and one study, as JSON.

Authenticated like the pages: ``Authorization: Bearer TOKEN`` of a service account, or a
browser session. Patient name and ID are ``null`` unless the account may see PHI.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.security import HTTPBearer
from pydantic import BaseModel

from web.audit import audit
from web.auth import CurrentUser, DbSession, client_address
from web.pages.worklist import WINDOWS, worklist_filter
from web.study import StudyDetail, study_detail
from web.worklist import WorklistItem, worklist_page

MAX_PAGE_SIZE = 500
router = APIRouter(prefix="/api", tags=["api"],
                   dependencies=[Depends(HTTPBearer(auto_error=False))])


class WorklistResponse(BaseModel):
    """One page of the worklist in triage order."""

    items: list[WorklistItem]
    total: int
    page: int
    page_size: int
    pages: int


@router.get("/worklist", response_model=WorklistResponse)
def api_worklist(request: Request, session: DbSession, principal: CurrentUser,
                 page: Annotated[int, Query(ge=1)] = 1,
                 page_size: Annotated[int | None, Query(ge=1, le=MAX_PAGE_SIZE)] = None,
                 window: Annotated[str | None, Query(description=f"one of {list(WINDOWS)}")]
                 = None,
                 decision: Annotated[list[str] | None, Query()] = None,
                 modality: str | None = None, station: str | None = None) -> WorklistResponse:
    """Studies in triage order: suspected by probability, then indeterminate and not
    assessable, then the rest by arrival."""
    filters = worklist_filter(window, decision, modality, station)
    size = page_size or request.app.state.settings.page_size
    result = worklist_page(session, filters, page=page, page_size=size,
                           show_phi=principal.can_view_phi)
    audit(session, principal.name, "api_worklist", None,
          f"page {result.page}, {len(result.items)} studies", client_address(request))
    return WorklistResponse(items=result.items, total=result.total, page=result.page,
                            page_size=result.page_size, pages=result.pages)


@router.get("/studies/{uid}", response_model=StudyDetail)
def api_study(uid: str, request: Request, session: DbSession,
              principal: CurrentUser) -> StudyDetail:
    """One study: images, every score (per-fold probabilities), every report revision and
    every delivery by destination."""
    detail = study_detail(session, uid, show_phi=principal.can_view_phi)
    if detail is None:
        raise HTTPException(404, "no such study")
    audit(session, principal.name, "api_study", uid, None, client_address(request))
    return detail
