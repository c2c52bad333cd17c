"""Every SQL statement minies runs on PostgreSQL: the names, parameters and result columns of
``sqlite_sql``, in PostgreSQL's dialect (``?`` placeholders, translated by the connection).

The schema is the seed's: ``event_id UUID``, ``created_at TIMESTAMPTZ``, ``data`` and
``metadata`` as ``json``, not ``jsonb``: ``jsonb`` reorders keys, drops whitespace and
duplicate keys and rewrites numbers (``1e2`` becomes ``100``), so the bytes that were hashed
could not be read back and the chain would not verify. ``json`` keeps the exact text; index
inside payloads with an expression index, e.g.
``CREATE INDEX ON events (((data::jsonb) ->> 'customer_id'))``.

Reads return what the SQLite backend returns: ids and timestamps as the same text
(``TIMESTAMP`` below), payloads as JSON text, so the engine and the hash chain never know
which backend they run on.
"""

from __future__ import annotations

from typing import Final

# Statements in SQL both databases speak: the same text on both backends.
from minies._backends.sqlite_sql import (  # noqa: F401 - the engine finds them here
    ADD_KEY,
    ADVANCE_PROJECTION,
    ALL_SNAPSHOTS,
    ANY_KEY,
    COUNTS,
    DEAD_LETTER_ATTEMPTS,
    DROP_SNAPSHOTS,
    DROP_SNAPSHOTS_OF,
    ES_INSERT_RECORD,
    ES_STREAM_TYPE,
    ES_TRACK,
    ES_TRACKED,
    EVENT_TYPE_AT,
    FORGET_KEY,
    FORGOTTEN_SUBJECTS,
    HASH_AT,
    HEAD,
    HEAD_POSITION,
    INSERT_EVENT,
    KEY_BY_ID,
    KEY_OF_SUBJECT,
    KEYS_OF_SUBJECT,
    LATEST_SNAPSHOT,
    PROJECTION_POSITIONS,
    PROJECTION_STATE,
    SOME_KEY,
    STORED_AFTER,
    SUBSCRIPTION_POSITION,
    TYPE_COUNTS,
    UNPARK,
    VERSION_GAPS,
)

# 5: the head moves only inside the append trigger, run as the log's owner (SECURITY DEFINER),
# so a role that appends needs no right to write the head; personal-data keys take no change but
# their destruction.
SCHEMA_VERSION: Final = 5

# A processor's page claims its consumer before it reads the checkpoint: BEGIN takes no lock
# here, so without it two sessions would read the same checkpoint and process the same page
# (a transaction-scoped advisory lock, per schema and consumer name).
CLAIM_CONSUMER: Final = "SELECT pg_advisory_xact_lock(hashtext(current_schema() || '/minies consumer/' || ?))"

# created_at as the SQLite backend stores it: 2026-03-04T15:23:47.123456Z
TIMESTAMP: Final = """to_char({} AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')"""


def _ts(column: str) -> str:
    return TIMESTAMP.format(column)


def _netstring(expression: str) -> str:
    return f"octet_length({expression}) || ':' || {expression} || ','"


_CHAINED: Final = (
    "position::text",
    "event_id::text",
    "aggregate_id",
    "aggregate_type",
    "event_type",
    "version::text",
    "data::text",
    "metadata::text",
    _ts("created_at"),
)


