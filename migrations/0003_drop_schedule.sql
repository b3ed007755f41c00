-- The drop lifecycle scheduler claims each start and end exactly once, whatever the
-- number of origin instances: the first to set the column emits the event.
ALTER TABLE drops ADD COLUMN started_announced_at timestamptz;
ALTER TABLE drops ADD COLUMN ended_announced_at timestamptz;
CREATE INDEX drops_unannounced_start ON drops (starts_at) WHERE started_announced_at IS NULL;
CREATE INDEX drops_unannounced_end ON drops (ends_at) WHERE ended_announced_at IS NULL;
