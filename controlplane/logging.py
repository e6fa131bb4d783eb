"""The control plane's logs in Keyward's one schema (:mod:`authz.logs`), uvicorn's own lines included, and
the request id every HTTP request is logged with.

* :func:`configure` sets up structlog and the standard library as authz does, under ``process`` (the
  mock provider calls it too), and takes over uvicorn's loggers: uvicorn configured them with its own
  text handlers before it imported the app (``--factory`` calls :func:`controlplane.main.create_app` before
  uvicorn logs its first line), and from then on they propagate to the root logger's JSON handler.
  Whatever starts uvicorn (the stack runner, the Helm chart, a test) gets JSON with no extra flag.
* uvicorn's access line becomes ``{"event": "http.access", "method", "path", "status", "http_version",
  "client", "request_id"}``. The path is without its query string: a query may carry a one-time sign-in
  code (``/console/enter?code=…``) or an OIDC authorization code.
* :class:`RequestId` (an ASGI middleware, the outermost): each request's id is the client's
  ``X-Request-Id`` when it is a plain identifier (letters, digits, ``._:-``, at most 128, and nothing that
  looks like a credential), else a new one; it is bound to every line logged while the request is served
  (uvicorn's access line included) and returned in the ``X-Request-Id`` response header.
* :data:`ENVOY_LOG_FORMAT`: Envoy's own log in the schema (``--log-format``; ``%j`` is the message,
  JSON-escaped). The stack runner passes it, and the Helm chart's gateway args carry the same string.
"""

from __future__ import annotations

import logging
import re
import uuid
from typing import Any

import structlog
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from structlog.typing import EventDict, WrappedLogger

from authz import logs
from authz.logs import json_line, scrub

__all__ = ["ENVOY_LOG_FORMAT", "REQUEST_ID_HEADER", "RequestId", "configure", "json_line"]

#: Envoy's application log as one JSON object per line (spdlog pattern flags: ``%f`` microseconds, ``%z``
#: the UTC offset, ``+00:00`` with ``TZ=UTC``, ``%l`` the level, ``%j`` the message JSON-escaped, ``%n`` the
#: logger, ``%t`` the thread). Keep k8s/keyward/templates/_gateway.tpl's ``--log-format`` the same.
ENVOY_LOG_FORMAT = ('{"time":"%Y-%m-%dT%H:%M:%S.%f%z","level":"%l","process":"envoy","event":"%j",'
                    '"logger":"%n","thread":%t}')
REQUEST_ID_HEADER = "x-request-id"
_PLAIN_ID = re.compile(r"[A-Za-z0-9._:\-]{1,128}")
#: uvicorn's loggers; each configured with a handler of its own is handed to the root logger.
_UVICORN = ("uvicorn", "uvicorn.error", "uvicorn.access", "uvicorn.asgi")


def configure(level: str = "info", *, process: str = "controlplane") -> None:
    """Log as ``process`` in the schema; uvicorn's error and access lines too."""
    logs.configure(level, process=process, foreign=[_uvicorn_access])
    for name in _UVICORN:
        logger = logging.getLogger(name)
        if logger.handlers:  # an access log turned off (--no-access-log) has none, and stays off
            logger.handlers.clear()
            logger.propagate = True


def _uvicorn_access(_: WrappedLogger, __: str, event: EventDict) -> EventDict:
    """uvicorn's ``'%s - "%s %s HTTP/%s" %d'`` (client, method, path?query, version, status) as fields."""
    record = event.get("_record")
    args = event.get("positional_args")
    if record is None or record.name != "uvicorn.access" or not isinstance(args, tuple) or len(args) != 5:
        return event
    client, method, target, version, status = args
    event.update(event="http.access", method=str(method), path=str(target).split("?", 1)[0],
                 status=status if isinstance(status, int) else _int(status), http_version=str(version),
                 client=str(client))
    return event


def _int(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def request_id(sent: str | None) -> str:
    """The id a request is logged under: the client's, when it is a plain identifier, else a new one."""
    if sent and _PLAIN_ID.fullmatch(sent) and scrub(sent) == sent:
        return sent
    return uuid.uuid4().hex


class RequestId:
    """Bind each HTTP request's id to its log lines and return it in ``X-Request-Id``.

    The binding is undone when the request is answered. When the app raises, it is left in place: the
    500 that Starlette's outermost error middleware then sends, and uvicorn's access line for it, are
    logged with the id. Each request runs in its own task (its own copy of the context), so a binding
    never outlives its request.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        sent = None
        for name, value in scope["headers"]:
            if name == b"x-request-id":
                sent = value.decode("latin-1")
                break
        rid = request_id(sent)
        tokens = structlog.contextvars.bind_contextvars(request_id=rid)
        header = (b"x-request-id", rid.encode())

        async def sending(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"x-request-id"]
                message = {**message, "headers": [*headers, header]}
            await send(message)

        await self.app(scope, receive, sending)
        structlog.contextvars.reset_contextvars(**tokens)