# The head row: the last position and its hash, locked by each writer until it commits, so
# positions are handed out in commit order with no gaps (a sequence hands out numbers at
# INSERT, but rows appear at COMMIT: readers would skip events or see holes). The trigger
# moves it once per INSERT or COPY statement, refusing rows that do not take the next
# positions, whichever client inserts.
APPEND_FUNCTION_V4: Final = """
CREATE FUNCTION {schema}.minies_append() RETURNS trigger LANGUAGE plpgsql AS $minies$
DECLARE
  first bigint;
  last bigint;
  n bigint;
BEGIN
  SELECT min(position), max(position), count(*) INTO first, last, n FROM new_rows;
  UPDATE {schema}.minies_head SET position = last, hash = (SELECT hash FROM new_rows WHERE position = last)
    WHERE position = first - 1 AND last - first + 1 = n;
  IF NOT FOUND THEN
    RAISE EXCEPTION 'minies: events are append-only; a new event must take the next position';
  END IF;
  RETURN NULL;
END $minies$"""
# Since schema 5 the trigger runs as the function's owner (who owns the log), with the search
# path pinned so no object of the inserting role's can stand in for minies'; and whoever inserts,
# the rows must be ones verify accepts: each hash chains its row (the canonical encoding of
# _audit, as CHAIN builds it) to the one before, and each aggregate's versions follow its last.
# A role that may append cannot leave a log that never verifies again.
DEFINER: Final = "SECURITY DEFINER SET search_path = pg_catalog, pg_temp"
_CANONICAL: Final = (
    f"convert_to({' || '.join(_netstring(c) for c in _CHAINED)}"
    f" || CASE schema_version WHEN 1 THEN '' ELSE {_netstring('schema_version::text')} END, 'UTF8')"
)
APPEND_FUNCTION: Final = f"""
CREATE FUNCTION {{schema}}.minies_append() RETURNS trigger LANGUAGE plpgsql {DEFINER} AS $minies$
DECLARE
  first bigint;
  last bigint;
  n bigint;
  previous bytea;
BEGIN
  SELECT min(position), max(position), count(*) INTO first, last, n FROM new_rows;
  SELECT h.hash INTO previous FROM {{schema}}.minies_head h WHERE h.position = first - 1 AND last - first + 1 = n
    FOR UPDATE;
  IF NOT FOUND THEN
    RAISE EXCEPTION 'minies: events are append-only; a new event must take the next position';
  END IF;
  IF EXISTS (SELECT 1 FROM (SELECT r.hash, lag(r.hash) OVER (ORDER BY r.position) AS before, {_CANONICAL} AS canonical
      FROM new_rows r) c WHERE c.hash IS DISTINCT FROM sha256(coalesce(c.before, previous) || c.canonical)) THEN
    RAISE EXCEPTION 'minies: a new event''s hash must chain it to the event before (see verify); refused';
  END IF;
  IF EXISTS (SELECT 1 FROM (SELECT r.aggregate_id, r.version,
      lag(r.version) OVER (PARTITION BY r.aggregate_id ORDER BY r.position) AS before FROM new_rows r) v
      WHERE v.version <> 1 + coalesce(v.before, (SELECT max(e.version) FROM {{schema}}.events e
        WHERE e.aggregate_id = v.aggregate_id AND e.position < first), 0)) THEN
    RAISE EXCEPTION 'minies: a new event''s version must follow its aggregate''s last; refused';
  END IF;
  UPDATE {{schema}}.minies_head SET position = last, hash = (SELECT hash FROM new_rows WHERE position = last);
  IF NOT FOUND THEN
    RAISE EXCEPTION 'minies: the head did not move; the append is refused';
  END IF;
  RETURN NULL;
END $minies$"""
REFUSE_FUNCTION: Final = """
CREATE FUNCTION {schema}.minies_refuse() RETURNS trigger LANGUAGE plpgsql AS $minies$
BEGIN
  RAISE EXCEPTION 'minies: events are immutable; % is refused', TG_OP;
END $minies$"""
# What an append needs before it writes: the head, once this writer holds the log's lock (a
# transaction-level advisory lock: no row is written to take it), then the aggregate's
# version and type. A VOLATILE function reads each statement with a fresh snapshot, so all
# of it is read after the lock is granted: it includes every commit before ours. (The
# trigger's UPDATE of the head row orders any other client's inserts too.)
APPEND_STATE_FUNCTION: Final = """
CREATE FUNCTION {schema}.minies_append_state(aggregate text)
RETURNS TABLE (version bigint, aggregate_type text, head bigint, hash bytea) LANGUAGE plpgsql AS $minies$
BEGIN
  PERFORM pg_advisory_xact_lock('{schema}.minies_head'::regclass::oid::bigint);
  RETURN QUERY SELECT
    (SELECT max(e.version) FROM {schema}.events e WHERE e.aggregate_id = aggregate),
    (SELECT e.aggregate_type FROM {schema}.events e WHERE e.aggregate_id = aggregate AND e.version = 1),
    h.position, h.hash FROM {schema}.minies_head h;
END $minies$"""

