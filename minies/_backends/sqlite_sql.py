"""Every SQL statement minies runs, the file's identity, and its migrations.

All SQL text lives here as module constants: apsw's statement cache always hits, and a second
backend would replace this module and nothing else.

The file identifies itself through two header fields (https://sqlite.org/fileformat.html):
``PRAGMA application_id`` = ``APPLICATION_ID`` says "minies", ``PRAGMA user_version`` is the
schema version. Neither needs a table, so a foreign file is recognised without writing to it.
"""

from __future__ import annotations

from typing import Any, Final

import apsw

from minies._errors import SchemaError

APPLICATION_ID: Final = 0x6D696E69  # "mini"
SCHEMA_VERSION: Final = 4

# ---------------------------------------------------------------------------- the schema
# Appends only: a row must take the next position, and must not collide with a stored event
# id or (aggregate_id, version). INSERT OR REPLACE resolves such a collision by deleting the
# stored row without firing DELETE triggers (unless a connection enables recursive_triggers:
# https://sqlite.org/lang_conflict.html), so each collision is refused here instead.
NO_UPDATE: Final = """
    CREATE TRIGGER events_no_update BEFORE UPDATE ON events
    BEGIN SELECT RAISE(ABORT, 'minies: events are immutable; UPDATE is refused'); END"""
NO_DELETE: Final = """
    CREATE TRIGGER events_no_delete BEFORE DELETE ON events
    BEGIN SELECT RAISE(ABORT, 'minies: events are immutable; DELETE is refused'); END"""
APPEND_ONLY: Final = """
    CREATE TRIGGER events_append_only BEFORE INSERT ON events BEGIN
      SELECT RAISE(ABORT, 'minies: events are append-only; a new event must take the next position')
        WHERE NEW.position IS NOT (SELECT coalesce(max(position), 0) + 1 FROM events);
      SELECT RAISE(ABORT, 'minies: events are append-only; this event_id is already recorded')
        WHERE EXISTS (SELECT 1 FROM events WHERE event_id = NEW.event_id);
      SELECT RAISE(ABORT, 'minies: events are append-only; this (aggregate_id, version) is already recorded')
        WHERE EXISTS (SELECT 1 FROM events WHERE aggregate_id = NEW.aggregate_id AND version = NEW.version);
    END"""

# `position` is the rowid (an INTEGER PRIMARY KEY keeps its values through VACUUM). minies
# assigns it as last + 1 inside the writer's IMMEDIATE transaction, so positions are
# gap-free and in commit order. The UNIQUE (aggregate_id, version) constraint is both the
# optimistic-concurrency guard and the (aggregate_id, version) index every load uses; a
# second index on the same columns would only double the write cost.
_CREATE_V1: Final = (
    """
    CREATE TABLE events (
        position       INTEGER PRIMARY KEY,
        event_id       TEXT    NOT NULL UNIQUE,
        aggregate_id   TEXT    NOT NULL,
        aggregate_type TEXT    NOT NULL,
        event_type     TEXT    NOT NULL,
        version        INTEGER NOT NULL CHECK (version >= 1),
        data           TEXT    NOT NULL,
        metadata       TEXT    NOT NULL DEFAULT '{}',
        created_at     TEXT    NOT NULL,
        hash           BLOB    NOT NULL,
        UNIQUE (aggregate_id, version)
    )""",
    # The file itself refuses changes to history, whichever client connects.
    NO_UPDATE,
    NO_DELETE,
    # (events_append_only: see APPEND_ONLY, created by migration 3.)
    """
    CREATE TABLE minies_event_types (
        event_type   TEXT PRIMARY KEY,
        python_class TEXT NOT NULL,
        json_schema  TEXT NOT NULL,
        first_seen   TEXT NOT NULL
    )""",
    """
    CREATE TABLE minies_snapshots (
        aggregate_id   TEXT    NOT NULL,
        version        INTEGER NOT NULL,
        aggregate_type TEXT    NOT NULL,
        fingerprint    TEXT    NOT NULL,
        state          TEXT    NOT NULL,
        created_at     TEXT    NOT NULL,
        PRIMARY KEY (aggregate_id, version)
    ) WITHOUT ROWID""",
    """
    CREATE TABLE minies_projections (
        name       TEXT    PRIMARY KEY,
        version    INTEGER NOT NULL,
        position   INTEGER NOT NULL,
        objects    TEXT    NOT NULL,
        updated_at TEXT    NOT NULL
    )""",
    """
    CREATE TABLE minies_subscriptions (
        name       TEXT    PRIMARY KEY,
        position   INTEGER NOT NULL,
        updated_at TEXT    NOT NULL
    )""",
    """
    CREATE TABLE minies_dead_letters (
        subscription TEXT    NOT NULL,
        position     INTEGER NOT NULL,
        attempts     INTEGER NOT NULL,
        error        TEXT    NOT NULL,
        parked_at    TEXT    NOT NULL,
        PRIMARY KEY (subscription, position)
    )""",
)

