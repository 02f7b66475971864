//! `Backend` on PostgreSQL: the store's own methods (`implement_backend`;
//! `lookup`, `write`, `query`, `maintenance`) and the close.

use std::sync::Arc;

use super::PgStore;
use crate::backend::implement_backend;

implement_backend!(PgStore, {
    fn kind(&self) -> &'static str {
        "postgres"
    }
    fn now_ms(&self) -> i64 {
        self.clock.now_ms()
    }
    fn execution(&self, id: i64, ns: Option<&str>) -> Result<Execution> {
        PgStore::execution(self, id, ns)
    }
    fn artifact(&self, id: i64, ns: Option<&str>) -> Result<Artifact> {
        PgStore::artifact(self, id, ns)
    }
    fn close(self: Arc<Self>) -> Result<()> {
        self.stop_listener();
        self.pool.clear();
        Ok(())
    }
});