EVENTS_TRIGGERS: Final = (
    "CREATE TRIGGER events_append_only AFTER INSERT ON {schema}.events REFERENCING NEW TABLE AS new_rows"
    " FOR EACH STATEMENT EXECUTE FUNCTION {schema}.minies_append()",
    "CREATE TRIGGER events_no_update BEFORE UPDATE ON {schema}.events"
    " FOR EACH ROW EXECUTE FUNCTION {schema}.minies_refuse()",
    "CREATE TRIGGER events_no_delete BEFORE DELETE ON {schema}.events"
    " FOR EACH ROW EXECUTE FUNCTION {schema}.minies_refuse()",
    "CREATE TRIGGER events_no_truncate BEFORE TRUNCATE ON {schema}.events"
    " FOR EACH STATEMENT EXECUTE FUNCTION {schema}.minies_refuse()",
)
# A key row takes one change: its destruction by forget (the key gone, when it went noted).
# Anything else, a DELETE or TRUNCATE included, would make sealed fields unreadable for good.
KEYS_GUARD_FUNCTION: Final = """
CREATE FUNCTION {schema}.minies_keys_guard() RETURNS trigger LANGUAGE plpgsql AS $minies$
BEGIN
  IF TG_OP = 'UPDATE' AND NEW.key IS NULL AND NEW.forgotten_at IS NOT NULL
     AND (NEW.key_id, NEW.subject, NEW.created_at) = (OLD.key_id, OLD.subject, OLD.created_at) THEN
    RETURN NEW;
  END IF;
  RAISE EXCEPTION 'minies: personal-data keys are only destroyed, by forget; % is refused', TG_OP;
END $minies$"""
KEYS_GUARDS: Final = (
    "CREATE TRIGGER minies_keys_guard BEFORE DELETE OR UPDATE ON {schema}.minies_keys"
    " FOR EACH ROW EXECUTE FUNCTION {schema}.minies_keys_guard()",
    "CREATE TRIGGER minies_keys_no_truncate BEFORE TRUNCATE ON {schema}.minies_keys"
    " FOR EACH STATEMENT EXECUTE FUNCTION {schema}.minies_keys_guard()",
)

