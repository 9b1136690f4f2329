"""The worklist page (role radiologist or admin), and the rows it polls for."""

from __future__ import annotations

import datetime as dt
from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from web.audit import audit
from web.auth import CurrentUser, DbSession, client_address
from web.errors import WebError
from web.pages import render
from web.worklist import DECISION_FILTERS, WorklistFilter, WorklistPage, worklist_page

router = APIRouter(include_in_schema=False)
WINDOWS = {"": None, "24h": dt.timedelta(hours=24), "7d": dt.timedelta(days=7),
           "30d": dt.timedelta(days=30)}


def worklist_filter(window: str | None, decision: list[str] | None, modality: str | None,
                    station: str | None) -> WorklistFilter:
    """Filters from query parameters; an unknown value is refused with what to use."""
    if (window or "") not in WINDOWS:
        raise WebError(f"window {window!r}: use one of {', '.join(w for w in WINDOWS if w)}")
    unknown = set(decision or ()) - set(DECISION_FILTERS)
    if unknown:
        raise WebError(f"decision {sorted(unknown)}: use {', '.join(DECISION_FILTERS)}")
    delta = WINDOWS[window or ""]
    return WorklistFilter(since=dt.datetime.now(dt.UTC) - delta if delta else None,
                          decisions=tuple(decision or ()), modality=modality or None,
                          station=station or None)


def _load(request: Request, session: DbSession, principal: CurrentUser, window: str | None,
          decision: list[str] | None, modality: str | None, station: str | None,
          page: int) -> WorklistPage:
    filters = worklist_filter(window, decision, modality, station)
    result = worklist_page(session, filters, page=page,
                           page_size=request.app.state.settings.page_size,
                           show_phi=principal.can_view_phi)
    audit(session, principal.name, "worklist", None,
          f"page {result.page}, {len(result.items)} studies", client_address(request))
    return result


@router.get("/")
def home() -> Response:
    return RedirectResponse("/worklist", status_code=303)


@router.get("/worklist", response_class=HTMLResponse)
def worklist_view(request: Request, session: DbSession, principal: CurrentUser,
                  window: str | None = None, decision: Annotated[list[str] | None, Query()] = None,
                  modality: str | None = None, station: str | None = None,
                  page: Annotated[int, Query(ge=1)] = 1) -> Response:
    result = _load(request, session, principal, window, decision, modality, station, page)
    return render(request, "worklist.html", principal, result=result, windows=list(WINDOWS),
                  decisions=DECISION_FILTERS,
                  chosen={"window": window or "", "decision": decision or [],
                          "modality": modality or "", "station": station or ""})


@router.get("/worklist/rows", response_class=HTMLResponse)
def worklist_rows(request: Request, session: DbSession, principal: CurrentUser,
                  window: str | None = None, decision: Annotated[list[str] | None, Query()] = None,
                  modality: str | None = None, station: str | None = None,
                  page: Annotated[int, Query(ge=1)] = 1) -> Response:
    """The table body alone, for the page's polling (app.js)."""
    result = _load(request, session, principal, window, decision, modality, station, page)
    return render(request, "worklist_rows.html", principal, result=result)
