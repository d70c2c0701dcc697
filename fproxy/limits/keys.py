"""Per-key limits of virtual keys: allowed models, RPM, TPM, concurrency, budgets.

`KeyLimits.admit` runs before a call is routed and either refuses it (403 for a model the key
may not use, 429 naming the limit, with ``Retry-After`` when the limit will lift) or returns
an `Admission` holding what it took; `KeyLimits.settle` gives it back when the call ends:

- RPM: one entry in a 60 s sliding window per admitted call.
- TPM: prompt + completion tokens in a 60 s sliding window.  An estimate of the prompt is
  reserved at admission and replaced by the real usage at the end.
- concurrency: a slot (`State.slot_take`), taken at admission, released at the end; no
  queueing per key.
- budgets: tokens and USD spent in the current period (UTC day, month, or ever), counted
  from every finished call and seeded from the ledger at start.  Checked at admission only,
  so the call that crosses the budget completes; the next one is refused.

Counters live in the `fproxy.state.base.State` backend, keyed by key id.  Static and admin
keys have no limits.
"""
from __future__ import annotations

import fnmatch
from typing import Any

from attrs import define
from twisted.logger import Logger

from fproxy.ir.errors import GatewayError
from fproxy.state.base import State
from fproxy.store.base import KeyRecord
from fproxy.store.usage import estimate_prompt_tokens
from fproxy.timeutil import period_end, period_label, period_start

log = Logger()

WINDOW = 60.0
PERIODS: tuple[str | None, ...] = ("day", "month", None)
_TTL = {"day": 2 * 86400.0, "month": 32 * 86400.0, None: None}


def model_allowed(rec: KeyRecord | None, model: str) -> bool:
    """Whether a key may use ``model`` (the name the client asked for); no globs = any model."""
    if rec is None or not rec.models:
        return True
    return any(model == g or fnmatch.fnmatchcase(model, g) for g in rec.models)


def limit_error(code: str, message: str, retry_after: float | None) -> GatewayError:
    return GatewayError(429, f"{message} ({code})", code=code, retry_after=retry_after)


@define(eq=False)
class Admission:
    """What an admitted call holds, to be given back by `KeyLimits.settle`."""

    key_id: str
    concurrency: Any = None  # the slot handle from State.slot_take
    tpm_handle: Any = None
    reserved: int = 0


def _spend_key(kind: str, key_id: str, label: str) -> str:
    return f"spend:{kind}:{key_id}:{label}"


