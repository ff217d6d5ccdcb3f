"""Alert rules, as data, and the monitor that evaluates them as events are written.

A rule names the events it counts (``EventFilter``), what it counts them by (the caller, or the
customer a proof was attempted for), what it measures (events — a rate-limit summary counting as
the refusals it stands for — or distinct customers), and when it fires: at every matching event
(``threshold`` None) or when the measure within ``period`` exceeds the threshold. Thresholds come
from the settings (``SHOPVAULT_ALERT_*``).

The monitor is told of each committed append and evaluates in a background task, on its own
transaction: a request never waits for it. Counts are taken from the database, so a caller
spread over several processes is counted whole. One alert stays open per rule, actor, subject and
window; further matches make its ``count`` and ``last_at`` grow.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any
from zoneinfo import ZoneInfo

from limits import parse
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.audit import auditor_repository as repository
from app.config import Settings
from app.models import Alert
from app.roles import STORE_ROLES

log = logging.getLogger("shopvault.audit.alerts")

TOKYO = ZoneInfo("Asia/Tokyo")
# Alert windows are aligned on midnight in Tokyo (a one-day window is a shop's day).
_WINDOW_EPOCH = datetime(1970, 1, 1, tzinfo=TOKYO)
DAY = timedelta(days=1)
PRESENCE_DENIALS = frozenset({"presence-not-proven", "presence-locked"})
PRESENCE_LOCKED = "presence-locked"
# A customer's proofs: an alert when one customer id reaches this many failures in the period.
CUSTOMER_PRESENCE_FAILURES = 5
CUSTOMER_PRESENCE_PERIOD = timedelta(minutes=30)
STORE_HOURS_TTL_SECONDS = 60.0
# How long a count below its threshold stands for this process's own events (``Estimates``).
ESTIMATE_TTL_SECONDS = 5.0
ESTIMATE_KEYS = 10_000
# How long after its ``at`` an event may still be committed: a bound brought up to date counts
# the events since it was taken, less this (a read's event is committed within milliseconds).
COMMIT_LAG = timedelta(seconds=10)
# How long a bound is brought up to date before the whole period is counted again: an event
# committed later than ``COMMIT_LAG`` (a stalled pool, a skewed clock) is counted by then.
FULL_COUNT_SECONDS = 60.0


class RuleName(StrEnum):
    BULK_READ = "bulk_read"
    OFF_HOURS = "off_hours"
    DENIED_BURST = "denied_burst"
    SEARCH_MISSES = "search_misses"
    REVIEW_PENDING = "review_pending"
    PRESENCE_FAILURES = "presence_failures"
    PRIVILEGED_CHANGE = "privileged_change"


class Scope(StrEnum):
    ACTOR = "actor"  # per caller
    CUSTOMER = "customer"  # per customer id asked for (customer_ids[0])


class Measure(StrEnum):
    EVENTS = "events"
    DISTINCT_CUSTOMERS = "distinct_customers"


StoreHours = Mapping[str, tuple[str, str]]


@dataclass(frozen=True, slots=True)
class EventFilter:
    """Which events a rule counts. Every condition given must hold."""

    actions: frozenset[str] | None = None
    outcome: str | None = None
    denials: frozenset[str] | None = None
    with_customers: bool = False
    result_count_zero: bool = False
    review_required: bool = False
    # An admin change that needs an auditor's approval, or an approval.
    privileged: bool = False
    # Store staff outside their store's opening hours (Asia/Tokyo).
    off_hours: bool = False

    def matches(self, event: Mapping[str, Any], hours: StoreHours) -> bool:
        if self.actions is not None and event["action"] not in self.actions:
            return False
        if self.outcome is not None and event["outcome"] != self.outcome:
            return False
        if self.denials is not None and event.get("denial") not in self.denials:
            return False
        if self.with_customers and not event.get("customer_ids"):
            return False
        if self.result_count_zero and event.get("result_count") != 0:
            return False
        if self.review_required and not event.get("review_required"):
            return False
        if self.privileged and not _privileged(event):
            return False
        return not (self.off_hours and not _off_hours(event, hours))


def _privileged(event: Mapping[str, Any]) -> bool:
    if event["action"] != "admin":
        return False
    changed = event.get("changed_fields") or ()
    return "pending_approval" in changed or str(event["resource"]).endswith("/approve")


def _minutes(hhmm: str) -> int:
    hours, minutes = hhmm.split(":")
    return int(hours) * 60 + int(minutes)


def _off_hours(event: Mapping[str, Any], hours: StoreHours) -> bool:
    if event.get("role") not in STORE_ROLES or event["action"] == "login":
        return False
    opening = hours.get(event.get("store") or "")
    if opening is None:
        return False
    local: datetime = event["at"].astimezone(TOKYO)
    now = local.hour * 60 + local.minute
    opens, closes = _minutes(opening[0]), _minutes(opening[1])
    if opens <= closes:
        return not opens <= now < closes
    return closes <= now < opens  # open past midnight


@dataclass(frozen=True, slots=True)
class AlertRule:
    name: RuleName
    filter: EventFilter
    scope: Scope = Scope.ACTOR
    measure: Measure = Measure.EVENTS
    threshold: int | None = None  # fires when the measure within ``period`` exceeds it
    period: timedelta = DAY
    window: timedelta = DAY  # one open alert per rule, actor, subject and window


def _limit(text: str) -> tuple[int, timedelta]:
    item = parse(text)
    return int(item.amount), timedelta(seconds=int(item.get_expiry()))


def alert_rules(settings: Settings) -> tuple[AlertRule, ...]:
    bulk, bulk_period = _limit(settings.alert_bulk_read)
    denied, denied_period = _limit(settings.alert_denied_burst)
    misses, misses_period = _limit(settings.alert_search_misses)
    presence, presence_period = _limit(settings.alert_presence_failures)
    presence_failure = EventFilter(
        actions=frozenset({"attach"}), outcome="denied", denials=PRESENCE_DENIALS
    )
    return (
        AlertRule(
            RuleName.BULK_READ,
            EventFilter(actions=frozenset({"read"}), outcome="allowed", with_customers=True),
            measure=Measure.DISTINCT_CUSTOMERS,
            threshold=bulk,
            period=bulk_period,
            window=bulk_period,
        ),
        AlertRule(RuleName.OFF_HOURS, EventFilter(off_hours=True)),
        AlertRule(
            RuleName.DENIED_BURST,
            EventFilter(outcome="denied"),
            threshold=denied,
            period=denied_period,
            window=denied_period,
        ),
        AlertRule(
            RuleName.SEARCH_MISSES,
            EventFilter(actions=frozenset({"search"}), outcome="allowed", result_count_zero=True),
            threshold=misses,
            period=misses_period,
            window=misses_period,
        ),
        AlertRule(RuleName.REVIEW_PENDING, EventFilter(outcome="allowed", review_required=True)),
        # One customer's proofs failing (reaching 5 within 30 minutes), or locked ...
        AlertRule(
            RuleName.PRESENCE_FAILURES,
            presence_failure,
            scope=Scope.CUSTOMER,
            threshold=CUSTOMER_PRESENCE_FAILURES - 1,
            period=CUSTOMER_PRESENCE_PERIOD,
            window=CUSTOMER_PRESENCE_PERIOD,
        ),
        AlertRule(
            RuleName.PRESENCE_FAILURES,
            EventFilter(
                actions=frozenset({"attach"}),
                outcome="denied",
                denials=frozenset({PRESENCE_LOCKED}),
            ),
            scope=Scope.CUSTOMER,
            window=CUSTOMER_PRESENCE_PERIOD,
        ),
        # ... or one caller failing proofs across customers.
        AlertRule(
            RuleName.PRESENCE_FAILURES,
            presence_failure,
            threshold=presence,
            period=presence_period,
            window=presence_period,
        ),
        AlertRule(RuleName.PRIVILEGED_CHANGE, EventFilter(outcome="allowed", privileged=True)),
    )


def window_start(at: datetime, window: timedelta) -> datetime:
    buckets = (at - _WINDOW_EPOCH) // window
    return (_WINDOW_EPOCH + buckets * window).astimezone(UTC)


def units(event: Mapping[str, Any]) -> int:
    """A rate-limit summary stands for ``count`` refusals."""
    count = event.get("count")
    return int(count) if count else 1


def key_of(rule: AlertRule, event: Mapping[str, Any]) -> str:
    if rule.scope is Scope.CUSTOMER:
        customer_ids = event.get("customer_ids") or ()
        return str(customer_ids[0]) if customer_ids else ""
    return str(event.get("actor") or "")


@dataclass(frozen=True, slots=True)
class Hit:
    """A rule fired for one key: open an alert, or make the open one grow."""

    rule: AlertRule
    key: str
    event: Mapping[str, Any]  # the newest matching event
    opening_count: int
    growth: int
    first_at: datetime | None = None  # of the hit's events, when several (else the event's)

    @property
    def actor_key(self) -> str:
        return "" if self.rule.scope is Scope.CUSTOMER else self.key

    @property
    def subject(self) -> str:
        return f"customer:{self.key}" if self.rule.scope is Scope.CUSTOMER else ""


async def on_alert_opened(session: AsyncSession, alert: Alert) -> None:
    """Called once for each alert that opens, in the transaction that opens it.

    The hook for telling people (SHOPVAULT_ALERT_EMAIL, through the outbox: rule, store, role,
    count and the path ``/alerts/{id}`` — no customer data, no employee name). Until the
    outbox is connected here, it only logs."""
    log.warning(
        "alert opened",
        extra={"alert_id": alert.id, "rule": alert.rule, "store": alert.store, "role": alert.role},
    )


@dataclass(slots=True)
class Bound:
    """A key's measure is at most ``counted`` as of event time ``until`` (from the database,
    looked up at monotonic time ``checked_at``; the whole period counted at ``full_at``), plus
    ``grown`` by this process's own events since."""

    counted: int
    until: datetime
    checked_at: float
    full_at: float
    grown: int = 0


