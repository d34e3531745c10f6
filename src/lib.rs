//! pg_bailian: Alibaba Cloud Model Studio (Bailian) models as SQL functions.
//!
//! This crate is the PostgreSQL glue: argument decoding, the catalog tables, errors with
//! their SQLSTATEs, and waiting on the network without blocking cancels. Everything else
//! (registry, validation, HTTP, retries) lives in `bailian-core` and is tested without a
//! database.

use pgrx::prelude::*;

mod answers;
mod backend;
mod catalog;
mod citus;
mod entry;
mod executor;
mod functions;
mod guc;
mod log_filter;
mod shared;
mod spi;
mod srf;
mod sync;

pgrx::pg_module_magic!();

extension_sql_file!("../sql/catalog.sql", name = "catalog", bootstrap);
extension_sql_file!("../sql/functions.sql", name = "functions", requires = ["catalog"]);
extension_sql_file!("../sql/procedures.sql", name = "procedures", requires = ["functions"]);
extension_sql_file!("../sql/operating.sql", name = "operating", requires = ["procedures"]);
extension_sql_file!("../sql/seed_prices.sql", name = "seed_prices", requires = ["operating"]);
extension_sql_file!("../sql/tokens.sql", name = "tokens", requires = ["functions"]);
extension_sql_file!("../sql/sync.sql", name = "sync", requires = ["procedures"]);
extension_sql_file!("../sql/cache.sql", name = "cache", requires = ["catalog"]);
extension_sql_file!("../sql/batches.sql", name = "batches", requires = ["catalog"]);
extension_sql_file!("../sql/citus.sql", name = "citus", requires = ["procedures", "operating"]);
extension_sql_file!("../sql/finalize.sql", name = "finalize", finalize);

#[pg_guard]
pub extern "C-unwind" fn _PG_init() {
    // Only settings and hooks here: the runtime and HTTP client are created on first use
    // inside a backend, never in the postmaster when the library is preloaded.
    guc::register();
    shared::install();
    log_filter::install();
    executor::install();
    sync::register_launcher();
}

#[cfg(any(test, feature = "pg_test"))]
#[pg_schema]
mod tests {
    include!("../pgrx-tests/catalog.rs");
}

/// Required by `cargo pgrx test`.
#[cfg(test)]
pub mod pg_test {
    pub fn setup(_options: Vec<&str>) {}

    pub fn postgresql_conf_options() -> Vec<&'static str> {
        vec![]
    }
}
