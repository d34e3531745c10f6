//! Saving the usage counters and budget spending at a clean shutdown, and reading them back
//! at the next start, as pg_stat_statements does with its statistics: a file in `pg_stat/`,
//! written to a temporary name and renamed, read once and removed (so a crash after the next
//! start does not bring back counts from before it).
//!
//! Only after a clean shutdown. An immediate stop (`pg_ctl stop -m immediate`) also ends the
//! postmaster with exit code 0, but only after SIGQUIT ended every backend wherever it was:
//! possibly between two counters of one update, or holding a table's spin lock, which the
//! postmaster would then wait for forever. The next start runs crash recovery, and the
//! counters are treated as after any crash: lost.

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

/// Whether the server is going down cleanly: the shutdown checkpoint is written (the control
/// file says "shut down"), which a smart or fast stop does once every backend has exited by
/// itself, and an immediate stop never does (the file still says "in production").
pub fn shut_down_cleanly() -> bool {
    use pgrx::pg_sys::{ControlFileData, DBState};
    // The postmaster's working directory is the data directory.
    let Ok(bytes) = std::fs::read("global/pg_control") else {
        return false;
    };
    // The state field where this server's layout (the headers this library was built
    // with) puts it, in the machine's byte order, as PostgreSQL writes the file.
    let at = std::mem::offset_of!(ControlFileData, state);
    let Some(state) = bytes.get(at..at + 4).and_then(|b| b.try_into().ok()).map(u32::from_ne_bytes) else {
        return false;
    };
    matches!(state, DBState::DB_SHUTDOWNED | DBState::DB_SHUTDOWNED_IN_RECOVERY)
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
