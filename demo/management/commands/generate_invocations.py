"""`python manage.py generate_invocations --count 1000000 [--seed 1] [--trees]`: fill our
tables with synthetic invocations for benchmarks and for trying the pages at scale.

Everything is generated inside PostgreSQL (`INSERT ... SELECT` over
`generate_series`, with hashes of the row number as the random source), so a
million rows take seconds, not the minutes an ORM loop would, and the same
seed gives the same rows.

What is written:
- `Invocation` rows with ids `inv_1gen` + 30 lowercase hex digits (38 characters,
  like Restate's own): `--delete` removes exactly those, and nothing else.
- Call trees of varying shape: ~40% lone roots, ~48% roots with 1-5 children,
  ~12% bushy trees of 7-15 nodes over 2-3 levels, 0.2% deep chains of 20-80, and
  one tree of exactly `--big-tree` nodes (default 10,000: the root has 10
  children, each of those 10, and so on) whose root id is printed.
  parent_id/root_id are consistent, and every child has an `InvocationEdge`
  from its parent (call, send, or delayed_send for scheduled children).
- ~20 service/handler pairs (entry handlers more often at the roots), statuses
  mostly completed with some running/suspended/backing-off/scheduled/pending/
  ready/paused, created_at spread over the last 7 days in table order (as the
  sync writes them), log-normal durations (median ~80 ms, a tail of seconds
  to hours), ~4% failures, idempotency keys on ~10%, and completed
  invocations older than a day marked gone from Restate (its retention).
- The service map's hourly rollups, rebuilt from every row at the end (and after
  `--delete`): these rows never went through the sync engine that keeps them current.
- `--delayed N`: N more pending delayed messages (status `scheduled`, fire times over the
  next week with 15% in a burst at the next 03:00 UTC), sent five at a time by completed
  sender roots, with the senders' `OneWayCall` journal entries (payload included), the
  messages' Input entries and `delayed_send` edges, as the sync writes them: what /delayed/
  reads. `--count` still says how many the rest of the table holds.
- Otherwise no journal entries: they would be most of the volume and time, and no list
  page reads them. `journal_size` is set and `journal_synced_size` says we hold
  all of it (1 for a scheduled or pending invocation: its Input, which the sync
  reads once although Restate reports journal_size 0), so a sync running on the
  same database never puts them in its journal backlog.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import connection, transaction
from django.utils import timezone

from invocations.mirror import rollups
from invocations.models import Invocation, InvocationEdge, JournalEntry

ID_PREFIX = "inv_1gen"
# LIKE for the prefix (uses inv_id_prefix_idx), then the exact shape: a real Restate id
# (base62, 38 characters) matching both by chance would need 30 lowercase hex digits in a row.
ID_LIKE = r"inv\_1gen%"
ID_REGEX = r"^inv_1gen[0-9a-f]{30}$"
SPAN = timedelta(days=7)
RETENTION = timedelta(days=1)
BIG_TREE_FANOUT = 10

# (service, handler, service type); the first ones are the entry points roots mostly use.
HANDLERS: tuple[tuple[str, str, str], ...] = (
    ("Checkout", "order", "service"),
    ("Greeter", "greet", "service"),
    ("Orchestrator", "call_all", "service"),
    ("Cart", "checkout", "virtual_object"),
    ("Signup", "run", "workflow"),
    ("Counter", "add", "virtual_object"),
    ("Trip", "book", "service"),
    ("Payments", "charge", "service"),
    ("Cart", "add_item", "virtual_object"),
    ("Inventory", "reserve", "virtual_object"),
    ("Shipping", "quote", "service"),
    ("Fraud", "score", "service"),
    ("Ledger", "post", "virtual_object"),
    ("Email", "send", "service"),
    ("Notifier", "push", "service"),
    ("Inventory", "release", "virtual_object"),
    ("Payments", "refund", "service"),
    ("Signup", "confirm", "workflow"),
    ("Signup", "status", "workflow"),
    ("Counter", "get", "virtual_object"),
)

# Tree shapes by the tree's uniform draw u: (upper bound of u, shape). Sizes and fanouts below.
SMALL_SIZES = ((0.40, 1), (0.52, 2), (0.64, 3), (0.74, 4), (0.82, 5), (0.88, 6))
BUSHY_UNTIL = 0.998  # 7-15 nodes, fanout 2-4; above: chains of 20-80


def mean_tree_size() -> float:
    """The expected size of a tree other than the big one (for placing the big one)."""
    mean, lower = 0.0, 0.0
    for upper, size in SMALL_SIZES:
        mean += (upper - lower) * size
        lower = upper
    mean += (BUSHY_UNTIL - lower) * 11  # 7 + (0..8)
    mean += (1 - BUSHY_UNTIL) * 50  # 20 + (0..60)
    return mean


@dataclass
class GenerationResult:
    invocations: int
    edges: int
    trees: int
    seconds: float
    rollup_seconds: float = 0.0  # rebuilding the service map's hourly rollups (included in `seconds`)
    big_tree_root: str | None = None
    big_tree_leaf: str | None = None  # a node at the big tree's deepest level
    big_tree_size: int = 0
    small_tree_node: str | None = None  # a child in a tree of 4
    chain_leaf: str | None = None  # the bottom of a deep chain
    shapes: list[tuple[str, int, int, int]] = field(default_factory=list)  # shape, trees, nodes, max size
    delayed: int = 0  # pending delayed messages (besides `invocations`)
    delayed_burst_at: datetime | None = None  # the 03:00 UTC their burst fires at


def _u(n: str, stream: int) -> str:
    """SQL for a uniform [0, 1) draw from row number `n` in `stream`."""
    return f"pg_temp.gen_u({n}, {stream})"


def _setup_sql(seed: int) -> list[str]:
    s = seed * 64  # each seed owns 64 streams
    handlers = ", ".join(f"({i}, '{svc}', '{h}', '{ty}')" for i, (svc, h, ty) in enumerate(HANDLERS))
    n_handlers = len(HANDLERS)
    return [
        "CREATE OR REPLACE FUNCTION pg_temp.gen_u(n bigint, stream bigint) RETURNS float8 IMMUTABLE PARALLEL SAFE "
        "LANGUAGE sql AS 'SELECT (hashint8extended(n, stream) & 2147483647)::float8 / 2147483648.0'",
        # Restate-length ids (38 characters) that sort in no particular order, as Restate's do.
        "CREATE OR REPLACE FUNCTION pg_temp.gen_id(n bigint) RETURNS text IMMUTABLE PARALLEL SAFE LANGUAGE sql AS "
        f"$$SELECT '{ID_PREFIX}' || substr(md5('{seed}:' || n::text), 1, 30)$$",
        # Roots mostly start at the first handlers (entry points); children anywhere.
        "CREATE OR REPLACE FUNCTION pg_temp.gen_handler(n bigint, is_root boolean) RETURNS int IMMUTABLE PARALLEL SAFE "
        "LANGUAGE sql AS $$SELECT CASE WHEN is_root "
        f"THEN floor({n_handlers} * power({_u('n', s + 2)}, 2.2))::int "
        f"ELSE floor({n_handlers} * {_u('n', s + 2)})::int END$$",
        "CREATE TEMP TABLE gen_handlers (idx int PRIMARY KEY, service text, handler text, ty text)",
        f"INSERT INTO gen_handlers VALUES {handlers}",
    ]


def _plan_sql(seed: int) -> str:
    """One row per tree: its shape, size, fanout (parent of node k is node (k-1)/fanout),
    first row number, and root creation time. Trees are cut so the rows add up to exactly count."""
    s = seed * 64
    small = " ".join(f"WHEN u < {upper} THEN {size}" for upper, size in SMALL_SIZES)
    small_until = SMALL_SIZES[-1][0]
    return f"""
    CREATE TEMP TABLE gen_plan AS
    WITH raw AS (
        SELECT t, {_u("t", s + 10)} AS u, {_u("t", s + 11)} AS u2, {_u("t", s + 12)} AS u3
        FROM generate_series(1, %(max_trees)s::bigint) AS t
    ), shaped AS (
        SELECT t,
            CASE WHEN t = %(big_t)s THEN %(big)s {small}
                 WHEN u < {BUSHY_UNTIL} THEN 7 + floor(u2 * 9)::int
                 ELSE 20 + floor(u2 * 61)::int END AS size,
            CASE WHEN t = %(big_t)s THEN {BIG_TREE_FANOUT} WHEN u < {small_until} THEN 5
                 WHEN u < {BUSHY_UNTIL} THEN 2 + floor(u3 * 3)::int ELSE 1 END AS fanout,
            CASE WHEN t = %(big_t)s THEN 'big' WHEN u < {small_until} THEN 'small'
                 WHEN u < {BUSHY_UNTIL} THEN 'bushy' ELSE 'chain' END AS shape
        FROM raw
    ), placed AS (
        SELECT *, sum(size) OVER (ORDER BY t) - size AS base FROM shaped
    )
    SELECT t, shape, fanout, base, least(size, %(count)s - base)::int AS size,
           %(start)s::timestamptz
             + ((base + {_u("t", s + 13)})::float8 / %(count)s * %(span_s)s) * interval '1 second' AS created
    FROM placed WHERE base < %(count)s
    """


def _rows_sql(seed: int) -> str:
    """Every generated invocation with the columns both inserts need (a temp view, read twice)."""
    s = seed * 64
    return f"""
    CREATE TEMP VIEW gen_rows AS
    WITH nodes AS (
        SELECT p.shape, p.base + k AS n, k,
               CASE WHEN k > 0 THEN p.base + (k - 1) / p.fanout END AS parent_n,
               CASE WHEN k > 0 THEN (k - 1) / p.fanout = 0 END AS parent_is_root,
               p.base AS root_n,
               (k - 1) %% p.fanout AS ordinal,
               -- children of node k: k*fanout+1 .. k*fanout+fanout, within the tree
               greatest(0, least(p.size - 1 - k * p.fanout, p.fanout)) AS n_children,
               p.created + k * (CASE WHEN p.shape = 'big' THEN 0.005 ELSE 0.02 END) * interval '1 second' AS created_at
        FROM gen_plan p CROSS JOIN LATERAL generate_series(0, p.size - 1) AS k
    ), drawn AS (
        SELECT nodes.*,
               {_u("n", s + 20)} AS u_status,
               {_u("n", s + 21)} AS u_fail,
               {_u("n", s + 22)} AS u_kind,
               {_u("n", s + 23)} AS u_misc,
               -- log-normal duration: median 80 ms, sigma 1.6 (Box-Muller)
               least(exp(ln(0.08) + 1.6 * sqrt(-2 * ln(greatest({_u("n", s + 24)}, 1e-12)))
                     * cos(2 * pi() * {_u("n", s + 25)})), 86400) AS dur_s,
               pg_temp.gen_handler(n, k = 0) AS h
        FROM nodes
    ), statused AS (
        SELECT drawn.*,
               CASE WHEN u_status < 0.955 THEN 'completed' WHEN u_status < 0.965 THEN 'running'
                    WHEN u_status < 0.980 THEN 'suspended' WHEN u_status < 0.985 THEN 'backing-off'
                    WHEN u_status < 0.993 THEN 'scheduled' WHEN u_status < 0.997 THEN 'pending'
                    WHEN u_status < 0.999 THEN 'ready' ELSE 'paused' END AS status
        FROM drawn
    )
    SELECT r.*,
           pg_temp.gen_id(r.n) AS id,
           CASE WHEN r.k > 0 THEN pg_temp.gen_id(r.parent_n) END AS parent_id,
           pg_temp.gen_id(r.root_n) AS root_id,
           hs.service AS service_name, hs.handler AS handler_name, hs.ty AS service_type,
           ph.service AS parent_service, ph.handler AS parent_handler,
           CASE WHEN hs.ty <> 'service' THEN 'k' || floor({_u("r.n", s + 3)} * 5000)::int END AS service_key,
           CASE WHEN r.k > 0 THEN
               ph.service || CASE WHEN ph.ty <> 'service'
                                  THEN '/k' || floor({_u("r.parent_n", s + 3)} * 5000)::int ELSE '' END
               || '/' || ph.handler END AS invoked_by_target,
           CASE WHEN r.status = 'completed'
                THEN least(r.created_at + r.dur_s * interval '1 second', %(now)s::timestamptz) END AS completed_at,
           CASE WHEN r.status = 'scheduled'
                THEN %(now)s::timestamptz + r.u_misc * interval '6 hours' END AS scheduled_start_at,
           CASE WHEN r.status = 'scheduled' OR (r.k > 0 AND r.u_kind < 0.03) THEN 'delayed_send'
                WHEN r.u_kind < 0.30 THEN 'send' ELSE 'call' END AS kind
    FROM statused r
    JOIN gen_handlers hs ON hs.idx = r.h
    LEFT JOIN gen_handlers ph ON r.k > 0 AND ph.idx = pg_temp.gen_handler(r.parent_n, r.parent_is_root)
    """


INSERT_INVOCATIONS_SQL = """
INSERT INTO {table} (
    id, target, service_name, service_key, handler_name, service_type, status,
    completion_result, completion_failure, idempotency_key, invoked_by, parent_id,
    invoked_by_target, root_id, restarted_from, pinned_deployment_id, trace_id,
    journal_size, retry_count, next_retry_at, last_failure, last_failure_error_code,
    last_failure_related_command_name, created_at, modified_at, inboxed_at, scheduled_at,
    scheduled_start_at, running_at, completed_at, completion_retention, journal_retention,
    first_seen_at, synced_at, journal_synced_size, gone_from_restate_at
)
SELECT
    id,
    service_name || coalesce('/' || service_key, '') || '/' || handler_name,
    service_name, service_key, handler_name, service_type, status,
    CASE WHEN status = 'completed' THEN CASE WHEN u_fail < 0.04 THEN 'failure' ELSE 'success' END END,
    CASE WHEN status = 'completed' AND u_fail < 0.04 THEN
        (ARRAY['[500] upstream timed out', '[409] cancelled', '[400] invalid request: missing field sku'])
        [1 + floor(u_fail * 75)::int] END,
    CASE WHEN u_misc < 0.10 THEN 'order-' || n::text END,
    CASE WHEN k > 0 THEN 'service' ELSE 'ingress' END,
    parent_id, invoked_by_target, root_id, NULL,
    CASE WHEN status NOT IN ('scheduled', 'pending') THEN 'dp_1gen' || (n %% 3)::text END,
    md5('trace:' || n::text),
    CASE WHEN status IN ('scheduled', 'pending') THEN 0 ELSE 2 + 2 * n_children + (status = 'completed')::int END,
    CASE WHEN status = 'backing-off' THEN 1 + floor(u_fail * 30)::int
         WHEN status IN ('running', 'paused') AND u_fail < 0.2 THEN 1 + floor(u_fail * 15)::int ELSE 0 END,
    CASE WHEN status = 'backing-off' THEN %(now)s::timestamptz + u_fail * interval '60 seconds' END,
    CASE WHEN status = 'backing-off' OR (status IN ('running', 'paused') AND u_fail < 0.2)
         THEN '[500] connection refused: payments gateway' END,
    CASE WHEN status = 'backing-off' OR (status IN ('running', 'paused') AND u_fail < 0.2) THEN '500' END,
    CASE WHEN status = 'backing-off' THEN 'Call' END,
    created_at,
    -- modified_at: Restate's last transition
    least(CASE status
        WHEN 'completed' THEN completed_at
        WHEN 'suspended' THEN created_at + dur_s * interval '1 second'
        WHEN 'paused' THEN created_at + interval '1 second'
        WHEN 'running' THEN created_at + interval '3 milliseconds'
        WHEN 'backing-off' THEN created_at + interval '3 milliseconds'
        ELSE created_at END, %(now)s::timestamptz),
    CASE WHEN status = 'pending' THEN created_at END,
    CASE WHEN status = 'scheduled' THEN created_at END,
    scheduled_start_at,
    CASE WHEN status NOT IN ('scheduled', 'pending', 'ready') THEN created_at + interval '2 milliseconds' END,
    completed_at,
    'PT24H', 'PT24H',
    created_at + interval '1 second',
    least(CASE WHEN completed_at IS NOT NULL THEN completed_at ELSE created_at END + interval '1 second',
          %(now)s::timestamptz),
    -- journal_synced_size: all of it; a not-started one's Input (Restate reports journal_size 0 for it)
    CASE WHEN status IN ('scheduled', 'pending') THEN 1 ELSE 2 + 2 * n_children + (status = 'completed')::int END,
    CASE WHEN completed_at < %(now)s::timestamptz - %(retention)s THEN completed_at + %(retention)s END
