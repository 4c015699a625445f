-- Issue 20 (DESIGN §3f): WatchAuditEvents wakes as events commit.

-- Once per INSERT statement (not per row): one notification per environment written,
-- delivered to every listener when the transaction commits, dropped if it rolls back;
-- PostgreSQL folds repeats within a transaction into one. The payload only wakes the
-- streams of that environment; they read what committed with store.audit_stream.after,
-- so a lost notification only delays an event (the streams also wake on a timer).
CREATE FUNCTION audit_events_notify() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    env text;
BEGIN
    FOR env IN SELECT DISTINCT environment_id FROM inserted LOOP
        PERFORM pg_notify('mfa_audit_events', env);
    END LOOP;
    RETURN NULL;
END
$$;

CREATE TRIGGER audit_events_notify
    AFTER INSERT ON audit_events
    REFERENCING NEW TABLE AS inserted
    FOR EACH STATEMENT EXECUTE FUNCTION audit_events_notify();
