"""A real OTLP/gRPC trace receiver for the tracing tests: ``opentelemetry-proto``'s TraceService on grpcio.

Run as its own process (``python -m tests.e2e.otlp_collector SPANS_FILE``): it prints the port it listens
on (127.0.0.1) and appends every span it is sent to SPANS_FILE, one JSON object a line. Not in the test
process: a gRPC server there makes the stack's fork-and-exec of its children racy (gRPC's fork handlers).
"""

from __future__ import annotations

import json
import signal
import sys
import threading
from concurrent import futures
from typing import Any

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.common.v1.common_pb2 import AnyValue


def _value(value: AnyValue) -> Any:
    kind = value.WhichOneof("value")
    if kind == "array_value":
        return [_value(item) for item in value.array_value.values]
    if kind == "kvlist_value":
        return {pair.key: _value(pair.value) for pair in value.kvlist_value.values}
    if kind == "bytes_value":
        return value.bytes_value.hex()
    return getattr(value, kind) if kind else None


class Collector(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self, out: Any) -> None:
        self._out = out
        self._lock = threading.Lock()

    def Export(self, request: trace_service_pb2.ExportTraceServiceRequest,
               context: grpc.ServicerContext) -> trace_service_pb2.ExportTraceServiceResponse:
        lines = []
        for resource_spans in request.resource_spans:
            resource = {pair.key: _value(pair.value) for pair in resource_spans.resource.attributes}
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    lines.append(json.dumps({
                        "service": resource.get("service.name", ""), "name": span.name,
                        "trace_id": span.trace_id.hex(), "span_id": span.span_id.hex(),
                        "parent_id": span.parent_span_id.hex(), "kind": span.kind,
                        "start": span.start_time_unix_nano, "end": span.end_time_unix_nano,
                        "attributes": {pair.key: _value(pair.value) for pair in span.attributes},
                    }))
        with self._lock:
            self._out.write("".join(line + "\n" for line in lines))
            self._out.flush()
        return trace_service_pb2.ExportTraceServiceResponse()


def main() -> None:
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with open(sys.argv[1], "a") as out:
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(Collector(out), server)
        port = server.add_insecure_port("127.0.0.1:0")
        server.start()
        print(port, flush=True)
        stop.wait()
        server.stop(grace=1).wait()


if __name__ == "__main__":
    main()
