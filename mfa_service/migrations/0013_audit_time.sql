-- ListAuditEvents filters on a time range (start_time, end_time).

-- A BRIN index: the log is written in time order, so each range of table blocks covers
-- a short span of occurred_at and the index stays a few pages per million events. An
-- insert costs next to nothing (a B-tree here would add a leaf write to every audit row,
-- on the token paths too). A range query reads only the blocks that can hold its events,
-- then keeps the environment's (and user's, and types') and sorts them newest first.
CREATE INDEX audit_events_occurred_brin ON audit_events USING brin (occurred_at)
    WITH (autosummarize = on);
