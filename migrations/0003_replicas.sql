-- The replicas that serve hits from memory, each with the lease that lets it
-- (ms on PostgreSQL's clock) and its LISTEN connection's backend. A write
-- that changes hits waits for every replica listed here to acknowledge it.
CREATE TABLE replicas (
    id text PRIMARY KEY,
    lease_until_ms bigint NOT NULL,
    backend_pid integer
);