FROM gen_rows
"""

INSERT_EDGES_SQL = """
INSERT INTO {table} (caller_id, caller_service, caller_handler, journal_index, callee_id, kind, target_service,
                     target_key, target_handler, created_at, fire_at)
SELECT parent_id, parent_service, parent_handler, 2 + 2 * ordinal, id, kind, service_name, service_key, handler_name,
       created_at - interval '1 millisecond',
       CASE WHEN kind = 'delayed_send' THEN coalesce(scheduled_start_at, created_at) END
FROM gen_rows WHERE k > 0
"""


# Who sends the delayed messages and to whom: (service, handler, service type).
DELAYED_SENDERS = (
    ("Scheduler", "plan", "service"),
    ("Orchestrator", "schedule", "service"),
    ("Reminders", "remind", "virtual_object"),
    ("Billing", "renew", "service"),
)
DELAYED_TARGETS = (
    ("Email", "send", "service"),
    ("Notifier", "push", "service"),
    ("Payments", "charge", "service"),
    ("Cart", "checkout", "virtual_object"),
    ("Ledger", "post", "virtual_object"),
)
DELAYED_PER_SENDER = 5
DELAYED_BURST_SHARE = 0.15


def _delayed_sql(seed: int) -> list[str]:
    """The delayed messages and their senders (temp table gen_delayed), and the inserts of
    their invocations, edges and journal entries. Payload bytes are JSON arrays of byte
    values, as Restate's entry_json carries them."""
    s = seed * 64

    def values(rows: tuple[tuple[str, str, str], ...]) -> str:
        return ", ".join(f"({i}, '{svc}', '{h}', '{ty}')" for i, (svc, h, ty) in enumerate(rows))

    inv = connection.ops.quote_name(Invocation._meta.db_table)
    edge = connection.ops.quote_name(InvocationEdge._meta.db_table)
    journal = connection.ops.quote_name(JournalEntry._meta.db_table)
    key = "CASE WHEN {ty} <> 'service' THEN 'k' || floor({u} * 1000)::int END"
    target = "{svc} || coalesce('/' || {key}, '') || '/' || {h}"
    return [
        "CREATE OR REPLACE FUNCTION pg_temp.gen_bytes(b bytea) RETURNS jsonb IMMUTABLE LANGUAGE sql AS "
        "$$SELECT coalesce(jsonb_agg(get_byte(b, i) ORDER BY i), '[]'::jsonb) FROM generate_series(0, length(b) - 1) AS i$$",
        "CREATE TEMP TABLE gen_delayed_senders (idx int PRIMARY KEY, service text, handler text, ty text)",
        f"INSERT INTO gen_delayed_senders VALUES {values(DELAYED_SENDERS)}",
        "CREATE TEMP TABLE gen_delayed_targets (idx int PRIMARY KEY, service text, handler text, ty text)",
        f"INSERT INTO gen_delayed_targets VALUES {values(DELAYED_TARGETS)}",
        f"""
        CREATE TEMP TABLE gen_delayed AS
        WITH d AS (
            SELECT n, n / {DELAYED_PER_SENDER} AS snd, mod(n, {DELAYED_PER_SENDER}) AS k,
                   {_u("n", s + 40)} AS u_fire, {_u("n", s + 41)} AS u_burst, {_u("n", s + 42)} AS u_target,
                   {_u(f"n / {DELAYED_PER_SENDER}", s + 43)} AS u_sender,
                   {_u(f"n / {DELAYED_PER_SENDER}", s + 44)} AS u_sent
            FROM generate_series(0, %(delayed)s - 1) AS n
        ), named AS (
            SELECT d.*, t.service, t.handler, t.ty, {key.format(ty="t.ty", u="d.u_target")} AS key,
                   sd.service AS s_service, sd.handler AS s_handler, sd.ty AS s_ty,
                   {key.format(ty="sd.ty", u="d.u_sender")} AS s_key
            FROM d
            JOIN gen_delayed_targets t ON t.idx = floor(d.u_target * {len(DELAYED_TARGETS)})::int
            JOIN gen_delayed_senders sd ON sd.idx = floor(d.u_sender * {len(DELAYED_SENDERS)})::int
        )
        SELECT named.*,
               '{ID_PREFIX}' || substr(md5('delayed:{seed}:' || n::text), 1, 30) AS id,
               '{ID_PREFIX}' || substr(md5('sender:{seed}:' || snd::text), 1, 30) AS sender_id,
               {target.format(svc="service", key="key", h="handler")} AS target,
               {target.format(svc="s_service", key="s_key", h="s_handler")} AS s_target,
               %(now)s::timestamptz - u_sent * interval '2 hours' AS sent_at,
               CASE WHEN u_burst < {DELAYED_BURST_SHARE} THEN %(burst)s::timestamptz + u_fire * interval '5 minutes'
                    ELSE %(now)s::timestamptz + interval '10 seconds' + u_fire * interval '7 days' END AS fire_at,
               convert_to(json_build_object('order', n, 'note', 'reminder ' || n::text, 'step', k)::text, 'UTF8')
                 AS payload
        FROM named
        """,
        # The senders: completed roots, each with its Input and the OneWayCalls below.
        f"""
        INSERT INTO {inv} (id, target, service_name, service_key, handler_name, service_type, status,
            completion_result, invoked_by, root_id, journal_size, retry_count, created_at, modified_at,
            running_at, completed_at, completion_retention, journal_retention, first_seen_at, synced_at,
            journal_synced_size)
        SELECT sender_id, min(s_target), min(s_service), min(s_key), min(s_handler), min(s_ty), 'completed',
            'success', 'ingress', sender_id, 1 + 2 * count(*), 1, min(sent_at), min(sent_at) + interval '40 ms',
            min(sent_at), min(sent_at) + interval '40 ms', 'PT24H', 'PT24H', min(sent_at), min(sent_at),
            1 + 2 * count(*)
        FROM gen_delayed GROUP BY sender_id
        """,
        f"""
        INSERT INTO {inv} (id, target, service_name, service_key, handler_name, service_type, status,
            invoked_by, parent_id, invoked_by_target, root_id, journal_size, retry_count, created_at,
            modified_at, scheduled_at, scheduled_start_at, completion_retention, journal_retention,
            first_seen_at, synced_at, journal_synced_size)
        SELECT id, target, service, key, handler, ty, 'scheduled', 'service', sender_id, s_target, sender_id,
            0, 0, sent_at, sent_at, sent_at, fire_at, 'PT24H', 'PT24H', sent_at, sent_at, 1
        FROM gen_delayed
        """,
        f"""
        INSERT INTO {edge} (caller_id, caller_service, caller_handler, journal_index, callee_id, kind,
            target_service, target_key, target_handler, created_at, fire_at)
        SELECT sender_id, s_service, s_handler, 1 + 2 * k, id, 'delayed_send', service, key, handler, sent_at, fire_at
        FROM gen_delayed
        """,
        f"""
        INSERT INTO {journal} (invocation_id, index, entry_type, name, appended_at, entry, entry_lite)
        SELECT sender_id, 1 + 2 * k, 'Command: OneWayCall', NULL, sent_at,
            jsonb_build_object('Command', jsonb_build_object('OneWayCall', jsonb_build_object(
                'request', jsonb_build_object('invocation_id', id, 'parameter', pg_temp.gen_bytes(payload)),
                'invoke_time', (extract(epoch FROM fire_at) * 1000)::bigint))),
            jsonb_build_object('Command', jsonb_build_object('OneWayCall', jsonb_build_object(
                'invocation_id', id, 'invoke_time', (extract(epoch FROM fire_at) * 1000)::bigint)))
        FROM gen_delayed
        UNION ALL
        SELECT id, 0, 'Command: Input', NULL, sent_at,
            jsonb_build_object('Command', jsonb_build_object('Input', jsonb_build_object(
                'payload', pg_temp.gen_bytes(payload), 'headers', '[]'::jsonb))),
            '{{"Command": {{"Input": {{}}}}}}'::jsonb
        FROM gen_delayed
        """,
    ]


