-- Issue 20 (DESIGN §3f): security events leave the service as they commit.

-- Commit order. An event's transaction id orders it: a reader takes only the events of
-- transactions older than every transaction still running (pg_snapshot_xmin), ordered by
-- (xid, id); no such event can appear later, so a cursor (xid, id) misses nothing and
-- repeats nothing. A volatile default rewrites the table: the events kept so far share
-- this migration's transaction id and keep their id order.
ALTER TABLE audit_events
    ADD COLUMN xid xid8 NOT NULL DEFAULT pg_current_xact_id(),
    ADD COLUMN client_ip text,
    ADD COLUMN client_user_agent text;
CREATE INDEX audit_events_commit_order ON audit_events (environment_id, xid, id);

-- Webhooks: where events go, and how far each has got. The audit log is the outbox: an
-- event is written in the same statement or transaction as the change it records, and
-- each webhook delivers the events after its cursor, one replica at a time (claimed
-- with FOR UPDATE SKIP LOCKED and a lease).
CREATE TABLE webhooks (
    id               uuid        PRIMARY KEY,
    environment_id   text        NOT NULL,
    url              text        NOT NULL,
    event_types      text[]      NOT NULL,
    format           text        NOT NULL,
    secret_sealed    bytea       NOT NULL,
    created_at       timestamptz NOT NULL,
    cursor_xid       xid8        NOT NULL,
    cursor_id        bigint      NOT NULL,
    attempts         integer     NOT NULL DEFAULT 0,
    next_attempt_at  timestamptz NOT NULL,
    claimed_until    timestamptz,
    last_attempt_at  timestamptz,
    last_status_code integer,
    last_error       text,
    last_success_at  timestamptz,
    dropped_events   bigint      NOT NULL DEFAULT 0
);
CREATE INDEX webhooks_env ON webhooks (environment_id, created_at);
CREATE INDEX webhooks_due ON webhooks (next_attempt_at);