class Estimates:
    """What this process knows of each counted key's measure, so that a caller far below a
    threshold costs no counting query per append, nor a count of their whole period after.

    Each key's measure is taken from the database, then grown by every event of its own this
    process appends. While that upper bound stays at or below the threshold the key is not
    looked up again, for at most ``ttl`` seconds: the events of the same caller through other
    processes are counted at the next look-up, which counts only the events since the bound was
    taken (less ``COMMIT_LAG``) and adds them — still a bound, since events only ever leave a
    period. Above the threshold, for a key not known (or known for longer than its period), and
    at least every ``FULL_COUNT_SECONDS``, the whole period is counted exactly.
    """

    def __init__(
        self, ttl: float = ESTIMATE_TTL_SECONDS, monotonic: Callable[[], float] = time.monotonic
    ) -> None:
        self._ttl = ttl
        self._monotonic = monotonic
        self._known: dict[tuple[str, str], Bound] = {}

    def below(self, rule: AlertRule, key: str, growth: int) -> bool:
        """Whether the key is surely still at or below the threshold; if so, count the growth."""
        assert rule.threshold is not None
        known = self._known.get((rule.name, key))
        if known is None or self._monotonic() - known.checked_at > self._ttl:
            return False
        if known.counted + known.grown + growth > rule.threshold:
            return False
        known.grown += growth
        return True

    def bound(self, rule: AlertRule, key: str, until: datetime) -> Bound | None:
        """The key's bound, if counting only the events since it is taken can bring it up to
        ``until`` (it was taken before ``until``, within the rule's period)."""
        known = self._known.get((rule.name, key))
        if known is None or not until - rule.period < known.until < until:
            return None
        if self._monotonic() - known.full_at > FULL_COUNT_SECONDS:
            return None
        return known

    def measured(
        self, rule: AlertRule, key: str, value: int, until: datetime, *, full: bool = True
    ) -> None:
        """The key's measure as of ``until``: the whole period counted (``full``), or a bound
        brought up to date."""
        if len(self._known) >= ESTIMATE_KEYS:
            self._known.clear()
        now = self._monotonic()
        known = self._known.get((rule.name, key))
        full_at = now if full or known is None else known.full_at
        self._known[(rule.name, key)] = Bound(value, until, now, full_at)