def has_synthetic() -> bool:
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT EXISTS (SELECT 1 FROM {connection.ops.quote_name(Invocation._meta.db_table)} "
            "WHERE id LIKE %s AND id ~ %s)",
            [ID_LIKE, ID_REGEX],
        )
        row = cursor.fetchone()
        return bool(row and row[0])


def delete_synthetic() -> tuple[int, int, int]:
    """Remove exactly the generated rows: (invocations, edges, journal entries)."""
    qn = connection.ops.quote_name
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(
            f"DELETE FROM {qn(InvocationEdge._meta.db_table)} WHERE caller_id LIKE %s AND caller_id ~ %s",
            [ID_LIKE, ID_REGEX],
        )
        edges = cursor.rowcount
        cursor.execute(
            f"DELETE FROM {qn(JournalEntry._meta.db_table)} WHERE invocation_id LIKE %s AND invocation_id ~ %s",
            [ID_LIKE, ID_REGEX],
        )
        journal = cursor.rowcount
        cursor.execute(f"DELETE FROM {qn(Invocation._meta.db_table)} WHERE id LIKE %s AND id ~ %s", [ID_LIKE, ID_REGEX])
        invocations = cursor.rowcount
    analyze()
    rollups.rebuild()  # what is left, counted again
    return invocations, edges, journal