class KeyLimits:
    def __init__(self, state: State, clock: Any) -> None:
        self._state = state
        self._clock = clock
        #: ``--workers N`` with ``memory:`` state: each worker enforces 1/N of rpm, tpm and concurrency
        #: (set by `fproxy.tap`); 1 otherwise, and with a shared backend.
        self.divisor = 1

    def _share(self, limit: int) -> int:
        """This process's part of a per-key limit: ``limit // divisor``, at least 1."""
        return limit if self.divisor <= 1 else max(1, limit // self.divisor)

    # ------------------------------------------------------------ admission
    async def admit(self, rec: KeyRecord | None, model: str, body: dict[str, Any]) -> Admission | None:
        """Refuse (raise) or admit one call of the key ``rec`` (None: a key without limits)."""
        if rec is None:
            return None
        if not model_allowed(rec, model):
            raise GatewayError(403, f"This key may not use the model `{model}`.", code="model_not_allowed",
                               param="model")
        if rec.has_budget:
            await self._check_budget(rec)
        adm = Admission(rec.id)
        s = self._state
        try:
            if rec.max_concurrency is not None:
                slot = await s.slot_take(f"conc:{rec.id}", self._share(rec.max_concurrency))
                if slot is None:
                    raise limit_error("concurrency_exceeded", f"This key already has {rec.max_concurrency} "
                                      "request(s) running, its concurrency limit", 1.0)
                adm.concurrency = slot
            if rec.rpm is not None:
                t = await s.window_take(f"rpm:{rec.id}", 1, self._share(rec.rpm), WINDOW)
                if not t.ok:
                    raise limit_error("rpm_exceeded", f"This key is limited to {rec.rpm} requests per minute",
                                      t.retry_after)
                rpm_handle = t.handle
            else:
                rpm_handle = None
            if rec.tpm is not None:
                est = estimate_prompt_tokens(body)
                t = await s.window_take(f"tpm:{rec.id}", est, self._share(rec.tpm), WINDOW)
                if not t.ok:
                    if rpm_handle is not None:
                        await s.window_set(f"rpm:{rec.id}", rpm_handle, 0)
                    raise limit_error("tpm_exceeded", f"This key is limited to {rec.tpm} tokens per minute "
                                      f"({int(t.used)} used in the last minute)", t.retry_after)
                adm.tpm_handle, adm.reserved = t.handle, est
        except GatewayError:
            if adm.concurrency is not None:
                await s.slot_release(f"conc:{rec.id}", adm.concurrency)
            raise
        return adm

    async def _check_budget(self, rec: KeyRecord) -> None:
        now = self._clock.seconds()
        label = period_label(rec.budget_period, now)
        end = period_end(rec.budget_period, now)
        retry = max(1.0, end - now) if end is not None else None
        when = {"day": "today", "month": "this month", None: "in total"}[rec.budget_period]
        if rec.budget_tokens is not None:
            spent = await self._state.counter_get(_spend_key("tokens", rec.id, label))
            if spent >= rec.budget_tokens:
                raise limit_error("budget_exceeded", f"This key has used its token budget: {int(spent)} of "
                                  f"{rec.budget_tokens} tokens {when}", retry)
        if rec.budget_usd is not None:
            spent = await self._state.counter_get(_spend_key("usd", rec.id, label))
            if spent >= rec.budget_usd:
                raise limit_error("budget_exceeded", f"This key has used its budget: ${spent:.4f} of "
                                  f"${rec.budget_usd:.4f} {when}", retry)

    # ------------------------------------------------------------ settlement
    async def settle(self, adm: Admission, tokens: int, usd: float) -> None:
        """The call ended having used ``tokens`` (prompt + completion) costing ``usd``."""
        s = self._state
        if adm.concurrency is not None:
            slot, adm.concurrency = adm.concurrency, None
            await s.slot_release(f"conc:{adm.key_id}", slot)
        if adm.tpm_handle is not None:
            await s.window_set(f"tpm:{adm.key_id}", adm.tpm_handle, tokens)
        await self.add_spend(adm.key_id, tokens, usd)

    async def add_spend(self, key_id: str, tokens: int, usd: float) -> None:
        if not tokens and not usd:
            return
        now = self._clock.seconds()
        for period in PERIODS:
            label = period_label(period, now)
            await self._state.counter_add(_spend_key("tokens", key_id, label), tokens, _TTL[period])
            await self._state.counter_add(_spend_key("usd", key_id, label), usd, _TTL[period])

    async def spent(self, rec: KeyRecord) -> dict[str, Any]:
        """The key's spend in its budget period (for GET /api/keys/{id})."""
        now = self._clock.seconds()
        label = period_label(rec.budget_period, now)
        return {"period": rec.budget_period, "since": period_start(rec.budget_period, now),
                "tokens": int(await self._state.counter_get(_spend_key("tokens", rec.id, label))),
                "usd": round(await self._state.counter_get(_spend_key("usd", rec.id, label)), 6)}

    # ------------------------------------------------------------ seeding
    async def seed(self, store: Any) -> None:
        """Spend per key for today, this month and ever, from the ledger (at start, and when a shared
        state backend comes back: it may have lost its counters).  A counter already higher (other
        instances' calls not yet in the ledger) is kept."""
        now = self._clock.seconds()
        for period in PERIODS:
            label = period_label(period, now)
            totals = await store.spend_by_key(period_start(period, now))
            for key_id, (tokens, usd) in totals.items():
                await self._state.counter_raise(_spend_key("tokens", key_id, label), tokens, _TTL[period])
                await self._state.counter_raise(_spend_key("usd", key_id, label), usd, _TTL[period])