# Statements that bring schema version N-1 to N (run on open, in one transaction).
MIGRATIONS: Final = {
    4: (
        """
        CREATE TABLE minies_keys (
            key_id       TEXT        PRIMARY KEY,
            subject      TEXT        NOT NULL,
            key          BYTEA,
            created_at   TIMESTAMPTZ NOT NULL,
            forgotten_at TIMESTAMPTZ
        )""",
        "CREATE UNIQUE INDEX minies_keys_live ON minies_keys (subject) WHERE key IS NOT NULL",
        # ANALYZE (autovacuum runs it) copies sampled values into pg_statistic, out of forget's reach
        "ALTER TABLE minies_keys ALTER COLUMN key SET STATISTICS 0",
    ),
    5: (
        APPEND_FUNCTION.replace("CREATE FUNCTION", "CREATE OR REPLACE FUNCTION", 1),
        KEYS_GUARD_FUNCTION.replace("CREATE FUNCTION", "CREATE OR REPLACE FUNCTION", 1),
        *KEYS_GUARDS,
        "ALTER TABLE minies_keys ALTER COLUMN key SET STATISTICS 0",  # (as 4 creates them now)
        "ALTER TABLE minies_snapshots ALTER COLUMN state SET STATISTICS 0",
    ),
}
CREATE: Final = (
    """
    CREATE TABLE {schema}.events (
        position       BIGINT      PRIMARY KEY,
        event_id       UUID        NOT NULL UNIQUE,
        aggregate_id   TEXT        NOT NULL,
        aggregate_type TEXT        NOT NULL,
        event_type     TEXT        NOT NULL,
        version        BIGINT      NOT NULL CHECK (version >= 1),
        data           JSON        NOT NULL,
        metadata       JSON        NOT NULL DEFAULT '{{}}',
        created_at     TIMESTAMPTZ NOT NULL,
        hash           BYTEA       NOT NULL,
        schema_version INTEGER     NOT NULL DEFAULT 1,
        UNIQUE (aggregate_id, version)
    )""",
    """
    CREATE TABLE {schema}.minies_head (
        one      BOOLEAN PRIMARY KEY DEFAULT true CHECK (one),
        position BIGINT  NOT NULL,
        hash     BYTEA   NOT NULL
    )""",
    "INSERT INTO {schema}.minies_head (position, hash) VALUES (0, '\\x" + "00" * 32 + "')",
    APPEND_FUNCTION,
    REFUSE_FUNCTION,
    APPEND_STATE_FUNCTION,
    *EVENTS_TRIGGERS,
    """
    CREATE TABLE {schema}.minies_event_types (
        event_type     TEXT        NOT NULL,
        schema_version INTEGER     NOT NULL,
        python_class   TEXT        NOT NULL,
        json_schema    TEXT        NOT NULL,
        first_seen     TIMESTAMPTZ NOT NULL,
        PRIMARY KEY (event_type, schema_version)
    )""",
    """
    CREATE TABLE {schema}.minies_snapshots (
        aggregate_id   TEXT        NOT NULL,
        version        BIGINT      NOT NULL,
        aggregate_type TEXT        NOT NULL,
        fingerprint    TEXT        NOT NULL,
        state          TEXT        NOT NULL,
        created_at     TIMESTAMPTZ NOT NULL,
        PRIMARY KEY (aggregate_id, version)
    )""",
    "ALTER TABLE {schema}.minies_snapshots ALTER COLUMN state SET STATISTICS 0",  # (as the keys: plaintext)
    """
    CREATE TABLE {schema}.minies_projections (
        name       TEXT        PRIMARY KEY,
        version    INTEGER     NOT NULL,
        position   BIGINT      NOT NULL,
        objects    TEXT        NOT NULL,
        updated_at TIMESTAMPTZ NOT NULL
    )""",
    """
    CREATE TABLE {schema}.minies_subscriptions (
        name       TEXT        PRIMARY KEY,
        position   BIGINT      NOT NULL,
        updated_at TIMESTAMPTZ NOT NULL
    )""",
    """
    CREATE TABLE {schema}.minies_dead_letters (
        subscription TEXT        NOT NULL,
        position     BIGINT      NOT NULL,
        attempts     INTEGER     NOT NULL,
        error        TEXT        NOT NULL,
        parked_at    TIMESTAMPTZ NOT NULL,
        PRIMARY KEY (subscription, position)
    )""",
    "CREATE TABLE {schema}.minies_schema (version INTEGER NOT NULL)",
    *(statement.replace(" minies_keys ", " {schema}.minies_keys ") for statement in MIGRATIONS[4]),
    KEYS_GUARD_FUNCTION,
    *KEYS_GUARDS,
    f"INSERT INTO {{schema}}.minies_schema VALUES ({SCHEMA_VERSION})",
)
# What verify expects, by schema version (a read-only store does not migrate an older log):
# these triggers on the events table (and on minies_keys), as created, enabled for ordinary
# sessions (tgenabled 'O'), and nothing else there; the functions as created and owned by the
# log's owner; no rule and no row-level security on minies' tables.
_EVENTS_TRIGGER_NAMES: Final = ("events_append_only", "events_no_update", "events_no_delete", "events_no_truncate")
TRIGGERS: Final = {4: dict(zip(_EVENTS_TRIGGER_NAMES, EVENTS_TRIGGERS, strict=True))}
TRIGGERS[5] = {**TRIGGERS[4], "minies_keys_guard": KEYS_GUARDS[0], "minies_keys_no_truncate": KEYS_GUARDS[1]}
FUNCTIONS: Final = {
    4: {
        "minies_append": APPEND_FUNCTION_V4,
        "minies_refuse": REFUSE_FUNCTION,
        "minies_append_state": APPEND_STATE_FUNCTION,
    },
}
FUNCTIONS[5] = {**FUNCTIONS[4], "minies_append": APPEND_FUNCTION, "minies_keys_guard": KEYS_GUARD_FUNCTION}
# Each trigger on the events table or minies' tables: its table, name, state and definition
# (with the schema's name taken out: the search path is the store's).
TRIGGER_STATE: Final = (
    "SELECT c.relname, t.tgname, t.tgenabled, replace(pg_get_triggerdef(t.oid), quote_ident(n.nspname) || '.', '')"
    " FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid JOIN pg_namespace n ON n.oid = c.relnamespace"
    " WHERE n.oid = current_schema()::regnamespace AND (c.relname = 'events' OR c.relname LIKE 'minies\\_%')"
    " AND NOT t.tgisinternal ORDER BY c.relname, t.tgname"
)
# minies' functions in the store's schema (an overload is a function of the same name too).
FUNCTION_STATE: Final = (
    "SELECT p.proname, l.lanname, p.prosecdef, coalesce(array_to_string(p.proconfig, ';'), ''), p.prosrc,"
    " pg_get_userbyid(p.proowner), pg_get_function_identity_arguments(p.oid)"
    " FROM pg_proc p JOIN pg_language l ON l.oid = p.prolang"
    " WHERE p.pronamespace = current_schema()::regnamespace AND p.proname LIKE 'minies\\_%'"
    " ORDER BY p.proname, p.oid"
)
# minies' tables: kind, owner, row-level security; and the rules on them.
TABLE_STATE: Final = (
    "SELECT c.relname, c.relkind, pg_get_userbyid(c.relowner), c.relrowsecurity OR c.relforcerowsecurity"
    " OR EXISTS (SELECT 1 FROM pg_policy p WHERE p.polrelid = c.oid)"
    " FROM pg_class c WHERE c.relnamespace = current_schema()::regnamespace"
    " AND (c.relname = 'events' OR c.relname LIKE 'minies\\_%') AND c.relkind NOT IN ('i', 'S', 'I')"
    " ORDER BY c.relname"
)
RULE_STATE: Final = (
    "SELECT c.relname || '.' || r.rulename FROM pg_rewrite r JOIN pg_class c ON c.oid = r.ev_class"
    " WHERE c.relnamespace = current_schema()::regnamespace AND (c.relname = 'events' OR c.relname LIKE 'minies\\_%')"
    " AND r.rulename <> '_RETURN' ORDER BY 1"
)
# Triggers on 'O' do not fire in a session whose session_replication_role is 'replica': a
# default that says so, for any role or this database, would switch minies' guards off.
REPLICA_DEFAULTS: Final = (
    "SELECT CASE s.setrole WHEN 0 THEN 'every role' ELSE pg_get_userbyid(s.setrole) END || ' (' || c || ')'"
    " FROM pg_db_role_setting s, unnest(s.setconfig) c"
    " WHERE c LIKE 'session\\_replication\\_role=%' AND c <> 'session_replication_role=origin'"
    " AND s.setdatabase IN (0, (SELECT oid FROM pg_database WHERE datname = current_database()))"
    " UNION ALL SELECT 'this session (' || current_setting('session_replication_role') || ')'"
    " WHERE current_setting('session_replication_role') <> 'origin'"
)
# What each kind of role gets (``minies grant``). Every role: the schema, and reads of the log
# and minies' tables. An app writes only through minies' statements: new rows of the events table
# (the trigger moves the head, as the owner), and minies' bookkeeping; a key row it can only
# destroy (the keys' guard). It creates its read models' tables in the schema, so it owns them.
MINIES_TABLES: Final = (
    "events",
    "minies_head",
    "minies_schema",
    "minies_event_types",
    "minies_keys",
    "minies_snapshots",
    "minies_projections",
    "minies_subscriptions",
    "minies_dead_letters",
)
GRANTS: Final = {
    "auditor": (
        "GRANT USAGE ON SCHEMA {schema} TO {role}",
        f"GRANT SELECT ON {', '.join('{schema}.' + t for t in MINIES_TABLES)} TO {{role}}",
    ),
    "reader": (
        "GRANT USAGE ON SCHEMA {schema} TO {role}",
        "GRANT SELECT ON ALL TABLES IN SCHEMA {schema} TO {role}",
    ),
    "app": (
        "GRANT USAGE, CREATE ON SCHEMA {schema} TO {role}",
        "GRANT SELECT ON ALL TABLES IN SCHEMA {schema} TO {role}",
        "GRANT INSERT ON {schema}.events, {schema}.minies_event_types TO {role}",
        "GRANT INSERT, UPDATE ON {schema}.minies_keys TO {role}",
        "GRANT INSERT, UPDATE, DELETE ON {schema}.minies_snapshots, {schema}.minies_projections,"
        " {schema}.minies_subscriptions, {schema}.minies_dead_letters TO {role}",
        "GRANT EXECUTE ON FUNCTION {schema}.minies_append_state(text) TO {role}",
    ),
}
# Whatever a role held on minies' tables before is taken back first: it gets exactly the above.
REVOKE: Final = f"REVOKE ALL ON {', '.join('{schema}.' + t for t in MINIES_TABLES)} FROM {{role}}"
# Tables already in the schema that are not minies' (read models made by another role): an app
# writes them (a rebuild, which drops them, needs their owner).
OTHER_TABLES: Final = (
    "SELECT quote_ident(relname) FROM pg_class WHERE relnamespace = current_schema()::regnamespace"
    " AND relkind IN ('r', 'p') AND relname <> 'events' AND relname NOT LIKE 'minies\\_%'"
)
IDENTIFY: Final = "SELECT to_regclass('events') IS NOT NULL, to_regclass('minies_schema') IS NOT NULL, current_schema()"
SCHEMA_VERSION_NOW: Final = "SELECT max(version) FROM minies_schema"

