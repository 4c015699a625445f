-- Per-environment settings (the dashboard) and the security audit log.

CREATE TABLE environment_settings (
    environment_id text PRIMARY KEY,
    document       jsonb       NOT NULL,
    revision       bigint      NOT NULL,
    updated_at     timestamptz NOT NULL
);

CREATE TABLE audit_events (
    id             bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    event_id       uuid        NOT NULL UNIQUE,
    environment_id text        NOT NULL,
    user_id        text        NOT NULL DEFAULT '',
    type           text        NOT NULL,
    occurred_at    timestamptz NOT NULL,
    method         text,
    device_id      text        NOT NULL DEFAULT '',
    caller         text        NOT NULL,
    request_id     text        NOT NULL,
    details        jsonb       NOT NULL DEFAULT '{}'::jsonb
);

-- ListAuditEvents pages newest first within an environment, optionally per user.
CREATE INDEX audit_events_env_id ON audit_events (environment_id, id DESC);
CREATE INDEX audit_events_env_user_id ON audit_events (environment_id, user_id, id DESC);