@contextmanager
def indexes_rebuilt_after(cursor: Any, table: str, *, rows_added: int) -> Iterator[None]:
    """Drop `table`'s indexes and primary key, and build them again after the block.

    Building an index over sorted rows is ~3x faster than maintaining 17 indexes
    row by row during the insert (measured: 1M invocations, 63 s vs 7 s + 15 s).
    Only worth it when the insert outweighs what the table already holds; the
    definitions are PostgreSQL's own (pg_indexes), so they come back exactly.
    Runs inside the caller's transaction: a failure restores everything.
    """
    cursor.execute("SELECT reltuples FROM pg_class WHERE oid = %s::regclass", [table])
    existing = max(0, int(cursor.fetchone()[0]))
    if rows_added < existing:
        yield
        return
    qn = connection.ops.quote_name
    cursor.execute(
        "SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint WHERE conrelid = %s::regclass AND contype = 'p'",
        [table],
    )
    pk = cursor.fetchone()
    cursor.execute(
        "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = current_schema() AND tablename = %s "
        "AND indexname <> %s",
        [table, pk[0] if pk else ""],
    )
    indexes = cursor.fetchall()
    for name, _definition in indexes:
        cursor.execute(f"DROP INDEX {qn(name)}")
    if pk:
        cursor.execute(f"ALTER TABLE {qn(table)} DROP CONSTRAINT {qn(pk[0])}")
    yield
    if pk:
        cursor.execute(f"ALTER TABLE {qn(table)} ADD CONSTRAINT {qn(pk[0])} {pk[1]}")
    for _name, definition in indexes:
        cursor.execute(definition)