# ---------------------------------------------------------------------------- the events
_EVENT_COLUMNS: Final = (
    "position, event_id::text, aggregate_id, aggregate_type, event_type, version,"
    f" {_ts('created_at')}, data::text, metadata::text"
)
# Many rows at once go by COPY (one statement, one trigger run): the same columns, in order.
BULK: Final = {
    INSERT_EVENT: "COPY events (position, event_id, aggregate_id, aggregate_type, event_type, version,"
    " data, metadata, created_at, hash, schema_version) FROM STDIN"
}
# Sent between a one-event insert and its COMMIT: fails (so the COMMIT never runs) unless the
# row is there, which a rule (DO INSTEAD NOTHING) or a trigger returning NULL may have prevented.
# (The cast of a value computed per row cannot be folded away when the statement is planned.)
STORED_AT: Final = (
    "SELECT CAST(CASE WHEN count(*) = 1 THEN '1' ELSE 'minies: the append stored 0 of 1 events' END AS integer)"
    " FROM events WHERE position = %s"
)
SWALLOWED: Final = "minies: the append stored 0 of 1 events"
AGGREGATE_VERSION: Final = "SELECT max(version) FROM events WHERE aggregate_id = ?"
APPEND_STATE: Final = "SELECT version, aggregate_type, head, hash FROM minies_append_state(?)"
EVENT_BY_ID: Final = (
    f"SELECT aggregate_id, version, event_type, data::text, {_ts('created_at')} FROM events WHERE event_id = ?"
)
SAME_APPEND_AROUND: Final = (
    "SELECT count(*) FROM events WHERE aggregate_id = ? AND version IN (?, ?) AND created_at = ?::timestamptz"
)
READ_AGGREGATE: Final = (
    f"SELECT {_EVENT_COLUMNS} FROM events WHERE aggregate_id = ? AND version > ? AND version <= ?"
    " ORDER BY version LIMIT ?"
)
VERSIONED: Final = {"READ_AGGREGATE": READ_AGGREGATE.replace(" FROM", ", schema_version FROM", 1)}
READ_AGGREGATE_PAYLOADS: Final = (
    "SELECT '[' || string_agg(data::text, ',' ORDER BY version) || ']', string_agg(event_type, ',' ORDER BY version),"
    " max(version), count(*), min(aggregate_type), max(aggregate_type)"
    " FROM events WHERE aggregate_id = ? AND version > ? AND version <= ?"
)
READ_ALL: Final = f"SELECT {_EVENT_COLUMNS} FROM events WHERE position > ? AND position <= ? ORDER BY position LIMIT ?"
READ_ALL_TYPES: Final = (
    f"SELECT {_EVENT_COLUMNS} FROM events WHERE position > ? AND position <= ?"
    " AND event_type IN (SELECT json_array_elements_text(?::json)) ORDER BY position LIMIT ?"
)
VERSIONED["READ_ALL"] = READ_ALL.replace(" FROM", ", schema_version FROM", 1)
VERSIONED["READ_ALL_TYPES"] = READ_ALL_TYPES.replace(" FROM", ", schema_version FROM", 1)
RAW_EVENTS: Final = (
    "SELECT position, event_id::text, aggregate_id, aggregate_type, event_type, version, data::text,"
    f" metadata::text, {_ts('created_at')}, hash, schema_version FROM events WHERE position > ?"
    " ORDER BY position LIMIT ?"
)
EVENT_TYPE_ROWS: Final = dict.fromkeys(
    (3, 4, 5),
    f"SELECT event_type, schema_version, python_class, json_schema, {_ts('first_seen')} FROM minies_event_types",
)
COPY_EVENT_TYPE: Final = (
    "INSERT INTO minies_event_types (event_type, schema_version, python_class, json_schema, first_seen)"
    " VALUES (?, ?, ?, ?, ?) ON CONFLICT DO NOTHING"
)
NOTE_EVENT_TYPES: Final = (
    "INSERT INTO minies_event_types SELECT event_type, schema_version, '', '{}', min(created_at)"
    " FROM events WHERE position > ? GROUP BY event_type, schema_version ON CONFLICT DO NOTHING"
)
SNAPSHOT_ROWS: Final = (  # of versions at or below a position (a copy's source may grow meanwhile)
    f"SELECT aggregate_id, version, aggregate_type, fingerprint, state, {_ts('created_at')} FROM minies_snapshots s"
    " WHERE EXISTS (SELECT 1 FROM events e WHERE e.aggregate_id = s.aggregate_id AND e.version = s.version"
    " AND e.position <= ?)"
)
COPY_SNAPSHOT: Final = (
    "INSERT INTO minies_snapshots (aggregate_id, version, aggregate_type, fingerprint, state, created_at)"
    " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING"
)


