"""Server-rendered pages, one router per area."""

from __future__ import annotations

from typing import Any

from fastapi import Request
from fastapi.responses import HTMLResponse
from fastapi.templating import Jinja2Templates

from web.auth import Principal


def render(request: Request, template: str, principal: Principal | None,
           status_code: int = 200, **context: Any) -> HTMLResponse:
    """Render ``template`` with the principal, its CSRF token and the app's settings."""
    templates: Jinja2Templates = request.app.state.templates
    return templates.TemplateResponse(request, template, {
        "principal": principal, "csrf": principal.csrf if principal else None,
        "settings": request.app.state.settings, **context}, status_code=status_code)