def analyze() -> None:
    """Fresh planner statistics. Outside a transaction also VACUUM: it sets the visibility
    map (index-only scans) that autovacuum would otherwise set at some moment of its own
    choosing, in the middle of whatever is measured next."""
    qn = connection.ops.quote_name
    command = "ANALYZE" if connection.in_atomic_block else "VACUUM (ANALYZE)"
    with connection.cursor() as cursor:
        for model in (Invocation, InvocationEdge, JournalEntry):
            cursor.execute(f"{command} {qn(model._meta.db_table)}")


def next_three_utc(after: datetime) -> datetime:
    """The first 03:00 UTC at or after `after`."""
    day = after.astimezone(UTC).replace(hour=3, minute=0, second=0, microsecond=0)
    return day if day >= after else day + timedelta(days=1)


def result_trees(cursor: Any) -> int:
    cursor.execute("SELECT count(*) FROM gen_plan")
    return int(cursor.fetchone()[0])


def generate(
    count: int, *, seed: int = 1, big_tree: int = 10_000, delayed: int = 0, now: datetime | None = None
) -> GenerationResult:
    if count < 1:
        raise ValueError("count must be at least 1")
    if big_tree > count // 2:
        raise ValueError(f"a tree of {big_tree:,} needs --count of at least {2 * big_tree:,} (or --big-tree 0)")
    if delayed < 0:
        raise ValueError("delayed must be at least 0")
    if not 0 <= seed < 2**20:
        raise ValueError("seed must be in 0 .. 1048575")
    if has_synthetic():
        raise ValueError("synthetic invocations are already here: run with --delete first")
    now = now or timezone.now()
    qn = connection.ops.quote_name
    t0 = time.monotonic()
    # Upper bound on trees (every tree has at least one node); the big tree ~70% of the
    # way through the rows (about two days ago).
    max_trees = count
    big_t = 1 + math.floor(0.7 * count / mean_tree_size()) if big_tree else 0
    params: dict[str, Any] = {
        "count": count,
        "max_trees": max_trees,
        "big_t": big_t,
        "big": big_tree,
        "start": now - SPAN,
        "span_s": (SPAN - timedelta(minutes=1)).total_seconds(),
        "now": now,
        "retention": RETENTION,
        "delayed": delayed,
        # The burst of delayed messages: the next 03:00 UTC at least an hour away.
        "burst": next_three_utc(now + timedelta(hours=1)),
    }
    with transaction.atomic(), connection.cursor() as cursor:
        # Bulk load in one transaction: nothing to lose if it fails midway.
        cursor.execute("SET LOCAL synchronous_commit = off")
        cursor.execute("SET LOCAL work_mem = '64MB'")
        cursor.execute("SET LOCAL maintenance_work_mem = '256MB'")
        for sql in _setup_sql(seed):
            cursor.execute(sql)
        cursor.execute(_plan_sql(seed), params)
        cursor.execute(_rows_sql(seed), params)
        with indexes_rebuilt_after(cursor, Invocation._meta.db_table, rows_added=count):
            cursor.execute(INSERT_INVOCATIONS_SQL.format(table=qn(Invocation._meta.db_table)), params)
            invocations = cursor.rowcount
        with indexes_rebuilt_after(cursor, InvocationEdge._meta.db_table, rows_added=count - result_trees(cursor)):
            cursor.execute(INSERT_EDGES_SQL.format(table=qn(InvocationEdge._meta.db_table)))
            edges = cursor.rowcount
        if delayed:
            for sql in _delayed_sql(seed):
                cursor.execute(sql, params)
            cursor.execute("DROP TABLE gen_delayed, gen_delayed_senders, gen_delayed_targets")
            cursor.execute("DROP FUNCTION pg_temp.gen_bytes(bytea)")
        cursor.execute(
            "SELECT shape, count(*), sum(size), max(size) FROM gen_plan GROUP BY shape ORDER BY sum(size) DESC"
        )
        shapes = [(shape, int(trees), int(nodes), int(biggest)) for shape, trees, nodes, biggest in cursor.fetchall()]
        result = GenerationResult(
            invocations=invocations,
            edges=edges,
            trees=sum(s[1] for s in shapes),
            seconds=0.0,
            shapes=shapes,
            delayed=delayed,
            delayed_burst_at=params["burst"] if delayed else None,
        )

        def sample(sql: str) -> str | None:
            cursor.execute(f"SELECT pg_temp.gen_id(n) FROM ({sql}) AS s(n)")
            row = cursor.fetchone()
            return row[0] if row else None

        cursor.execute("SELECT base, size FROM gen_plan WHERE shape = 'big'")
        if big := cursor.fetchone():
            result.big_tree_root = sample(f"SELECT {int(big[0])}::bigint")
            result.big_tree_leaf = sample(f"SELECT {int(big[0]) + int(big[1]) - 1}::bigint")
            result.big_tree_size = int(big[1])
        result.small_tree_node = sample("SELECT base + 2 FROM gen_plan WHERE shape = 'small' AND size = 4 LIMIT 1")
        result.chain_leaf = sample(
            "SELECT base + size - 1 FROM gen_plan WHERE shape = 'chain' ORDER BY size DESC LIMIT 1"
        )
        cursor.execute("DROP VIEW gen_rows")
        cursor.execute("DROP TABLE gen_plan, gen_handlers")
        cursor.execute(
            "DROP FUNCTION pg_temp.gen_handler(bigint, boolean), pg_temp.gen_id(bigint), pg_temp.gen_u(bigint, bigint)"
        )
    analyze()
    # Rows written behind the sync engine's back: the service map's rollups are built again from all of them.
    result.rollup_seconds = rollups.rebuild().seconds
    result.seconds = time.monotonic() - t0
    return result