# The canonical encoding of _audit, built by PostgreSQL (the database's encoding is UTF-8).
# Columns are typed here: a retyped value cannot be stored, so every row is "typed".
CHAIN: Final = (
    f"SELECT position, hash, convert_to({' || '.join(_netstring(c) for c in _CHAINED)}"
    f" || CASE schema_version WHEN 1 THEN '' ELSE {_netstring('schema_version::text')} END, 'UTF8')"
    " FROM events WHERE position > ? ORDER BY position LIMIT ?"
)
COMMIT_COUNTER: Final = "SELECT position FROM minies_head"

# ---------------------------------------------------------------------------- event types
STORED_TYPES: Final = dict.fromkeys((3, 4, 5), "SELECT event_type, schema_version FROM minies_event_types")
ADD_TYPE: Final = (
    "INSERT INTO minies_event_types (event_type, schema_version, python_class, json_schema, first_seen)"
    " VALUES (?, ?, ?, ?, ?) ON CONFLICT DO NOTHING"
)
EVENT_TYPE_SCHEMAS: Final = (
    f"SELECT event_type, schema_version, python_class, json_schema, {_ts('first_seen')} FROM minies_event_types"
    " ORDER BY event_type, schema_version"
)

# ---------------------------------------------------------------------------- personal data
SEALED_AGGREGATES: Final = "SELECT DISTINCT aggregate_id FROM events WHERE strpos(data::text, ?) > 0"
KEY_ROWS: Final = f"SELECT key_id, subject, key, {_ts('created_at')}, {_ts('forgotten_at')} FROM minies_keys"
COPY_KEY: Final = (
    "INSERT INTO minies_keys (key_id, subject, key, created_at, forgotten_at) VALUES (?, ?, ?, ?, ?)"
    " ON CONFLICT DO NOTHING"
)
ERASED_AFTER: Final = "SELECT data::text FROM events WHERE position > ? AND event_type = 'minies.SubjectForgotten'"
ERASED_BETWEEN: Final = (
    "SELECT data::text FROM events WHERE position > ? AND position <= ? AND event_type = 'minies.SubjectForgotten'"
)
SEALS_BEFORE: Final = "SELECT EXISTS (SELECT 1 FROM events WHERE position < ? AND strpos(data::text, ?) > 0)"
PURGE_KEYS: Final = "VACUUM FULL minies_keys"
PURGE_SNAPSHOTS: Final = "VACUUM FULL minies_snapshots"

