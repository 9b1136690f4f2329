"""The web app factory: worklist and study pages, operations pages, the JSON API, metrics.

``create_app(settings)`` builds everything from settings: no configuration is read at import,
and each request gets its database session and its principal through dependencies.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates

from common.version import package_version
from db.migrate import require_current
from db.session import make_engine, make_session_factory
from web.api import health as health_api
from web.api import routes as api_routes
from web.auth import Authenticator, ForbiddenError, NotAuthenticatedError
from web.errors import WebError
from web.metrics import build_registry
from web.pages import ops, session, study, worklist
from web.settings import WebSettings, load_secret

HERE = Path(__file__).parent
CSP = ("default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
       "frame-ancestors 'none'; form-action 'self'; base-uri 'none'")


def _engine_options(url: str) -> dict[str, Any]:
    # Requests run in a thread pool: a SQLite connection may serve several threads in turn.
    return {"connect_args": {"check_same_thread": False}} if url.startswith("sqlite") else {}


def create_app(settings: WebSettings) -> FastAPI:
    """The application for ``settings``; the schema must be current (``cxr-triage db upgrade``)."""
    engine = make_engine(settings.db.url, **_engine_options(settings.db.url))
    require_current(engine)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        yield
        engine.dispose()

    app = FastAPI(title="cxr-triage", version=package_version(), lifespan=lifespan,
                  docs_url="/api/docs", openapi_url="/api/openapi.json", redoc_url=None,
                  description="Triage worklist and study results of cxr-triage. Authenticate "
                  "with `Authorization: Bearer TOKEN` (`cxr-triage users token NAME`) or a "
                  "browser session.")
    app.state.settings = settings
    app.state.engine = engine
    app.state.sessions = make_session_factory(engine)
    app.state.auth = Authenticator(settings, load_secret(settings.secret_key_file))
    app.state.templates = Jinja2Templates(directory=HERE / "templates")
    app.state.templates.env.filters["replace_page"] = _replace_page
    app.state.registry = build_registry(app.state.sessions, settings.broker,
                                        settings.destination_alert_s)
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")
    for module in (health_api, session, worklist, study, ops, api_routes):
        app.include_router(module.router)
    _error_handlers(app)
    app.middleware("http")(_security_headers)
    return app


async def _security_headers(request: Request,
                            call_next: Callable[[Request], Awaitable[Response]]) -> Response:
    response = await call_next(request)
    response.headers.setdefault("Content-Security-Policy", CSP)
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["X-Frame-Options"] = "DENY"
    response.headers["Referrer-Policy"] = "same-origin"
    if not request.url.path.startswith("/static"):
        response.headers.setdefault("Cache-Control", "no-store")
    return response


def _is_api(request: Request) -> bool:
    return request.url.path.startswith("/api/")


def _error_handlers(app: FastAPI) -> None:
    @app.exception_handler(NotAuthenticatedError)
    async def not_authenticated(request: Request, _exc: NotAuthenticatedError) -> Response:
        if _is_api(request) or request.method != "GET":
            return JSONResponse({"detail": "not authenticated"}, status_code=401,
                                headers={"WWW-Authenticate": "Bearer"})
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        return RedirectResponse(f"/login?next={_quote(target)}", status_code=303)

    @app.exception_handler(WebError)
    async def bad_request(request: Request, exc: WebError) -> Response:
        return JSONResponse({"detail": str(exc)}, status_code=400)

    @app.exception_handler(ForbiddenError)
    async def forbidden(request: Request, exc: ForbiddenError) -> Response:
        if _is_api(request):
            return JSONResponse({"detail": str(exc)}, status_code=403)
        templates: Jinja2Templates = request.app.state.templates
        return templates.TemplateResponse(request, "error.html", {
            "title": "Refused", "message": str(exc),
            "principal": getattr(request.state, "principal", None)}, status_code=403)


def _quote(text: str) -> str:
    from urllib.parse import quote

    return quote(text, safe="/")


def _replace_page(params: Any, page: int) -> str:
    """The query string of ``params`` with ``page`` replaced (pagination links)."""
    from urllib.parse import urlencode

    pairs = [(k, v) for k, v in params.multi_items() if k != "page"]
    return urlencode([*pairs, ("page", str(page))])