# The triggers on events verify expects: these, as created, and no other (another trigger
# could silently drop appended rows: a BEFORE INSERT trigger may RAISE(IGNORE)).
TRIGGERS: Final = {"events_no_update": NO_UPDATE, "events_no_delete": NO_DELETE, "events_append_only": APPEND_ONLY}

# Statements that bring schema version N-1 to N, run in one transaction on open.
MIGRATIONS: dict[int, tuple[str, ...]] = {
    # 2: each event records its type's schema version, for upcasting (1 for every older event).
    2: ("ALTER TABLE events ADD COLUMN schema_version INTEGER NOT NULL DEFAULT 1",),
    # 3: one row per (event type, schema version), so a reader knows which versions the file
    # holds (old code must refuse newer events, not drop their fields) and each version's
    # JSON Schema describes its own payloads.
    3: (
        "ALTER TABLE minies_event_types RENAME TO minies_event_types_v2",
        """
        CREATE TABLE minies_event_types (
            event_type     TEXT    NOT NULL,
            schema_version INTEGER NOT NULL,
            python_class   TEXT    NOT NULL,
            json_schema    TEXT    NOT NULL,
            first_seen     TEXT    NOT NULL,
            PRIMARY KEY (event_type, schema_version)
        ) WITHOUT ROWID""",
        # The old row described the type's first stored version; other versions get no schema.
        "INSERT INTO minies_event_types SELECT t.event_type, coalesce((SELECT schema_version FROM events e"
        " WHERE e.event_type = t.event_type ORDER BY position LIMIT 1), 1), python_class, json_schema, first_seen"
        " FROM minies_event_types_v2 t",
        "INSERT OR IGNORE INTO minies_event_types SELECT event_type, schema_version, '', '{}', min(created_at)"
        " FROM events GROUP BY event_type, schema_version",
        "DROP TABLE minies_event_types_v2",
        # The append-only trigger also refuses INSERT OR REPLACE over an id or version.
        "DROP TRIGGER IF EXISTS events_append_only",
        APPEND_ONLY,
    ),
    # 4: one data key per data subject, for personal fields (see _personal). Outside the
    # chain: forgetting a subject sets its key to NULL, and the log still verifies.
    4: (
        """
        CREATE TABLE minies_keys (
            key_id       TEXT PRIMARY KEY,
            subject      TEXT NOT NULL,
            key          BLOB,
            created_at   TEXT NOT NULL,
            forgotten_at TEXT
        )""",
        "CREATE UNIQUE INDEX minies_keys_live ON minies_keys (subject) WHERE key IS NOT NULL",
    ),
}