# ---------------------------------------------------------------------------- snapshots
SAVE_SNAPSHOT: Final = (
    "INSERT INTO minies_snapshots (aggregate_id, version, aggregate_type, fingerprint, state, created_at)"
    " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (aggregate_id, version) DO UPDATE SET"
    " aggregate_type = EXCLUDED.aggregate_type, fingerprint = EXCLUDED.fingerprint, state = EXCLUDED.state,"
    " created_at = EXCLUDED.created_at"
)
PRUNE_SNAPSHOTS: Final = (
    "DELETE FROM minies_snapshots WHERE aggregate_id = ? AND version < ("
    " SELECT min(version) FROM (SELECT version FROM minies_snapshots WHERE aggregate_id = ?"
    " ORDER BY version DESC LIMIT ?) AS kept)"
)
SNAPSHOT_STATS: Final = (
    "SELECT aggregate_type, count(*), coalesce(sum(octet_length(state)), 0) FROM minies_snapshots"
    " GROUP BY aggregate_type ORDER BY aggregate_type"
)

# ---------------------------------------------------------------------------- projections
PROJECTIONS: Final = f"SELECT name, version, position, {_ts('updated_at')} FROM minies_projections ORDER BY name"
SAVE_PROJECTION: Final = (
    "INSERT INTO minies_projections (name, version, position, objects, updated_at) VALUES (?, ?, ?, ?, ?)"
    " ON CONFLICT (name) DO UPDATE SET version = EXCLUDED.version, position = EXCLUDED.position,"
    " objects = EXCLUDED.objects, updated_at = EXCLUDED.updated_at"
)
# What a projection's setup created, to drop it before a rebuild (a table's indexes and
# sequences go with it).
SCHEMA_OBJECTS: Final = (
    "SELECT CASE relkind WHEN 'v' THEN 'view' WHEN 'i' THEN 'index' ELSE 'table' END, relname FROM pg_class"
    " WHERE relnamespace = current_schema()::regnamespace AND relkind IN ('r', 'p', 'v', 'i')"
    " AND oid NOT IN (SELECT conindid FROM pg_constraint)"  # a key's index goes with its table
)

