"""What a request cost: the bundled price table of ``genai-prices`` and the admin's overrides.

* A price has a version, recorded with every cost: ``genai-prices <package version>`` for the bundled
  table (which carries each model's price history, so a request is priced as of its own time), or
  ``override:<id>`` for an admin's price (``price_overrides``: a provider's model, from a date on).
* Usage follows OpenAI's convention: ``input_tokens`` counts every input token, cached reads and cache
  writes included; ``cached_tokens`` and ``cache_write_tokens`` say how many of them were which.
  Anthropic reports them apart; :func:`usage_of` adds them up.
* A model neither table knows has no price: its cost is ``None`` and its record says ``unpriced``,
  never a silent zero. An override with a zero rate is how a self-hosted model is made free.
* :meth:`PriceTable.rates` is what a Check may call (a memoised dict lookup): per-token rates for the
  reservation of a budget. :meth:`PriceTable.cost` runs off the request path, when the outcome is read.

A table is immutable once built; authz builds a new one when the overrides change.
"""

from __future__ import annotations

import bisect
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal

import genai_prices

from authz.upstreams import CACHE_APART, PRICE_PROVIDERS, Upstreams

LIBRARY_VERSION = f"genai-prices {genai_prices.__version__}"
UNPRICED = "unpriced"
#: Model names :meth:`PriceTable.model_name` remembers before it starts again (clients choose the names).
NAMES_KEPT = 4096
_MILLION = Decimal(1_000_000)
_ZERO = Decimal(0)


@dataclass(frozen=True, slots=True)
class Usage:
    input_tokens: int = 0
    cached_tokens: int = 0
    cache_write_tokens: int = 0
    output_tokens: int = 0

    @property
    def total(self) -> int:
        return self.input_tokens + self.output_tokens


#: Upstream name -> the bundled table's provider id its models are priced under (an upstream not
#: listed: its own name, as ``openai`` and ``anthropic`` are); set once at start by :func:`configure`.
_BUNDLED: dict[str, str | None] = {}
#: Upstreams whose input tokens leave out cache reads and writes (Anthropic's convention).
_CACHE_APART: set[str] = {"anthropic"}


def configure(upstreams: Upstreams) -> None:
    """Price each configured upstream's models under its kind's provider in the bundled table (an Azure
    upstream named ``azure-east`` as ``azure``); overrides are per upstream name."""
    _BUNDLED.clear()
    _BUNDLED.update({u.name: PRICE_PROVIDERS[u.kind] for u in upstreams.all})
    _CACHE_APART.clear()
    _CACHE_APART.update(u.name for u in upstreams.all if u.kind in CACHE_APART)


def bundled_provider(upstream: str) -> str | None:
    """The bundled price table's provider id for an upstream's models (None: it prices none)."""
    return _BUNDLED.get(upstream, upstream)


def usage_of(provider: str | None, prompt: int | None, completion: int | None, cached: int | None = None,
             cache_write: int | None = None) -> Usage:
    """Usage as the price table counts it, from what the provider reported. Anthropic's (and Bedrock's)
    input tokens leave out cache reads and writes; OpenAI's ``prompt_tokens`` includes its cached
    tokens."""
    cached, cache_write = cached or 0, cache_write or 0
    prompt = prompt or 0
    if provider in _CACHE_APART:
        prompt += cached + cache_write
    return Usage(input_tokens=prompt, cached_tokens=min(cached, prompt), cache_write_tokens=cache_write,
                 output_tokens=completion or 0)


@dataclass(frozen=True, slots=True)
class Rates:
    """USD per token, for estimates (a reservation at Check time)."""

    input: float
    cached_input: float
    output: float
    version: str


@dataclass(frozen=True, slots=True)
class Override:
    id: str
    provider: str
    model: str
    input_per_mtok: Decimal
    cached_input_per_mtok: Decimal | None
    output_per_mtok: Decimal
    #: Seconds since the epoch.
    effective_from: float

    @property
    def version(self) -> str:
        return f"override:{self.id}"

    def rates(self) -> Rates:
        cached = self.input_per_mtok if self.cached_input_per_mtok is None else self.cached_input_per_mtok
        return Rates(float(self.input_per_mtok / _MILLION), float(cached / _MILLION),
                     float(self.output_per_mtok / _MILLION), self.version)


@dataclass(frozen=True, slots=True)
class Cost:
    #: Input that was not a cache read (cache writes included), cache reads, output, and their sum.
    input_usd: Decimal
    cached_usd: Decimal
    output_usd: Decimal
    total_usd: Decimal
    version: str


def _when(at: float) -> datetime:
    return datetime.fromtimestamp(at, tz=UTC)


def _mtok(value: object) -> Decimal | None:
    """A bundled per-million price as one number: tiered prices by their base tier."""
    if value is None:
        return None
    if isinstance(value, Decimal):
        return value
    base = getattr(value, "base", None)
    return base if isinstance(base, Decimal) else None


