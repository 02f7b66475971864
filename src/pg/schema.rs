//! Migrations: the `.sql` files under `migrations/`, applied in order at start,
//! each once, recorded in `schema_migrations`. Replicas starting together
//! serialize on an advisory lock.

use super::pool::Conn;
use super::pool::Sql;

use crate::error::{Error, Result};

/// (version, SQL), in order. Append; never edit an applied one.
pub const MIGRATIONS: &[(i32, &str)] = &[
    (1, include_str!("../../migrations/0001_init.sql")),
    (
        2,
        include_str!("../../migrations/0002_ids_from_the_sequence.sql"),
    ),
    (3, include_str!("../../migrations/0003_replicas.sql")),
];

/// The advisory lock key of migrations ("stepcach" in ASCII).
const MIGRATION_LOCK: i64 = 0x7374_6570_6361_6368;

pub fn migrate(c: &mut Conn<'_>) -> Result<()> {
    c.execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK])?;
    let r = apply(c);
    let unlocked = c.execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK]);
    r?;
    unlocked?;
    Ok(())
}

fn apply(c: &mut Conn<'_>) -> Result<()> {
    c.batch_execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations (
             version integer PRIMARY KEY,
             applied_at timestamptz NOT NULL DEFAULT now()
         )",
    )?;
    let applied: Option<i32> = c
        .query_one("SELECT max(version) FROM schema_migrations", &[])?
        .get(0);
    let applied = applied.unwrap_or(0);
    let newest = MIGRATIONS.last().map(|(v, _)| *v).unwrap_or(0);
    if applied > newest {
        return Err(Error::Unavailable(format!(
            "the database has schema version {applied}, newer than this stepcache knows \
             ({newest}): run a newer stepcache"
        )));
    }
    for (version, sql) in MIGRATIONS.iter().filter(|(v, _)| *v > applied) {
        let mut tx = c.transaction()?;
        tx.batch_execute(sql)?;
        tx.execute(
            "INSERT INTO schema_migrations (version) VALUES ($1)",
            &[version],
        )?;
        tx.commit()?;
        tracing::info!(version, "applied a PostgreSQL migration");
    }
    Ok(())
}
