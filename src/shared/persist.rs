//! Saving the usage counters and budget spending at a clean shutdown, and reading them back
//! at the next start, as pg_stat_statements does with its statistics: a file in `pg_stat/`,
//! written to a temporary name and renamed, read once and removed (so a crash after the next
//! start does not bring back counts from before it).

use bailian_core::shared::{budgets, usage, Region};
use std::io::Write;
use std::path::PathBuf;

const FILE: &str = "pg_stat/pg_bailian.stat";

fn path() -> PathBuf {
    // The postmaster's working directory is the data directory.
    PathBuf::from(FILE)
}

/// [u32 length of the usage part][usage part][budget part].
pub fn save(region: &Region) {
    let usage = usage::encode(&region.usage.rows());
    let budgets = budgets::encode(&region.budgets.rows());
    let tmp = path().with_extension("tmp");
    let written = (|| -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&(usage.len() as u32).to_le_bytes())?;
        f.write_all(&usage)?;
        f.write_all(&budgets)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path())
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        pgrx::log!("pg_bailian: could not save usage counters to \"{FILE}\": {e}");
    }
}

pub fn load(region: &Region) {
    let data = match std::fs::read(path()) {
        Ok(d) => d,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
        Err(e) => {
            pgrx::log!("pg_bailian: could not read saved usage counters \"{FILE}\": {e}");
            return;
        }
    };
    let _ = std::fs::remove_file(path());
    let parts = data.get(..4).and_then(|n| {
        let n = u32::from_le_bytes(n.try_into().ok()?) as usize;
        let usage = usage::decode(data.get(4..4 + n)?)?;
        let budgets = budgets::decode(data.get(4 + n..)?)?;
        Some((usage, budgets))
    });
    match parts {
        Some((usage, budgets)) => {
            region.usage.restore(&usage);
            region.budgets.restore(&budgets);
        }
        None => pgrx::log!("pg_bailian: ignoring \"{FILE}\": not a file this version wrote"),
    }
}
