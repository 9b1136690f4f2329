"""The study page: images through the model's loader, fold chart, decision and delivery history."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Form, HTTPException, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from training.errors import TrainingError
from web.audit import audit
from web.auth import AdminUser, CurrentUser, DbSession, client_address
from web.images import render_png, render_result_png
from web.pages import render
from web.study import image_path, result_image_path, study_detail
from worker.deliver.requeue import redeliver

LOGGER = logging.getLogger(__name__)
router = APIRouter(include_in_schema=False)


@router.get("/studies/{uid}", response_class=HTMLResponse)
def study_view(uid: str, request: Request, session: DbSession,
               principal: CurrentUser) -> Response:
    detail = study_detail(session, uid, show_phi=principal.can_view_phi)
    if detail is None:
        raise HTTPException(404, "no such study")
    audit(session, principal.name, "study", uid, None, client_address(request))
    latest = {}
    for score in detail.scores:  # the newest score of each image
        latest[score.instance_id] = score
    return render(request, "study.html", principal, study=detail,
                  image_scores=latest, message=request.query_params.get("message"))


@router.get("/studies/{uid}/images/{instance_id}.png")
def study_image(uid: str, instance_id: int, request: Request, session: DbSession,
                      principal: CurrentUser) -> Response:
    path = image_path(session, uid, instance_id)
    if path is None:
        raise HTTPException(404, "no such image in this study")
    audit(session, principal.name, "image", uid, f"instance {instance_id}",
          client_address(request))
    try:
        png = render_png(Path(path))
    except TrainingError as exc:
        LOGGER.warning("instance %d: cannot render: %s", instance_id, type(exc).__name__)
        raise HTTPException(422, "the image can't be decoded") from exc
    return Response(png, media_type="image/png", headers={"Cache-Control": "private, max-age=300"})


@router.get("/studies/{uid}/images/{instance_id}/heatmap.png")
def study_heatmap(uid: str, instance_id: int, request: Request, session: DbSession,
                  principal: CurrentUser) -> Response:
    """The pixels of the result image made from this image (radiograph, heatmap and burned-in
    result), for the study page's overlay toggle."""
    path = result_image_path(session, uid, instance_id)
    if path is None:
        raise HTTPException(404, "no result image for this image")
    audit(session, principal.name, "heatmap", uid, f"instance {instance_id}",
          client_address(request))
    try:
        png = render_result_png(Path(path))
    except (OSError, ValueError, AttributeError) as exc:
        LOGGER.warning("instance %d: cannot render its result image: %s", instance_id,
                       type(exc).__name__)
        raise HTTPException(422, "the result image can't be read") from exc
    return Response(png, media_type="image/png", headers={"Cache-Control": "private, max-age=300"})


@router.post("/studies/{uid}/redeliver")
def study_redeliver(uid: str, request: Request, principal: AdminUser,
                    report_id: Annotated[int, Form()]) -> Response:
    pairs = redeliver(request.app.state.sessions, request.app.state.settings.broker,
                      report_id=report_id)
    LOGGER.info("redeliver: report %d, %d deliveries requeued by an admin", report_id,
                len(pairs))
    with request.app.state.sessions.begin() as session:
        audit(session, principal.name, "redeliver", uid, f"report {report_id}: {len(pairs)}",
              client_address(request))
    message = f"{len(pairs)} deliveries queued again" if pairs else "nothing to redeliver"
    return RedirectResponse(f"/studies/{uid}?message={message}", status_code=303)
