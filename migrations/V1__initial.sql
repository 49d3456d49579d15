-- The bot's whole state: every result can be reproduced and refined after a restart.

-- A conversation is a tree of turns; replying to an older result branches from that turn.
CREATE TABLE conversations (
    id          INTEGER PRIMARY KEY,
    guild_id    INTEGER,
    channel_id  INTEGER NOT NULL,
    user_id     INTEGER NOT NULL,
    created_at  REAL    NOT NULL
);

-- The conversation `/omost compose` continues, per channel and user; `/omost new` replaces it.
CREATE TABLE current_conversations (
    channel_id       INTEGER NOT NULL,
    user_id          INTEGER NOT NULL,
    conversation_id  INTEGER NOT NULL REFERENCES conversations(id),
    PRIMARY KEY (channel_id, user_id)
);

CREATE TABLE layouts (
    id          INTEGER PRIMARY KEY,
    data        TEXT NOT NULL,          -- Layout.dumps()
    created_at  REAL NOT NULL
);

-- One user message and (once the LLM answered) the assistant's reply and its layout.
CREATE TABLE turns (
    id               INTEGER PRIMARY KEY,
    conversation_id  INTEGER NOT NULL REFERENCES conversations(id),
    parent_id        INTEGER REFERENCES turns(id),
    user_id          INTEGER NOT NULL,
    prompt           TEXT    NOT NULL,
    reply            TEXT,               -- NULL until the LLM answered, or for a layout file
    layout_id        INTEGER REFERENCES layouts(id),
    created_at       REAL    NOT NULL
);
CREATE INDEX turns_conversation ON turns(conversation_id, id);

CREATE TABLE jobs (
    id                 INTEGER PRIMARY KEY,
    kind               TEXT    NOT NULL CHECK (kind IN ('compose', 'render')),
    state              TEXT    NOT NULL DEFAULT 'queued'
                       CHECK (state IN ('queued', 'running', 'done', 'failed', 'cancelled', 'interrupted')),
    user_id            INTEGER NOT NULL,
    guild_id           INTEGER,
    channel_id         INTEGER NOT NULL,
    turn_id            INTEGER NOT NULL REFERENCES turns(id),
    llm                TEXT,               -- requested LLM id, NULL = the configured default
    llm_params         TEXT    NOT NULL,   -- LLMParams.to_dict() as JSON
    render_params      TEXT    NOT NULL,   -- RenderParams.to_dict() as JSON
    layout_id          INTEGER REFERENCES layouts(id),   -- input of a render job, output of a compose job
    status_message_id  INTEGER,            -- the one message kept up to date, then turned into the result
    result_message_id  INTEGER,
    llm_model          TEXT,               -- what actually ran
    render_model       TEXT,
    error              TEXT,
    created_at         REAL    NOT NULL,
    started_at         REAL,
    finished_at        REAL
);
CREATE INDEX jobs_state ON jobs(state, id);
CREATE INDEX jobs_user ON jobs(user_id, created_at);
CREATE UNIQUE INDEX jobs_result_message ON jobs(result_message_id);

-- Per-guild and per-channel defaults and limits (values as JSON).
CREATE TABLE settings (
    scope     TEXT    NOT NULL CHECK (scope IN ('guild', 'channel')),
    scope_id  INTEGER NOT NULL,
    key       TEXT    NOT NULL,
    value     TEXT    NOT NULL,
    PRIMARY KEY (scope, scope_id, key)
);

-- Small bot-wide facts, e.g. the hash of the last synced command tree.
CREATE TABLE meta (
    key    TEXT PRIMARY KEY,
    value  TEXT NOT NULL
);
