-- Region editors (issue 12): one row per editor opened on a result. Every control of the editor message
-- carries the row's id, and everything else lives here, so an editor keeps working across restarts.
CREATE TABLE editors (
    id          INTEGER PRIMARY KEY,
    job_id      INTEGER NOT NULL REFERENCES jobs(id),   -- the result being edited
    user_id     INTEGER NOT NULL,                       -- who opened it (the only one its controls answer)
    guild_id    INTEGER,
    channel_id  INTEGER NOT NULL,
    canvas      TEXT    NOT NULL,                       -- CanvasSpec.to_json() as JSON
    selected    INTEGER NOT NULL DEFAULT 0,             -- the selected region number (0: global)
    new_seed    INTEGER NOT NULL DEFAULT 0,             -- 1: Render draws a new seed
    created_at  REAL    NOT NULL,
    updated_at  REAL    NOT NULL
);
CREATE INDEX editors_job ON editors(job_id);