def _growth(rule: AlertRule, events: Sequence[Mapping[str, Any]]) -> int:
    return sum(
        len(e.get("customer_ids") or ()) if rule.measure is Measure.DISTINCT_CUSTOMERS else units(e)
        for e in events
    )


async def find_hits(
    session: AsyncSession,
    rules: Sequence[AlertRule],
    events: Sequence[Mapping[str, Any]],
    hours: StoreHours,
    estimates: Estimates | None = None,
) -> list[Hit]:
    """Which rules the committed events trip (reads only)."""
    hits: list[Hit] = []
    for rule in rules:
        matching = [e for e in events if rule.filter.matches(e, hours)]
        by_key: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
        for event in matching:
            by_key[key_of(rule, event)].append(event)
        if rule.scope is Scope.CUSTOMER:
            by_key.pop("", None)
        if not by_key:
            continue
        if rule.threshold is None:
            # Every event counts: one hit per key and window for the whole batch (a busy shop
            # after hours makes one alert grow once per batch, not once per read).
            for key, keyed in by_key.items():
                windows: dict[datetime, list[Mapping[str, Any]]] = defaultdict(list)
                for event in keyed:
                    windows[window_start(event["at"], rule.window)].append(event)
                for same in windows.values():
                    count = sum(units(e) for e in same)
                    newest = max(same, key=lambda e: e["at"])
                    first_at = min(e["at"] for e in same)
                    hits.append(Hit(rule, key, newest, count, count, first_at=first_at))
            continue
        if estimates is not None:
            by_key = {
                key: keyed
                for key, keyed in by_key.items()
                if not estimates.below(rule, key, _growth(rule, keyed))
            }
            if not by_key:
                continue
        until = max(e["at"] for keyed in by_key.values() for e in keyed)
        exact = []
        for key in sorted(by_key):
            known = estimates.bound(rule, key, until) if estimates is not None else None
            if known is None:
                exact.append(key)
                continue
            added = await repository.measure(
                session, rule=rule, keys=[key], since=known.until - COMMIT_LAG, until=until
            )
            value = known.counted + added.get(key, 0)
            if value > rule.threshold:
                exact.append(key)
            elif estimates is not None:
                estimates.measured(rule, key, value, until, full=False)
        if not exact:
            continue
        measured = await repository.measure(
            session, rule=rule, keys=exact, since=until - rule.period, until=until
        )
        for key in exact:
            value = measured.get(key, 0)
            if estimates is not None:
                estimates.measured(rule, key, value, until)
            if value > rule.threshold:
                keyed = by_key[key]
                hits.append(
                    Hit(rule, key, max(keyed, key=lambda e: e["at"]), value, _growth(rule, keyed))
                )
    return hits