class Command(BaseCommand):
    help = "Fill our tables with synthetic invocations (ids inv_1gen...), or --delete exactly those."

    result: GenerationResult | None = None

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--count", type=int, default=1_000_000, help="invocations to create (exactly)")
        parser.add_argument("--seed", type=int, default=1, help="same seed, same rows")
        parser.add_argument(
            "--big-tree", type=int, default=10_000, help="nodes in the one big tree (0: none); default 10,000"
        )
        parser.add_argument(
            "--delayed", type=int, default=0, help="also this many pending delayed messages, with senders and payloads"
        )
        parser.add_argument("--trees", action="store_true", help="also print the tree shapes and sample ids")
        parser.add_argument("--delete", action="store_true", help="remove every synthetic row instead")

    def handle(self, *args: Any, **options: Any) -> None:
        if options["delete"]:
            t0 = time.monotonic()
            invocations, edges, journal = delete_synthetic()
            self.stdout.write(
                f"deleted {invocations:,} synthetic invocations, {edges:,} edges, {journal:,} journal entries "
                f"in {time.monotonic() - t0:.1f} s"
            )
            return
        try:
            result = generate(
                options["count"], seed=options["seed"], big_tree=options["big_tree"], delayed=options["delayed"]
            )
        except ValueError as exc:
            raise CommandError(str(exc)) from None
        self.result = result
        self.stdout.write(
            f"generated {result.invocations:,} invocations in {result.trees:,} trees and {result.edges:,} edges "
            f"in {result.seconds:.1f} s (VACUUM ANALYZE and {result.rollup_seconds:.1f} s of service map rollups "
            "included; no journal entries)"
        )
        if result.big_tree_root:
            self.stdout.write(f"{result.big_tree_size:,}-node tree: root {result.big_tree_root}")
        if result.delayed:
            self.stdout.write(
                f"{result.delayed:,} pending delayed messages (and their senders), a burst at {result.delayed_burst_at}"
            )
        if options["trees"]:
            self.stdout.write("shape    trees      nodes  largest")
            for shape, trees, nodes, biggest in result.shapes:
                self.stdout.write(f"{shape:<6} {trees:>8,} {nodes:>10,} {biggest:>8,}")
            for label, value in (
                ("big tree leaf (deepest level)", result.big_tree_leaf),
                ("node in a 4-node tree", result.small_tree_node),
                ("bottom of the longest chain", result.chain_leaf),
            ):
                if value:
                    self.stdout.write(f"{label}: {value}")
