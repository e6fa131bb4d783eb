"""What each request cost, and whom it is counted against: added to its outcome line as it is read.

For every outcome line (:mod:`authz.audit.outcome_log`), :meth:`Costing.annotate` adds the cost of
the request (USD: input, cached input, output, total, the price version) from the usage Envoy read in
the response, and the dimensions the spend rollup is kept by (``spend``: token, owner, team, project,
environment, provider, model, tokens). :meth:`Costing.settle`, once the line is spooled, counts the
cost and tokens in the :class:`~authz.meter.Meter` and releases the request's reservation.

* A request that never reached a provider costs nothing (and counts nothing but its release); nor
  does one to an endpoint the provider does not charge for (listing models, counting tokens).
* A provider answer without usage (a stream whose client set ``stream_options`` without usage, an
  endpoint that reports none) is costed from an estimate, never recorded as zero: input and output
  tokens at four bytes each, and the line says ``usage_estimated``.
* A model no price table knows is recorded ``unpriced`` with no cost; it counts against no budget,
  so an admin sets a price for it (an override, zero for a self-hosted model).
"""

from __future__ import annotations

from typing import Any

from authz.audit.records import seconds_of, storable
from authz.cache import TokenCache
from authz.metrics import gen_ai_labels, observe_gen_ai
from authz.outcomes import Outcome
from authz.pipeline import Limits
from authz.prices import UNPRICED, usage_of
from authz.routes import match

#: Bytes per token of an estimate (text is about four characters a token).
_BYTES_PER_TOKEN = 4


def _count(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def _text(value: object) -> str | None:
    return value if isinstance(value, str) and value not in ("", "-") else None


class Costing:
    def __init__(self, cache: TokenCache, limits: Limits) -> None:
        self._cache = cache
        self.limits = limits

    def annotate(self, line: dict[str, Any], document: dict[str, Any]) -> None:
        """Add the request's cost and spend dimensions to its outcome ``line`` (from Envoy's ``document``)."""
        token_id = _text(document.get("token_id"))
        if document.get("decision") == Outcome.ANSWERED.value:  # the gateway answered: nothing was spent
            line.update(cost_usd="0", cost_input_usd="0", cost_cached_usd="0", cost_output_usd="0")
            return
        if token_id is None or document.get("decision") != "allowed":
            return  # refused, or answered without a decision: nothing reached a provider on its behalf
        # Client-chosen text (the model) is made storable like every other: one hostile name must not
        # make its batch unstorable.
        provider, model = storable(_text(document.get("provider")))[0], storable(_text(document.get("model")))[0]
        record = self._cache.by_id(token_id)
        spend: dict[str, Any] = {"token_id": token_id, "provider": provider, "model": model}
        if record is not None:
            spend.update(owner_type=record.owner_type, owner_id=record.owner_id, team_id=record.team_id,
                         project_id=record.project_id, environment=record.environment)
        line["spend"] = spend
        found = match(_text(document.get("method")) or "", _text(document.get("route")) or "")
        if line["upstream_status"] is None or found is None or found.endpoint.free:
            line.update(cost_usd="0", cost_input_usd="0", cost_cached_usd="0", cost_output_usd="0")
            spend.update(input_tokens=0, cached_tokens=0, output_tokens=0, cost_usd=0.0)
            return
        prompt, completion = line.get("prompt_tokens"), line.get("completion_tokens")
        cached, written = _count(document.get("cached_tokens")), _count(document.get("cache_write_tokens"))
        if cached is not None:
            line["cached_tokens"] = cached
        estimated = prompt is None and completion is None
        if estimated:
            prompt = (line.get("bytes_in") or 0) // _BYTES_PER_TOKEN
            completion = (line.get("bytes_out") or 0) // _BYTES_PER_TOKEN
            line["usage_estimated"] = True
        usage = usage_of(provider, prompt, completion, cached, written)
        spend.update(input_tokens=usage.input_tokens, cached_tokens=usage.cached_tokens,
                     output_tokens=usage.output_tokens, estimated=estimated)
        cost = None
        if provider is not None and model is not None:
            cost = self.limits.policy.prices.cost(provider, model, usage, seconds_of(line["at"]))
        if cost is None:
            line["price_version"] = UNPRICED
            spend["cost_usd"] = 0.0
            return
        line.update(cost_usd=str(cost.total_usd), cost_input_usd=str(cost.input_usd),
                    cost_cached_usd=str(cost.cached_usd), cost_output_usd=str(cost.output_usd),
                    price_version=cost.version)
        spend["cost_usd"] = float(cost.total_usd)

    def settle(self, line: dict[str, Any]) -> None:
        """Count a spooled outcome in the meter (its reservation released in any case)."""
        spend = line.get("spend")
        if spend is None:
            self.limits.meter.forget(line["request_id"])
            return
        keys: list[tuple[str, str]] = [("token", spend["token_id"])]
        if spend.get("owner_id"):
            keys.append((spend["owner_type"], spend["owner_id"]))
        if spend.get("project_id"):
            keys.append(("project", spend["project_id"]))
        if spend.get("team_id"):
            keys.append(("team", spend["team_id"]))
        tokens = spend.get("input_tokens", 0) + spend.get("output_tokens", 0)
        self.limits.meter.settle(line["request_id"], tuple(keys), spend.get("cost_usd", 0.0), tokens,
                                  seconds_of(line["at"]))
        self._observe(line, spend)

    def _observe(self, line: dict[str, Any], spend: dict[str, Any]) -> None:
        """The GenAI metrics of a request let through (:mod:`authz.metrics`): its duration, and the tokens
        the provider reported (not an estimate, not a free endpoint's zero). Once per spooled outcome."""
        provider, model = spend.get("provider"), spend.get("model")
        known = self.limits.policy.prices.model_name(provider, model) if provider and model else None
        record = self._cache.by_id(spend["token_id"])
        labels = gen_ai_labels(provider, known, record.team if record is not None else None)
        duration = line.get("duration_ms")
        reported = spend.get("estimated") is False
        observe_gen_ai(labels, seconds=duration / 1000 if duration is not None else None,
                       input_tokens=spend.get("input_tokens") if reported else None,
                       output_tokens=spend.get("output_tokens") if reported else None)