async def record_hits(session: AsyncSession, hits: Sequence[Hit]) -> list[Alert]:
    """Open alerts or make them grow; the alerts opened (the session is not committed)."""
    opened: list[Alert] = []
    for hit in hits:
        alert = await repository.upsert_alert(
            session,
            rule=hit.rule.name.value,
            actor=hit.event.get("actor"),
            actor_key=hit.actor_key,
            role=hit.event.get("role"),
            store=hit.event.get("store"),
            subject=hit.subject,
            window_start=window_start(hit.event["at"], hit.rule.window),
            at=hit.event["at"],
            first_at=hit.first_at,
            opening_count=hit.opening_count,
            growth=hit.growth,
        )
        if alert is not None:
            await on_alert_opened(session, alert)
            opened.append(alert)
    return opened


class AlertMonitor:
    """Evaluates the rules over each process's committed events, off the request path."""

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        rules: Sequence[AlertRule],
        *,
        read_sessions: async_sessionmaker[AsyncSession] | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._sessions = sessions
        # Reads need no write lock (on SQLite every session of the request engine takes it).
        self._read_sessions = read_sessions or sessions
        self.rules = tuple(rules)
        self._pending: list[Mapping[str, Any]] = []
        self._task: asyncio.Task[None] | None = None
        self._hours: StoreHours = {}
        self._hours_read_at: float | None = None
        self._monotonic = monotonic
        self.estimates = Estimates(monotonic=monotonic)

    def on_append(self, rows: Iterable[Mapping[str, Any]]) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        self._pending.extend(rows)
        if self._task is None or self._task.done():
            self._task = loop.create_task(self._work())

    async def _work(self) -> None:
        while self._pending:
            batch, self._pending = self._pending, []
            try:
                async with self._read_sessions() as session:
                    hours = await self._store_hours(session)
                    hits = await find_hits(session, self.rules, batch, hours, self.estimates)
                if not hits:
                    continue
                async with self._sessions() as session:
                    await record_hits(session, hits)
                    await session.commit()
            except Exception:
                log.exception("alert evaluation failed")

    async def _store_hours(self, session: AsyncSession) -> StoreHours:
        now = self._monotonic()
        if self._hours_read_at is None or now - self._hours_read_at > STORE_HOURS_TTL_SECONDS:
            self._hours = await repository.store_hours(session)
            self._hours_read_at = now
        return self._hours

    def forget_store_hours(self) -> None:
        self._hours_read_at = None

    async def drain(self) -> None:
        """Wait until every event told so far has been evaluated (tests, shutdown)."""
        while self._task is not None and not self._task.done():
            await self._task
