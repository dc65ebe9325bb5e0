-- Example schema for the quickstart cluster. Every replicated table needs a
-- NOT NULL primary key; other NOT NULL columns need a DEFAULT.
CREATE TABLE todos (
    id TEXT NOT NULL PRIMARY KEY,
    title TEXT NOT NULL DEFAULT '',
    done INTEGER NOT NULL DEFAULT 0,
    updated_at INTEGER
);

CREATE TABLE probes (
    id TEXT NOT NULL PRIMARY KEY,
    origin TEXT,
    written_at_ms INTEGER
);