# ---------------------------------------------------------------------------- subscriptions
SAVE_SUBSCRIPTION: Final = (
    "INSERT INTO minies_subscriptions (name, position, updated_at) VALUES (?, ?, ?)"
    " ON CONFLICT (name) DO UPDATE SET position = EXCLUDED.position, updated_at = EXCLUDED.updated_at"
)
PARK: Final = (
    "INSERT INTO minies_dead_letters (subscription, position, attempts, error, parked_at) VALUES (?, ?, ?, ?, ?)"
    " ON CONFLICT (subscription, position) DO UPDATE SET attempts = EXCLUDED.attempts, error = EXCLUDED.error,"
    " parked_at = EXCLUDED.parked_at"
)
DEAD_LETTERS: Final = (
    f"SELECT position, attempts, error, {_ts('parked_at')} FROM minies_dead_letters WHERE subscription = ?"
    " ORDER BY position"
)
AGGREGATES: Final = (
    "SELECT aggregate_id, min(aggregate_type), max(version) FROM events GROUP BY aggregate_id ORDER BY aggregate_id"
)
AGGREGATES_OF_TYPE: Final = (
    "SELECT aggregate_id, min(aggregate_type), max(version) FROM events WHERE aggregate_type = ?"
    " GROUP BY aggregate_id ORDER BY aggregate_id"
)
SUBSCRIPTIONS: Final = f"SELECT name, position, {_ts('updated_at')} FROM minies_subscriptions ORDER BY name"

# ---------------------------------------------------------------------------- eventsourcing
ES_STREAM: Final = (
    "SELECT version, event_type, data::text, aggregate_type FROM events"
    " WHERE aggregate_id = ? AND version > ? AND version <= ? ORDER BY version {order} LIMIT ?"
)
ES_NOTIFICATIONS: Final = (
    "SELECT position, aggregate_id, aggregate_type, version, event_type, data::text FROM events"
    " WHERE position >= ? AND position <= ? ORDER BY position LIMIT ?"
)
ES_NOTIFICATIONS_OF_TOPICS: Final = (
    "SELECT position, aggregate_id, aggregate_type, version, event_type, data::text FROM events"
    " WHERE position >= ? AND position <= ? AND event_type IN (SELECT json_array_elements_text(?::json))"
    " ORDER BY position LIMIT ?"
)
# Processes that start together must not race to create the same table.
_ES_DDL_LOCK: Final = "SELECT pg_advisory_xact_lock(hashtext('minies.eventsourcing'))"
ES_CREATE_RECORDS: Final = (
    _ES_DDL_LOCK,
    """
    CREATE TABLE IF NOT EXISTS {table} (
        originator_id      text   NOT NULL,
        id_type            text   NOT NULL,
        originator_version bigint NOT NULL,
        topic              text   NOT NULL,
        state              bytea  NOT NULL,
        PRIMARY KEY (originator_id, originator_version)
    )""",
)
ES_RECORDS: Final = (
    "SELECT originator_version, topic, state, id_type FROM {table}"
    " WHERE originator_id = ? AND originator_version > ? AND originator_version <= ?"
    " ORDER BY originator_version {order} LIMIT ?"
)
ES_CREATE_TRACKING: Final = (
    _ES_DDL_LOCK,
    """
    CREATE TABLE IF NOT EXISTS eventsourcing_tracking (
        application_name text   PRIMARY KEY,
        notification_id  bigint NOT NULL
    )""",
)

# ---------------------------------------------------------------------------- transactions
BEGIN: Final = "BEGIN"
COMMIT: Final = "COMMIT"
ROLLBACK: Final = "ROLLBACK"
SAVEPOINT: Final = "SAVEPOINT minies"
RELEASE: Final = "RELEASE SAVEPOINT minies"
ROLLBACK_TO: Final = "ROLLBACK TO SAVEPOINT minies; RELEASE SAVEPOINT minies"