# ---------------------------------------------------------------------------- the events
EVENT_COLUMNS: Final = (
    "position, event_id, aggregate_id, aggregate_type, event_type, version, created_at, data, metadata"
)
INSERT_EVENT: Final = (
    "INSERT INTO events (position, event_id, aggregate_id, aggregate_type, event_type, version,"
    " data, metadata, created_at, hash, schema_version) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
AGGREGATE_VERSION: Final = "SELECT version FROM events WHERE aggregate_id = ? ORDER BY version DESC LIMIT 1"
HEAD: Final = "SELECT position, hash FROM events ORDER BY position DESC LIMIT 1"
# What an append needs before it writes, in one step: the aggregate's version and the head.
APPEND_STATE: Final = (
    "SELECT (SELECT version FROM events WHERE aggregate_id = ?1 ORDER BY version DESC LIMIT 1),"
    " (SELECT aggregate_type FROM events WHERE aggregate_id = ?1 AND version = 1),"
    " position, hash FROM events ORDER BY position DESC LIMIT 1"
)
EVENT_BY_ID: Final = "SELECT aggregate_id, version, event_type, data, created_at FROM events WHERE event_id = ?"
# Events of the same append share their created_at text: is the event just before or just
# after a run of versions part of the same append (so the run is only part of that batch)?
SAME_APPEND_AROUND: Final = (
    "SELECT count(*) FROM events WHERE aggregate_id = ? AND version IN (?, ?) AND created_at = ?"
)
READ_AGGREGATE: Final = (
    f"SELECT {EVENT_COLUMNS} FROM events WHERE aggregate_id = ? AND version > ? AND version <= ?"
    " ORDER BY version LIMIT ?"
)
# The same reads with each event's schema version, used only while upcasting is configured,
# so reads that need none pay nothing for it.
VERSIONED: Final = {
    "READ_AGGREGATE": READ_AGGREGATE.replace(" FROM", ", schema_version FROM", 1),
}
# One row holding a run of the aggregate's payloads as one JSON array, and their event types
# joined by commas (which an event type cannot contain): SQLite assembles both in C and
# msgspec splits the array in one call, instead of one Python step per row.
# INDEXED BY pins the scan to the UNIQUE (aggregate_id, version) index (the table's second
# unique constraint, hence its name), so rows reach group_concat in version order without
# the temp B-tree an ORDER BY inside the aggregate would cost (https://sqlite.org/lang_indexedby.html).
AGGREGATE_INDEX: Final = "sqlite_autoindex_events_2"
READ_AGGREGATE_PAYLOADS: Final = (
    "SELECT '[' || group_concat(data, ',') || ']', group_concat(event_type, ','),"
    " max(version), count(*), min(aggregate_type), max(aggregate_type)"
    f" FROM events INDEXED BY {AGGREGATE_INDEX} WHERE aggregate_id = ? AND version > ? AND version <= ?"
)
READ_ALL: Final = f"SELECT {EVENT_COLUMNS} FROM events WHERE position > ? AND position <= ? ORDER BY position LIMIT ?"
READ_ALL_TYPES: Final = (
    f"SELECT {EVENT_COLUMNS} FROM events WHERE position > ? AND position <= ?"
    " AND event_type IN (SELECT value FROM json_each(?)) ORDER BY position LIMIT ?"
)
VERSIONED["READ_ALL"] = READ_ALL.replace(" FROM", ", schema_version FROM", 1)
VERSIONED["READ_ALL_TYPES"] = READ_ALL_TYPES.replace(" FROM", ", schema_version FROM", 1)
# Copying a log exactly: rows as stored, in INSERT_EVENT's column order.
RAW_EVENTS: Final = (
    "SELECT position, event_id, aggregate_id, aggregate_type, event_type, version, data, metadata, created_at,"
    " hash, schema_version FROM events WHERE position > ? ORDER BY position LIMIT ?"
)
HASH_AT: Final = "SELECT hash FROM events WHERE position = ?"
EVENT_TYPE_ROWS: Final = {  # by the file's schema version (a read-only source is not migrated)
    2: "SELECT event_type, coalesce((SELECT schema_version FROM events e WHERE e.event_type = t.event_type"
    " ORDER BY position LIMIT 1), 1), python_class, json_schema, first_seen FROM minies_event_types t",
    3: "SELECT event_type, schema_version, python_class, json_schema, first_seen FROM minies_event_types",
    4: "SELECT event_type, schema_version, python_class, json_schema, first_seen FROM minies_event_types",
}
COPY_EVENT_TYPE: Final = (
    "INSERT OR IGNORE INTO minies_event_types (event_type, schema_version, python_class, json_schema, first_seen)"
    " VALUES (?, ?, ?, ?, ?)"
)
NOTE_EVENT_TYPES: Final = (
    "INSERT OR IGNORE INTO minies_event_types SELECT event_type, schema_version, '', '{}', min(created_at)"
    " FROM events WHERE position > ? GROUP BY event_type, schema_version"
)
SNAPSHOT_ROWS: Final = (  # of versions at or below a position (a copy's source may grow meanwhile)
    "SELECT aggregate_id, version, aggregate_type, fingerprint, state, created_at FROM minies_snapshots s"
    " WHERE EXISTS (SELECT 1 FROM events e WHERE e.aggregate_id = s.aggregate_id AND e.version = s.version"
    " AND e.position <= ?)"
)
COPY_SNAPSHOT: Final = (
    "INSERT OR IGNORE INTO minies_snapshots (aggregate_id, version, aggregate_type, fingerprint, state, created_at)"
    " VALUES (?, ?, ?, ?, ?, ?)"
)

# Per event: its position, stored hash, whether every column has its proper type, and the
# canonical encoding (see _audit) built by SQLite in C with one printf, ready to be hashed.
_CHAINED: Final = (
    "position",
    "event_id",
    "aggregate_id",
    "aggregate_type",
    "event_type",
    "version",
    "data",
    "metadata",
    "created_at",
)
CHAIN: Final = (
    "SELECT position, hash,"
    f" CAST(printf('{'%d:%s,' * len(_CHAINED)}', {', '.join(f'octet_length({c}), {c}' for c in _CHAINED)})"
    " || CASE schema_version WHEN 1 THEN '' ELSE printf('%d:%s,', octet_length(schema_version), schema_version) END"
    " AS BLOB)"
    " FROM events WHERE position > ? ORDER BY position LIMIT ?"
)
# SQLite columns take any type, and a retyped value (TEXT -> BLOB, same bytes) would hash the
# same: the first such event. One scan in C, on verify's background connection.
RETYPED: Final = (
    "SELECT min(position) FROM events WHERE NOT (typeof(event_id) = 'text' AND typeof(aggregate_id) = 'text'"
    " AND typeof(aggregate_type) = 'text' AND typeof(event_type) = 'text' AND typeof(version) = 'integer'"
    " AND typeof(data) = 'text' AND typeof(metadata) = 'text' AND typeof(created_at) = 'text'"
    " AND typeof(hash) = 'blob' AND typeof(schema_version) = 'integer')"
)
EVENT_TYPE_AT: Final = "SELECT event_type FROM events WHERE position = ?"
# How many events an append found stored after the head it read (it wrote them all).
STORED_AFTER: Final = "SELECT count(*) FROM events WHERE position > ?"
HEAD_POSITION: Final = "SELECT coalesce(max(position), 0) FROM events"
VERSION_GAPS: Final = (
    "SELECT aggregate_id, count(*), min(version), max(version) FROM events GROUP BY aggregate_id"
    " HAVING min(version) != 1 OR max(version) != count(*) LIMIT 1"
)
# (tbl_name keeps the table's name as the trigger's SQL spelled it: ON EVENTS, ON "Events")
TRIGGER_SQL: Final = "SELECT name, sql FROM sqlite_master WHERE type = 'trigger' AND lower(tbl_name) = 'events'"
# A temporary table or view of one of minies' names on a connection takes that connection's
# unqualified reads and writes (the temp schema is searched first).
SHADOWS: Final = (
    "SELECT type, name FROM sqlite_temp_master WHERE type IN ('table', 'view')"
    " AND (lower(name) = 'events' OR lower(name) LIKE 'minies\\_%' ESCAPE '\\') ORDER BY name"
)
# Every other trigger minies' guarantees depend on: on its own tables (a trigger on minies_keys
# could keep keys forget destroys), and temporary ones on the log or minies' tables, which live
# on one connection only (so verify looks on the store's own).
OTHER_TRIGGERS: Final = (
    "SELECT 'main', name, tbl_name FROM sqlite_master WHERE type = 'trigger'"
    " AND lower(tbl_name) LIKE 'minies\\_%' ESCAPE '\\'"
    " UNION ALL SELECT 'temp', name, tbl_name FROM sqlite_temp_master WHERE type = 'trigger'"
    " AND (lower(tbl_name) = 'events' OR lower(tbl_name) LIKE 'minies\\_%' ESCAPE '\\') ORDER BY 1, 2"
)
COUNTS: Final = "SELECT count(*), count(DISTINCT aggregate_id), max(position) FROM events"
TYPE_COUNTS: Final = (
    "SELECT event_type, schema_version, count(*) FROM events GROUP BY event_type, schema_version"
    " ORDER BY event_type, schema_version"
)

# ---------------------------------------------------------------------------- event types
# (event_type, schema_version) of every version stored, by schema version of the file (a
# read-only store cannot migrate a version 2 file, and finds them in the log itself).
STORED_TYPES: Final = {
    2: "SELECT DISTINCT event_type, schema_version FROM events",
    3: "SELECT event_type, schema_version FROM minies_event_types",
    4: "SELECT event_type, schema_version FROM minies_event_types",
}
ADD_TYPE: Final = (
    "INSERT OR IGNORE INTO minies_event_types (event_type, schema_version, python_class, json_schema, first_seen)"
    " VALUES (?, ?, ?, ?, ?)"
)
EVENT_TYPE_SCHEMAS: Final = (
    "SELECT event_type, schema_version, python_class, json_schema, first_seen FROM minies_event_types"
    " ORDER BY event_type, schema_version"
)

# ---------------------------------------------------------------------------- snapshots
SAVE_SNAPSHOT: Final = (
    "INSERT OR REPLACE INTO minies_snapshots"
    " (aggregate_id, version, aggregate_type, fingerprint, state, created_at)"
    " VALUES (?, ?, ?, ?, ?, ?)"
)
LATEST_SNAPSHOT: Final = (
    "SELECT version, fingerprint, state FROM minies_snapshots"
    " WHERE aggregate_id = ? AND version <= ? ORDER BY version DESC LIMIT ?"
)
PRUNE_SNAPSHOTS: Final = (
    "DELETE FROM minies_snapshots WHERE aggregate_id = ? AND version < ("
    " SELECT min(version) FROM (SELECT version FROM minies_snapshots WHERE aggregate_id = ?"
    " ORDER BY version DESC LIMIT ?))"
)
SNAPSHOT_STATS: Final = (
    "SELECT aggregate_type, count(*), coalesce(sum(length(state)), 0) FROM minies_snapshots"
    " GROUP BY aggregate_type ORDER BY aggregate_type"
)
DROP_SNAPSHOTS: Final = "DELETE FROM minies_snapshots WHERE aggregate_type = ?"
ALL_SNAPSHOTS: Final = "SELECT aggregate_id, version, aggregate_type, fingerprint FROM minies_snapshots ORDER BY 1, 2"

# ---------------------------------------------------------------------------- personal data
ANY_KEY: Final = "SELECT EXISTS (SELECT 1 FROM minies_keys)"
SOME_KEY: Final = "SELECT key_id, key FROM minies_keys WHERE key IS NOT NULL LIMIT 1"
KEY_OF_SUBJECT: Final = "SELECT key_id, key FROM minies_keys WHERE subject = ? AND key IS NOT NULL"
# (with the keys another store made for the subject, which a sync brought: see Keyring.fitting)
KEYS_OF_SUBJECT: Final = (
    "SELECT key_id FROM minies_keys WHERE (subject = ? OR substr(subject, 1, ?) = ?) AND key IS NOT NULL"
)
KEY_BY_ID: Final = "SELECT key FROM minies_keys WHERE key_id = ?"
ADD_KEY: Final = "INSERT INTO minies_keys (key_id, subject, key, created_at) VALUES (?, ?, ?, ?)"
FORGET_KEY: Final = "UPDATE minies_keys SET key = NULL, forgotten_at = ? WHERE key_id = ?"
FORGOTTEN_SUBJECTS: Final = "SELECT count(DISTINCT subject) FROM minies_keys WHERE key IS NULL"
SEALED_AGGREGATES: Final = "SELECT DISTINCT aggregate_id FROM events WHERE instr(data, ?) > 0"
ERASED_AFTER: Final = "SELECT data FROM events WHERE position > ? AND event_type = 'minies.SubjectForgotten'"
ERASED_BETWEEN: Final = (
    "SELECT data FROM events WHERE position > ? AND position <= ? AND event_type = 'minies.SubjectForgotten'"
)
SEALS_BEFORE: Final = "SELECT EXISTS (SELECT 1 FROM events WHERE position < ? AND instr(data, ?) > 0)"
DROP_SNAPSHOTS_OF: Final = "DELETE FROM minies_snapshots WHERE aggregate_id = ?"
KEY_ROWS: Final = "SELECT key_id, subject, key, created_at, forgotten_at FROM minies_keys"
COPY_KEY: Final = (
    "INSERT OR IGNORE INTO minies_keys (key_id, subject, key, created_at, forgotten_at) VALUES (?, ?, ?, ?, ?)"
)

# ---------------------------------------------------------------------------- projections
PROJECTION_STATE: Final = "SELECT version, position, objects FROM minies_projections WHERE name = ?"
PROJECTION_POSITIONS: Final = "SELECT name, position FROM minies_projections"
PROJECTIONS: Final = "SELECT name, version, position, updated_at FROM minies_projections ORDER BY name"
SAVE_PROJECTION: Final = (
    "INSERT OR REPLACE INTO minies_projections (name, version, position, objects, updated_at) VALUES (?, ?, ?, ?, ?)"
)
ADVANCE_PROJECTION: Final = "UPDATE minies_projections SET position = ?, updated_at = ? WHERE name = ?"
SCHEMA_OBJECTS: Final = (
    "SELECT type, name FROM sqlite_master WHERE type IN ('table', 'index', 'view', 'trigger')"
    " AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\'"  # (SQLite's own objects: _ alone matches any character)
)

# ---------------------------------------------------------------------------- subscriptions
SUBSCRIPTION_POSITION: Final = "SELECT position FROM minies_subscriptions WHERE name = ?"
# A processor's page claims its consumer before it reads the checkpoint. Here the write
# transaction (BEGIN IMMEDIATE) already holds the file's one write lock: nothing more to take.
CLAIM_CONSUMER: Final = "SELECT ? IS NOT NULL"
SAVE_SUBSCRIPTION: Final = "INSERT OR REPLACE INTO minies_subscriptions (name, position, updated_at) VALUES (?, ?, ?)"
PARK: Final = (
    "INSERT OR REPLACE INTO minies_dead_letters (subscription, position, attempts, error, parked_at)"
    " VALUES (?, ?, ?, ?, ?)"
)
DEAD_LETTERS: Final = (
    "SELECT position, attempts, error, parked_at FROM minies_dead_letters WHERE subscription = ? ORDER BY position"
)
UNPARK: Final = "DELETE FROM minies_dead_letters WHERE subscription = ? AND position = ?"
DEAD_LETTER_ATTEMPTS: Final = "SELECT attempts FROM minies_dead_letters WHERE subscription = ? AND position = ?"
AGGREGATES: Final = (
    "SELECT aggregate_id, aggregate_type, max(version) FROM events GROUP BY aggregate_id ORDER BY aggregate_id"
)
AGGREGATES_OF_TYPE: Final = (
    "SELECT aggregate_id, aggregate_type, max(version) FROM events WHERE aggregate_type = ?"
    " GROUP BY aggregate_id ORDER BY aggregate_id"
)
SUBSCRIPTIONS: Final = "SELECT name, position, updated_at FROM minies_subscriptions ORDER BY name"

# ---------------------------------------------------------------------------- eventsourcing
# What minies.eventsourcing (the `eventsourcing` library's persistence module) reads and keeps
# beside the log: its aggregates' events are minies events; records that are not a stream of
# consecutive versions (snapshots) and its tracking rows live in tables of their own.
ES_STREAM_TYPE: Final = "SELECT aggregate_type FROM events WHERE aggregate_id = ? AND version = 1"
ES_STREAM: Final = (
    "SELECT version, event_type, data, aggregate_type FROM events"
    " WHERE aggregate_id = ? AND version > ? AND version <= ? ORDER BY version {order} LIMIT ?"
)
ES_NOTIFICATIONS: Final = (
    "SELECT position, aggregate_id, aggregate_type, version, event_type, data FROM events"
    " WHERE position >= ? AND position <= ? ORDER BY position LIMIT ?"
)
ES_NOTIFICATIONS_OF_TOPICS: Final = (
    "SELECT position, aggregate_id, aggregate_type, version, event_type, data FROM events"
    " WHERE position >= ? AND position <= ? AND event_type IN (SELECT value FROM json_each(?))"
    " ORDER BY position LIMIT ?"
)
ES_CREATE_RECORDS: Final = (
    """
    CREATE TABLE IF NOT EXISTS {table} (
        originator_id      TEXT    NOT NULL,
        id_type            TEXT    NOT NULL,
        originator_version INTEGER NOT NULL,
        topic              TEXT    NOT NULL,
        state              BLOB    NOT NULL,
        PRIMARY KEY (originator_id, originator_version)
    ) WITHOUT ROWID""",
)
ES_INSERT_RECORD: Final = (
    "INSERT INTO {table} (originator_id, id_type, originator_version, topic, state) VALUES (?, ?, ?, ?, ?)"
)
ES_RECORDS: Final = (
    "SELECT originator_version, topic, state, id_type FROM {table}"
    " WHERE originator_id = ? AND originator_version > ? AND originator_version <= ?"
    " ORDER BY originator_version {order} LIMIT ?"
)
ES_CREATE_TRACKING: Final = (
    """
    CREATE TABLE IF NOT EXISTS eventsourcing_tracking (
        application_name TEXT    PRIMARY KEY,
        notification_id  INTEGER NOT NULL
    )""",
)
# Moves the application's tracking id forward, never back: 0 rows changed means refused.
ES_TRACK: Final = (
    "INSERT INTO eventsourcing_tracking (application_name, notification_id) VALUES (?, ?)"
    " ON CONFLICT (application_name) DO UPDATE SET notification_id = excluded.notification_id"
    " WHERE excluded.notification_id > eventsourcing_tracking.notification_id"
)
ES_TRACKED: Final = "SELECT notification_id FROM eventsourcing_tracking WHERE application_name = ?"

# ---------------------------------------------------------------------------- transactions
# The comments make these texts minies' own: apsw's statement cache is keyed by text, so a
# projection's plain "COMMIT" is prepared afresh, and refused by the authorizer.
BEGIN: Final = "BEGIN IMMEDIATE /* minies */"
COMMIT: Final = "COMMIT /* minies */"
ROLLBACK: Final = "ROLLBACK /* minies */"
SAVEPOINT: Final = "SAVEPOINT minies /* minies */"
RELEASE: Final = "RELEASE minies /* minies */"
ROLLBACK_TO: Final = "ROLLBACK TO minies /* minies */; RELEASE minies /* minies */"


_IDENTIFY: Final = (
    "SELECT (SELECT application_id FROM pragma_application_id), (SELECT user_version FROM pragma_user_version),"
    " (SELECT count(*) FROM sqlite_master)"
)


def identify(conn: apsw.Connection, where: str) -> int:
    """Check the file is a minies database this code can use; return its schema version.

    Returns 0 for a brand-new (empty) database. Only reads.

    Raises:
        SchemaError: a SQLite file of another application, or a newer minies schema.
    """
    # One statement, so one read of the file: another process may be creating it meanwhile, and
    # separate reads could see its header from before the creation and its tables from after.
    row: Any = conn.execute(_IDENTIFY).fetchall()[0]
    app_id, version, objects = row
    if app_id == 0:  # brand new, or another application's file (which may use user_version)
        if version == 0 and not objects:
            return 0
        raise SchemaError(
            f"{where} is a SQLite database but not a minies one (it holds data and no minies "
            "application id); open another path"
        )
    if app_id != APPLICATION_ID:
        raise SchemaError(
            f"{where} is a SQLite database of another application (application_id {app_id:#x}), not a minies one"
        )
    if version > SCHEMA_VERSION:
        raise SchemaError(
            f"{where} was written by a newer minies (schema version {version}, this one knows "
            f"up to {SCHEMA_VERSION}); upgrade minies to open it"
        )
    return int(version)


def create_or_migrate(conn: apsw.Connection, version: int) -> None:
    """Bring a database at schema ``version`` (0 = empty) to ``SCHEMA_VERSION``.

    Runs inside the caller's write transaction.
    """
    if version == 0:
        for statement in _CREATE_V1:
            conn.execute(statement)
        version = 1
    for target in range(version + 1, SCHEMA_VERSION + 1):
        for statement in MIGRATIONS[target]:
            conn.execute(statement)
    conn.pragma("application_id", APPLICATION_ID)
    conn.pragma("user_version", SCHEMA_VERSION)
