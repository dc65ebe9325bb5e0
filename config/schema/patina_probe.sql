-- Probe rows of `patina bench live` (written, watched, then deleted by it).
CREATE TABLE patina_probe (id INTEGER NOT NULL PRIMARY KEY, node TEXT NOT NULL DEFAULT '');
