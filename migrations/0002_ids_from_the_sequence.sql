-- IDs come from the `ids` sequence alone, drawn in the write's own
-- transaction: the `id_clock` row every allocation updated (and committed
-- on its own) serialized all writes of all replicas. Creation times are the
-- writing replica's clock.
DROP TABLE id_clock;

-- Past every ID in use, whatever set them (a restore by hand, a copy of rows).
SELECT setval('ids', GREATEST(
    (SELECT last_value FROM ids),
    (SELECT COALESCE(max(id), 0) FROM artifacts),
    (SELECT COALESCE(max(id), 0) FROM executions),
    (SELECT COALESCE(max(id), 0) FROM contexts),
    1));
