"""Kubernetes probe of the authz sidecar: gRPC health checking over its Unix socket.

    authz_health.py answers [SERVICE]  the server answers a health check of SERVICE at all, whatever
                                       the status (it says NOT_SERVING while it loads its token
                                       snapshot): the startup probe.
    authz_health.py serving [SERVICE]  SERVICE is SERVING. The readiness probe asks for
                                       envoy.service.auth.v3.Authorization (the snapshot is loaded);
                                       the liveness probe for keyward.authz.Background (every
                                       background task is up and the event loop is not stuck).

SERVICE defaults to envoy.service.auth.v3.Authorization. ``live`` and ``ready`` are the older names of
``answers`` and ``serving`` (pods of a previous release still call them during an upgrade).
Exit status 0 passes the probe, 1 fails it, 2 is a usage error.
"""

import os
import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

DEFAULT_SERVICE = "envoy.service.auth.v3.Authorization"
MODES = {"answers": "answers", "serving": "serving", "live": "answers", "ready": "serving"}


def main(argv: list[str]) -> int:
    mode = MODES.get(argv[1]) if len(argv) > 1 else "serving"
    if mode is None or len(argv) > 3 or (len(argv) == 3 and not argv[2]):
        print(f"usage: {argv[0]} answers|serving [SERVICE]", file=sys.stderr)
        return 2
    service = argv[2] if len(argv) == 3 else DEFAULT_SERVICE
    address = os.environ.get("KEYWARD_AUTHZ_ADDRESS", "unix:/sockets/authz.sock")
    try:
        with grpc.insecure_channel(address) as channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=2
            )
    except grpc.RpcError as exc:
        code = exc.code()  # type: ignore[attr-defined]
        if mode == "answers" and code == grpc.StatusCode.NOT_FOUND:
            return 0  # the server answered; it does not know that service (yet)
        print(f"authz does not answer for {service} on {address}: {code.name}", file=sys.stderr)
        return 1
    if mode == "answers" or reply.status == health_pb2.HealthCheckResponse.SERVING:
        return 0
    print(f"authz reports {service} {health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)}",
          file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
