"""``cxr-triage web`` (the web app under uvicorn) and ``cxr-triage users`` (accounts, tokens)."""

from __future__ import annotations

import argparse
import getpass
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy.orm import Session

from common.config import apply_overrides
from db.models import Role
from web.errors import WebError
from web.settings import WebSettings

PASSWORD_ENV = "TRIAGE_WEB_PASSWORD"  # non-interactive `users add/passwd` (scripts, the demo)


def _web(args: argparse.Namespace) -> int:
    import uvicorn

    from web.app import create_app

    settings = apply_overrides(WebSettings.from_env(), host=args.host, port=args.port)
    app = create_app(settings)
    print(f"cxr-triage web: http://{settings.host}:{settings.port}/ (API docs at /api/docs)",
          file=sys.stderr)
    uvicorn.run(app, host=settings.host, port=settings.port, log_level="warning",
                proxy_headers=bool(settings.trusted_proxies),
                forwarded_allow_ips=",".join(settings.trusted_proxies), server_header=False)
    return 0


@contextmanager
def _session(url: str | None) -> Iterator[Session]:
    from db.migrate import require_current
    from db.session import make_engine, make_session_factory

    engine = make_engine(url or WebSettings.from_env().db.url)
    try:
        require_current(engine)
        with make_session_factory(engine).begin() as session:
            yield session
    finally:
        engine.dispose()


def _password(args: argparse.Namespace) -> str:
    if os.environ.get(PASSWORD_ENV):
        return os.environ[PASSWORD_ENV]
    if not sys.stdin.isatty():
        return sys.stdin.readline().rstrip("\n")
    first = getpass.getpass(f"password for {args.username}: ")
    if getpass.getpass("again: ") != first:
        raise WebError("the two passwords differ; try again")
    return first


def _users(args: argparse.Namespace) -> int:
    from web import accounts

    action = args.users_command
    with _session(args.db_url) as session:
        if action == "add":
            accounts.add_user(session, args.username, _password(args), Role(args.role),
                              can_view_phi=args.phi)
            print(f"user {args.username} added ({args.role}{', PHI' if args.phi else ''})")
        elif action == "passwd":
            accounts.set_password(session, args.username, _password(args))
            print(f"password of {args.username} changed; its sessions have ended")
        elif action == "remove":
            accounts.remove_user(session, args.username)
            print(f"user {args.username} removed")
        elif action == "token":
            token = accounts.create_token(session, args.name, Role(args.role), args.phi)
            print(token)
            print(f"bearer token of service account {args.name}: shown once, keep it",
                  file=sys.stderr)
        elif action == "revoke":
            if not accounts.revoke_token(session, args.name):
                raise WebError(f"service account {args.name!r} has no token")
            print(f"token of {args.name} revoked")
        else:
            for user in accounts.list_users(session):
                print(f"{user.username:24} {user.role.value:12} "
                      f"{'PHI' if user.can_view_phi else '-':4} "
                      f"{'active' if user.active else 'inactive'}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``web`` and ``users``."""
    web = subparsers.add_parser("web", help="serve the web worklist, operations pages and API")
    web.add_argument("--host", help="listen address (TRIAGE_WEB_HOST, default 127.0.0.1)")
    web.add_argument("--port", type=int, help="port (TRIAGE_WEB_PORT, default 8080)")
    web.set_defaults(func=_web)

    users = subparsers.add_parser("users", help="web accounts and service-account tokens")
    users.add_argument("--db-url", help="SQLAlchemy URL (TRIAGE_DB_URL)")
    actions = users.add_subparsers(dest="users_command", metavar="ACTION", required=True)
    roles = [r.value for r in Role]
    add = actions.add_parser("add", help="add a user (password from a prompt, stdin or "
                             f"{PASSWORD_ENV})")
    add.add_argument("username")
    add.add_argument("--role", choices=roles, default=Role.RADIOLOGIST.value)
    add.add_argument("--phi", action="store_true", help="may see patient name and ID")
    passwd = actions.add_parser("passwd", help="change a password (ends its sessions)")
    passwd.add_argument("username")
    remove = actions.add_parser("remove", help="delete a user")
    remove.add_argument("username")
    actions.add_parser("list", help="list users")
    token = actions.add_parser("token", help="create a bearer token for a service account")
    token.add_argument("name")
    token.add_argument("--role", choices=roles, default=Role.RADIOLOGIST.value)
    token.add_argument("--phi", action="store_true", help="the API shows patient name and ID")
    revoke = actions.add_parser("revoke", help="revoke a service account's token")
    revoke.add_argument("name")
    for parser in (add, passwd, remove, token, revoke):
        parser.set_defaults(func=_users)
    actions.choices["list"].set_defaults(func=_users)
