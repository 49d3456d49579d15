-- What a restart needs to resume a job and to tell a delivered result from an undelivered one.

-- The requester's display name, for the result footer after a restart ("by alice", not "by user <id>").
ALTER TABLE jobs ADD COLUMN requester TEXT NOT NULL DEFAULT '';

-- Which run of the job this is: a job the bot was running when it died runs again as attempt 2.
ALTER TABLE jobs ADD COLUMN attempt INTEGER NOT NULL DEFAULT 1;

-- Set just before the result is sent to Discord: a running job with this set may already show its result,
-- so recovery looks at Discord before it touches the job's messages.
ALTER TABLE jobs ADD COLUMN delivery_started_at REAL;
