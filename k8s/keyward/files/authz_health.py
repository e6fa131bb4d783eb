"""Kubernetes probe of the authz sidecar: gRPC health checking over its Unix socket.

``live``: the server answers at all (even NOT_SERVING, while it loads its token snapshot).
``ready``: it is SERVING ``envoy.service.auth.v3.Authorization``: the snapshot is loaded.
Exit status 0 passes the probe, anything else fails it.
"""

import os
import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

SERVICE = "envoy.service.auth.v3.Authorization"


def main(argv: list[str]) -> int:
    mode = argv[1] if len(argv) > 1 else "ready"
    if mode not in ("live", "ready"):
        print(f"usage: {argv[0]} live|ready", file=sys.stderr)
        return 2
    address = os.environ.get("KEYWARD_AUTHZ_ADDRESS", "unix:/sockets/authz.sock")
    try:
        with grpc.insecure_channel(address) as channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=SERVICE), timeout=2
            )
    except grpc.RpcError as exc:
        print(f"authz does not answer on {address}: {exc.code().name}", file=sys.stderr)
        return 1
    if mode == "live" or reply.status == health_pb2.HealthCheckResponse.SERVING:
        return 0
    print(f"authz is {health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
