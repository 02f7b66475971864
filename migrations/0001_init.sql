-- stepcache on PostgreSQL: the relational layout of the metadata store and
-- the cache index. Records are kept whole as protobuf bytes (`record`) beside
-- the columns that queries filter, order and join on.

-- IDs of artifacts, executions and contexts (one sequence, as in sled).
CREATE SEQUENCE ids START 1;

-- The creation time of the last allocated ID: allocation takes it FOR UPDATE
-- with nextval in one statement, so that ID order is creation order across
-- replicas (a clock that steps back stamps the last time again).
CREATE TABLE id_clock (
    one boolean PRIMARY KEY DEFAULT true CHECK (one),
    last_ms bigint NOT NULL
);
INSERT INTO id_clock (last_ms) VALUES (0);

CREATE TABLE artifacts (
    id bigint PRIMARY KEY,
    namespace text NOT NULL,
    type text NOT NULL,
    state integer NOT NULL,
    -- NULL when empty; (namespace, external_id) is unique.
    external_id text,
    -- blake3 of the request's content, to tell a retry from a reuse.
    digest bytea,
    created_ms bigint NOT NULL,
    record bytea NOT NULL
);
CREATE UNIQUE INDEX artifacts_external_id ON artifacts (namespace, external_id)
    WHERE external_id IS NOT NULL;
CREATE INDEX artifacts_by_ns ON artifacts (namespace, id DESC);
CREATE INDEX artifacts_by_type ON artifacts (namespace, type, id DESC);
CREATE INDEX artifacts_by_state ON artifacts (namespace, state, id DESC);

CREATE TABLE executions (
    id bigint PRIMARY KEY,
    namespace text NOT NULL,
    component text,
    state integer NOT NULL,
    cache_key text NOT NULL,
    external_id text,
    digest bytea,
    -- The execution's cache_ttl in ms (NULL: none), for garbage collection.
    cache_ttl_ms bigint,
    created_ms bigint NOT NULL,
    record bytea NOT NULL
);
CREATE UNIQUE INDEX executions_external_id ON executions (namespace, external_id)
    WHERE external_id IS NOT NULL;
CREATE INDEX executions_by_ns ON executions (namespace, id DESC);
CREATE INDEX executions_by_component ON executions (namespace, component, id DESC);
CREATE INDEX executions_by_state ON executions (namespace, state, id DESC);
CREATE INDEX executions_by_key ON executions (namespace, cache_key, id DESC);

CREATE TABLE events (
    execution_id bigint NOT NULL REFERENCES executions (id),
    artifact_id bigint NOT NULL REFERENCES artifacts (id),
    type integer NOT NULL,
    name text NOT NULL,
    idx integer NOT NULL,
    record bytea NOT NULL,
    PRIMARY KEY (execution_id, type, name, idx, artifact_id)
);
CREATE INDEX events_by_artifact ON events (artifact_id, type, execution_id);

CREATE TABLE contexts (
    id bigint PRIMARY KEY,
    namespace text NOT NULL,
    type text NOT NULL,
    name text NOT NULL,
    record bytea NOT NULL,
    UNIQUE (namespace, type, name)
);
CREATE INDEX contexts_by_ns ON contexts (namespace, id DESC);
CREATE INDEX contexts_by_type ON contexts (namespace, type, id DESC);

-- Executions and artifacts of contexts.
CREATE TABLE associations (
    context_id bigint NOT NULL REFERENCES contexts (id),
    execution_id bigint NOT NULL REFERENCES executions (id),
    PRIMARY KEY (context_id, execution_id)
);
CREATE INDEX associations_by_execution ON associations (execution_id);
CREATE TABLE attributions (
    context_id bigint NOT NULL REFERENCES contexts (id),
    artifact_id bigint NOT NULL REFERENCES artifacts (id),
    PRIMARY KEY (context_id, artifact_id)
);
CREATE INDEX attributions_by_artifact ON attributions (artifact_id);

-- The cache index: published COMPLETE executions by (namespace, key), newest first.
CREATE TABLE cache_entries (
    namespace text NOT NULL,
    cache_key text NOT NULL,
    completed_ms bigint NOT NULL,
    execution_id bigint NOT NULL REFERENCES executions (id),
    invalidated boolean NOT NULL DEFAULT false
);
CREATE UNIQUE INDEX cache_entries_lookup
    ON cache_entries (namespace, cache_key, completed_ms DESC, execution_id DESC);
CREATE INDEX cache_entries_by_execution ON cache_entries (execution_id);

-- Reservations of keys: who runs the task now, until when (epoch ms).
CREATE TABLE reservations (
    namespace text NOT NULL,
    cache_key text NOT NULL,
    owner text NOT NULL,
    expire_ms bigint NOT NULL,
    PRIMARY KEY (namespace, cache_key)
);
