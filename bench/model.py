"""What one benchmark run measured: plain data, filled in by ``run.py`` and rendered by ``report.py``."""

from __future__ import annotations

import datetime as dt
import statistics
from dataclasses import dataclass, field

from auditbench import IngestRun
from auditquery import Generated, Question, SpendGenerated
from authzbench import CheckResult, LoadMeasurement
from loadgen import LoadResult
from spendbench import Overshoot


@dataclass(frozen=True)
class Profile:
    name: str
    #: Seconds per measured load-generator run, and how many interleaved rounds of them.
    duration: float
    rounds: int
    warmup: float
    check_duration: float
    revocations: int
    token_counts: tuple[int, ...]
    #: Requests (two lines each, mostly) per audit ingest run, and synthetic records for the queries.
    ingest_requests: int = 50_000
    audit_rows: int = 10_000_000
    #: Concurrency and rounds of the "shipping on / shipping off" gateway comparison.
    audit_cost_concurrency: int = 16
    audit_cost_rounds: int = 2


@dataclass(frozen=True)
class Target:
    key: str
    label: str
    port: int
    path: str
    #: The reverse proxy in front of the upstream, by its name in the CPU table (None: no proxy).
    proxy: str | None
    measures_authz: bool = False


@dataclass
class Round:
    result: LoadResult
    #: CPU seconds per measured process over the run.
    cpu: dict[str, float]
    #: CPU seconds the whole machine was busy over the run.
    machine_cpu: float

    @property
    def other_cpu(self) -> float:
        """CPU seconds used by anything but the load generator and the measured processes."""
        return max(0.0, self.machine_cpu - sum(self.cpu.values()) - self.result.generator_cpu)


@dataclass
class HttpCell:
    """One (concurrency, target) pair: its rounds and their medians."""

    concurrency: int
    target: Target
    rounds: list[Round] = field(default_factory=list)

    def _median(self, attribute: str) -> float:
        return statistics.median(getattr(r.result, attribute) for r in self.rounds)

    @property
    def rps(self) -> float:
        return self._median("rps")

    @property
    def p50_ms(self) -> float:
        return self._median("p50_ms")

    @property
    def p99_ms(self) -> float:
        return self._median("p99_ms")

    @property
    def max_ms(self) -> float:
        return max(r.result.max_ms for r in self.rounds)

    @property
    def rps_range(self) -> tuple[float, float]:
        values = [r.result.rps for r in self.rounds]
        return min(values), max(values)

    @property
    def requests(self) -> int:
        return sum(r.result.requests for r in self.rounds)

    @property
    def seconds(self) -> float:
        return sum(r.result.seconds for r in self.rounds)

    @property
    def errors(self) -> int:
        return sum(r.result.errors for r in self.rounds)

    @property
    def error_detail(self) -> str:
        return "; ".join(r.result.error_detail for r in self.rounds if r.result.error_detail)

    def cpu_us(self, name: str) -> float:
        """CPU microseconds per request of one process, over all rounds."""
        return sum(r.cpu[name] for r in self.rounds) / self.requests * 1e6

    def cores(self, name: str) -> float:
        return sum(r.cpu[name] for r in self.rounds) / self.seconds

    @property
    def generator_cpu_us(self) -> float:
        return sum(r.result.generator_cpu for r in self.rounds) / self.requests * 1e6

    @property
    def machine_cores(self) -> float:
        return sum(r.machine_cpu for r in self.rounds) / self.seconds

    @property
    def other_cores(self) -> float:
        return sum(r.other_cpu for r in self.rounds) / self.seconds


@dataclass
class Revocations:
    propagation_ms: list[float] = field(default_factory=list)
    api_ms: list[float] = field(default_factory=list)
    first_poll_denied: int = 0
    mint_seconds: float = 0.0


@dataclass
class Results:
    profile: Profile
    started: dt.datetime
    machine: dict[str, str]
    loadgen: str
    http: list[HttpCell] = field(default_factory=list)
    commands: list[str] = field(default_factory=list)
    wrk_script: str = ""
    checks: list[CheckResult] = field(default_factory=list)
    #: The same Check with a budget and a rate limit in force (both evaluated, neither reached).
    checks_limited: list[CheckResult] = field(default_factory=list)
    overshoot: Overshoot | None = None
    check_request_bytes: int = 0
    revocations: Revocations = field(default_factory=Revocations)
    loads: list[LoadMeasurement] = field(default_factory=list)
    insert_seconds: list[float] = field(default_factory=list)
    #: How the bulk COPY ran (whether per-row triggers were off).
    bulk_note: str = ""
    #: Audit: ingest runs, what a resent batch did (stored, duplicates), verify's verdict per chain.
    ingest: list[IngestRun] = field(default_factory=list)
    ingest_resend: tuple[int, int] | None = None
    ingest_verify: list[str] = field(default_factory=list)
    #: The gateway with the shipper shipping ("on") and with it pointed at a closed port ("off").
    audit_cost: list[HttpCell] = field(default_factory=list)
    audit_generated: Generated | None = None
    audit_questions: list[Question] = field(default_factory=list)
    audit_skipped: str = ""
    #: ``spend_daily`` filled for the same synthetic requests, and finance's questions over it.
    spend_generated: SpendGenerated | None = None
    spend_questions: list[Question] = field(default_factory=list)
    #: Effective access, the register and the evidence pack over the first step of bulk tokens.
    governance: list[Question] = field(default_factory=list)
    governance_people: int = 0
    governance_tokens: int = 0
    #: The console's pages at the bulk tokens' scale, and at the synthetic records' scale.
    console_tokens: list[Question] = field(default_factory=list)
    console_records: list[Question] = field(default_factory=list)
    finished: dt.datetime | None = None
    load_average_end: str = ""

    def cell(self, concurrency: int, key: str) -> HttpCell | None:
        return next((c for c in self.http if c.concurrency == concurrency and c.target.key == key), None)