class PriceTable:
    def __init__(self, overrides: Iterable[Override] = ()) -> None:
        by_model: dict[tuple[str, str], list[Override]] = {}
        for override in overrides:
            by_model.setdefault((override.provider, override.model), []).append(override)
        self._overrides = {key: sorted(found, key=lambda o: o.effective_from) for key, found in by_model.items()}
        self._starts = {key: [o.effective_from for o in found] for key, found in self._overrides.items()}
        #: (provider, model) -> the bundled table's current rates, or None: unknown there.
        self._library: dict[tuple[str, str], Rates | None] = {}
        #: (provider, model) -> the name a table knows the model by (:meth:`model_name`), on the loop thread.
        self._names: dict[tuple[str, str], str | None] = {}

    def _override(self, provider: str, model: str, at: float) -> Override | None:
        starts = self._starts.get((provider, model))
        if not starts:
            return None
        index = bisect.bisect_right(starts, at) - 1
        return self._overrides[(provider, model)][index] if index >= 0 else None

    def rates(self, provider: str, model: str, at: float) -> Rates | None:
        """Per-token rates now (for an estimate); None for a model no table prices."""
        override = self._override(provider, model, at)
        if override is not None:
            return override.rates()
        key = (provider, model)
        if key not in self._library:
            self._library[key] = self._library_rates(provider, model, at)
        return self._library[key]

    @staticmethod
    def _library_rates(provider: str, model: str, at: float) -> Rates | None:
        bundled = bundled_provider(provider)
        if bundled is None:
            return None
        try:
            _, found = genai_prices.data_snapshot.get_snapshot().find_provider_model(model, None, bundled, None)
        except LookupError:
            return None
        prices = found.get_prices(_when(at))
        per_input = _mtok(getattr(prices, "input_mtok", None))
        per_output = _mtok(getattr(prices, "output_mtok", None))
        if per_input is None or per_output is None:
            return None
        per_cached = _mtok(getattr(prices, "cache_read_mtok", None))
        return Rates(float(per_input / _MILLION), float((per_cached or per_input) / _MILLION),
                     float(per_output / _MILLION), LIBRARY_VERSION)

    def cost(self, provider: str, model: str, usage: Usage, at: float) -> Cost | None:
        """What ``usage`` of ``model`` at ``at`` cost; None when no table prices the model."""
        override = self._override(provider, model, at)
        if override is not None:
            cached_rate = override.input_per_mtok if override.cached_input_per_mtok is None \
                else override.cached_input_per_mtok
            cached = Decimal(usage.cached_tokens) * cached_rate / _MILLION
            uncached = Decimal(usage.input_tokens - usage.cached_tokens) * override.input_per_mtok / _MILLION
            output = Decimal(usage.output_tokens) * override.output_per_mtok / _MILLION
            return Cost(uncached, cached, output, uncached + cached + output, override.version)
        bundled = bundled_provider(provider)
        if bundled is None:
            return None
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                calculated = genai_prices.calc_price(
                    genai_prices.Usage(input_tokens=usage.input_tokens, cache_read_tokens=usage.cached_tokens,
                                       cache_write_tokens=usage.cache_write_tokens,
                                       output_tokens=usage.output_tokens),
                    model, provider_id=bundled, genai_request_timestamp=_when(at))
        except LookupError:
            return None
        per_cached = _mtok(getattr(calculated.model_price, "cache_read_mtok", None))
        cached = Decimal(usage.cached_tokens) * per_cached / _MILLION if per_cached is not None else _ZERO
        cached = min(cached, calculated.input_price)
        return Cost(calculated.input_price - cached, cached, calculated.output_price, calculated.total_price,
                    LIBRARY_VERSION)

    def model_name(self, provider: str, model: str) -> str | None:
        """The name a table prices ``model`` under: the model itself for an override, the bundled table's
        model id (``gpt-4o-mini-2024-07-18`` is ``gpt-4o-mini``), None for a model neither knows. The
        metrics label a request's model with it, so the label's values are bounded by the tables,
        whatever names clients send (at most :data:`NAMES_KEPT` looked-up names are remembered)."""
        key = (provider, model)
        if key in self._overrides:
            return model
        if key not in self._names:
            if len(self._names) >= NAMES_KEPT:
                self._names.clear()
            bundled = bundled_provider(provider)
            try:
                if bundled is None:
                    raise LookupError(provider)
                _, found = genai_prices.data_snapshot.get_snapshot().find_provider_model(model, None, bundled, None)
                self._names[key] = str(found.id)
            except LookupError:
                self._names[key] = None
        return self._names[key]

    def warm(self) -> None:
        """Load the bundled table now (about 0.4 s), not in the first request that needs it."""
        self.cost("openai", "gpt-4o-mini", Usage(1, 0, 0, 1), 0.0)
