"""``envoy.service.accesslog.v3.AccessLogService``: the receiver of Envoy's gRPC access log.

Envoy streams one entry per finished request, batched into messages; each message's outcome lines go
to the audit spool through :meth:`authz.audit.emitter.AuditEmitter.outcomes`. A stream lives as long
as its Envoy worker and holds one thread of the server's stream pool for that whole time, so nothing
one message holds may end it: ``outcomes`` settles every line of a message itself (spooled, or
counted and logged) and never raises over a line it could not write.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import grpc
from envoy.service.accesslog.v3 import als_pb2, als_pb2_grpc

from authz.audit.emitter import AuditEmitter


class AccessLogReceiver(als_pb2_grpc.AccessLogServiceServicer):
    def __init__(self, audit: AuditEmitter) -> None:
        self._audit = audit

    def StreamAccessLogs(self, request_iterator: Iterator[als_pb2.StreamAccessLogsMessage],
                         context: Any) -> als_pb2.StreamAccessLogsResponse:
        for message in request_iterator:
            self._audit.outcomes(message.http_logs.log_entry)
        return als_pb2.StreamAccessLogsResponse()

    def add_to(self, server: grpc.Server) -> None:
        als_pb2_grpc.add_AccessLogServiceServicer_to_server(self, server)
