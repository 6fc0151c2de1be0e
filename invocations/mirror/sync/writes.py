"""Bulk writes for the sync engine.

COPY into a temporary table, then one INSERT ... SELECT ... ON CONFLICT: about
5x faster than the multi-row VALUES that bulk_create(update_conflicts=True)
emits (DESIGN.md, measured facts). The conflict update is guarded so a re-read
row that did not change is not rewritten (no dead tuple, no false "changed").
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from itertools import chain
from operator import itemgetter
from typing import Any

from django.db import connection, models, transaction


def _columns(model: type[models.Model]) -> list[models.Field]:
    # A CompositePrimaryKey is a field without a column of its own.
    return [f for f in model._meta.local_concrete_fields if f.column]


def _pk_columns(model: type[models.Model]) -> list[str]:
    pk = model._meta.pk
    fields = pk.fields if isinstance(pk, models.CompositePrimaryKey) else [pk]
    return [f.column for f in fields if isinstance(f, models.Field) and f.column]


class RawJson(str):
    """JSON text that goes to a jsonb column as it is: Restate's entry_json can be
    large, and parsing it only for Django to dump it again dominated the sync."""


def _copy_type(field: models.Field) -> str | None:
    """The type COPY is told for the column, so psycopg picks each value's dumper once per
    column rather than per value (a third of the COPY's Python time); None: let it pick."""
    if isinstance(field, models.JSONField):
        return "text"
    db_type = (field.db_type(connection) or "").split("(")[0].strip()
    return _COPY_TYPES.get(db_type)


_COPY_TYPES = {
    "varchar": "text",
    "text": "text",
    "integer": "int4",
    "bigint": "int8",
    "smallint": "int2",
    "boolean": "bool",
    "timestamp with time zone": "timestamptz",
}

Instance = models.Model | Mapping[str, Any]


def _copy_rows(cursor: Any, table: str, fields: list[models.Field], instances: Iterable[Instance]) -> int:
    """COPY model instances, or dicts keyed by attname holding every column (the sync's
    hot path: building a model per row cost more than writing it)."""
    columns = ", ".join(connection.ops.quote_name(f.column) for f in fields)
    attnames = [f.attname for f in fields]
    json_at = [i for i, f in enumerate(fields) if isinstance(f, models.JSONField)]
    from_dict = itemgetter(*attnames)
    types = [_copy_type(f) for f in fields]
    count = 0
    rows = iter(instances)
    first = next(rows, None)
    with cursor.copy(f"COPY {table} ({columns}) FROM STDIN") as copy:
        if first is None:
            return 0
        # Only for dicts: their values come from our mapping, one Python type per column
        # (a model's may be anything its field accepts, e.g. a timedelta for a text column).
        if all(types) and not isinstance(first, models.Model):
            copy.set_types(types)
        for obj in chain([first], rows):
            if isinstance(obj, models.Model):
                values = [getattr(obj, a) for a in attnames]
            else:
                values = list(from_dict(obj)) if len(attnames) > 1 else [from_dict(obj)]
            # JSON goes as text (COPY's text format): RawJson as Restate wrote it, anything else dumped here.
            for i in json_at:
                value = values[i]
                if value is not None and type(value) is not RawJson:
                    values[i] = json.dumps(value)
            copy.write_row(values)
            count += 1
    return count


def upsert(
    model: type[models.Model],
    instances: Sequence[Instance],
    *,
    update_fields: Sequence[str] | None = None,
    guard_fields: Sequence[str] = (),
    keep_existing_fields: Sequence[str] = (),
    insert_sql: Mapping[str, str] | None = None,
    update_sql: Mapping[str, str] | None = None,
    returning: Sequence[str] = (),
    newer_sql: str = "",
    source: str | None = None,
) -> list[tuple]:
    """Insert `instances` (model instances or attname -> value dicts), updating rows whose primary key exists.

    Keys must be unique within `instances` (ON CONFLICT cannot touch a row twice).

    update_fields: columns overwritten on conflict (None: leave existing rows alone).
    guard_fields: update only when one of these differs (IS DISTINCT FROM).
    keep_existing_fields: on conflict keep our non-null value (COALESCE(ours, theirs)).
    insert_sql / update_sql: column -> SQL expression evaluated in PostgreSQL (e.g. clock_timestamp()).
    returning: columns returned for each row inserted or actually updated.
    newer_sql: a condition on `t` (ours) and `EXCLUDED` (theirs) an update must also meet:
        two writers side by side must not replace a newer state with an older one.
    source: a table or parenthesised query holding the rows (every column, named as the model's
        table names them) to write instead of `instances`.
    """
    if not instances and source is None:
        return []
    insert_sql = dict(insert_sql or {})
    update_sql = dict(update_sql or {})
    qn = connection.ops.quote_name
    table = qn(model._meta.db_table)
    fields = _columns(model)
    temp = qn(f"sync_tmp_{model._meta.db_table}")
    by_name = {f.name: f for f in fields} | {f.attname: f for f in fields}

    def col(name: str) -> str:
        return by_name[name].column

    select = ", ".join(insert_sql.get(f.column) or insert_sql.get(f.name) or f"s.{qn(f.column)}" for f in fields)
    target_columns = ", ".join(qn(f.column) for f in fields)
    conflict = ", ".join(qn(c) for c in _pk_columns(model))
    if update_fields is None:
        action = "DO NOTHING"
    else:
        sets = []
        for name in update_fields:
            c = qn(col(name))
            if name in keep_existing_fields:
                sets.append(f"{c} = COALESCE(t.{c}, EXCLUDED.{c})")
            else:
                sets.append(f"{c} = EXCLUDED.{c}")
        sets += [f"{qn(col(name))} = {expr}" for name, expr in update_sql.items()]
        action = "DO UPDATE SET " + ", ".join(sets)
        if guard_fields:
            ours = ", ".join(f"t.{qn(col(g))}" for g in guard_fields)
            theirs = ", ".join(f"EXCLUDED.{qn(col(g))}" for g in guard_fields)
            action += f" WHERE ({ours}) IS DISTINCT FROM ({theirs})"
        if newer_sql:
            action += f" {'AND' if guard_fields else 'WHERE'} ({newer_sql})"
    ret = f" RETURNING {', '.join('t.' + qn(col(r)) for r in returning)}" if returning else ""

    # The raw psycopg cursor (for COPY) skips Django's error translation; restore it. No savepoint
    # within a caller's transaction: no caller goes on after an error, and each one is a round trip.
    with (
        transaction.atomic(savepoint=False),
        connection.cursor() as wrapper,
        connection.wrap_database_errors,
    ):
        cursor = wrapper.cursor
        if source is None:
            cursor.execute(
                f"CREATE TEMP TABLE IF NOT EXISTS {temp} (LIKE {table} INCLUDING DEFAULTS) ON COMMIT DELETE ROWS"
            )
            cursor.execute(f"TRUNCATE {temp}")
            _copy_rows(cursor, temp, fields, instances)
            source = temp
        cursor.execute(
            f"INSERT INTO {table} AS t ({target_columns}) SELECT {select} FROM {source} s ON CONFLICT ({conflict}) {action}{ret}"
        )
        return cursor.fetchall() if returning else []


def replace_all(model: type[models.Model], instances: Sequence[Instance]) -> None:
    """Make the table hold exactly `instances` (snapshot tables: queues, locks, ...)."""
    table = connection.ops.quote_name(model._meta.db_table)
    with transaction.atomic(), connection.cursor() as wrapper, connection.wrap_database_errors:
        wrapper.cursor.execute(f"DELETE FROM {table}")
        if instances:
            _copy_rows(wrapper.cursor, table, _columns(model), instances)


def stage(name: str, model: type[models.Model], instances: Iterable[Instance]) -> int:
    """COPY `instances` into the session temp table `name`, shaped like `model`'s table
    (created when missing, kept across commits; callers drop it with `drop_temp`)."""
    qn = connection.ops.quote_name
    with connection.cursor() as wrapper, connection.wrap_database_errors:
        cursor = wrapper.cursor
        cursor.execute(
            f"CREATE TEMP TABLE IF NOT EXISTS {qn(name)} (LIKE {qn(model._meta.db_table)} INCLUDING DEFAULTS)"
        )
        return _copy_rows(cursor, qn(name), _columns(model), instances)


def copy_into_temp(name: str, *, columns: Sequence[tuple[str, str]], rows: Iterable[Sequence[Any]]) -> int:
    """Load `rows` into a session temp table `name` (column name, SQL type) and ANALYZE it.

    The table outlives the transaction: reconciliation pages through it while
    committing each page it writes. Callers drop it (`drop_temp`). ANALYZE because
    autovacuum never sees temp tables, and the anti-joins need row counts to hash.
    """
    qn = connection.ops.quote_name
    temp = qn(name)
    with connection.cursor() as wrapper, connection.wrap_database_errors:
        cursor = wrapper.cursor
        definition = ", ".join(f"{qn(column)} {sql_type}" for column, sql_type in columns)
        cursor.execute(f"CREATE TEMP TABLE IF NOT EXISTS {temp} ({definition})")
        cursor.execute(f"TRUNCATE {temp}")
        count = 0
        with cursor.copy(f"COPY {temp} ({', '.join(qn(c) for c, _ in columns)}) FROM STDIN") as copy:
            for row in rows:
                copy.write_row(row)
                count += 1
        cursor.execute(f"ANALYZE {temp}")
        return count


def drop_temp(*names: str) -> None:
    with connection.cursor() as cursor:
        for name in names:
            cursor.execute(f"DROP TABLE IF EXISTS {connection.ops.quote_name(name)}")
