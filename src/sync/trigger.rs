//! `bailian.sync_mark()`, the BEFORE ROW trigger of a column sync on INSERT and on UPDATE of
//! the columns its expression reads. Its arguments: the sync's name, the target column, the
//! sync's table (its oid), then the primary key's columns in order. It returns the row with the target NULL and queues the
//! row's key (the key columns' text, as their output functions write it).
//!
//! The key is queued as the catalog owner, so writers need no rights on the queue. Only
//! ai_sync_create makes these triggers: the function is not executable by PUBLIC, and its
//! schema is not usable by PUBLIC, so no other role can name it in a trigger of its own.

use crate::entry::sql_entry;
use bailian_core::AiError;
use pgrx::prelude::*;
use pgrx::spi::OwnedPreparedStatement;
use pgrx::{pg_sys, PgBuiltInOids, PgOid};
use std::cell::RefCell;
use std::ffi::CStr;

sql_entry!(pg_finfo_pg_bailian_sync_mark, pg_bailian_sync_mark, sync_mark);

thread_local! {
    /// The queue's INSERT, prepared once per backend, and the role it runs as (the catalog
    /// owner): a trigger fires per row, so neither is looked up again. The extension's schema
    /// cannot change (it is not relocatable); a plan whose table was recreated is replanned.
    static ENQUEUE: RefCell<Option<(OwnedPreparedStatement, pg_sys::Oid)>> = const { RefCell::new(None) };
}

fn enqueue(sync: &str, relid: pg_sys::Oid, key: Vec<Option<String>>) -> Result<(), AiError> {
    if ENQUEUE.with(|e| e.borrow().is_none()) {
        let sql = format!(
            "INSERT INTO {} AS q (sync_name, relid, key, queued_at, changed_at) \
             VALUES ($1, $2, $3, pg_catalog.clock_timestamp(), pg_catalog.clock_timestamp()) \
             ON CONFLICT (sync_name, relid, key) DO UPDATE SET changed_at = EXCLUDED.changed_at, run = NULL, not_before = NULL",
            super::queue_table()?
        );
        let owner = crate::catalog::catalog_owner();
        let plan = crate::catalog::as_role(owner, || {
            Spi::connect_mut(|c| {
                c.prepare_mut(
                    sql.as_str(),
                    &[
                        PgOid::BuiltIn(PgBuiltInOids::TEXTOID),
                        PgOid::BuiltIn(PgBuiltInOids::OIDOID),
                        PgOid::BuiltIn(PgBuiltInOids::TEXTARRAYOID),
                    ],
                )
                .map(|p| p.keep())
            })
        })
        .map_err(super::spi)?;
        ENQUEUE.with(|e| *e.borrow_mut() = Some((plan, owner)));
    }
    ENQUEUE.with(|e| {
        let cached = e.borrow();
        let Some((plan, owner)) = cached.as_ref() else { return Ok(()) };
        crate::catalog::as_role(*owner, || {
            Spi::connect_mut(|c| c.update(plan, None, &[sync.into(), relid.into(), key.into()]).map(drop))
        })
        .map_err(super::spi)
    })
}

fn not_a_trigger() -> AiError {
    AiError::invalid(
        "bailian.sync_mark() must be a BEFORE ROW trigger on INSERT or UPDATE, as ai_sync_create makes it",
    )
}

fn sync_mark(fcinfo: pg_sys::FunctionCallInfo) -> Result<Option<pg_sys::Datum>, AiError> {
    // SAFETY: fcinfo is live; its context, when a TriggerData, is the trigger manager's, valid
    // for this call, with the relation open and the tuples pinned; the strings are its own.
    unsafe {
        let ctx = (*fcinfo).context;
        if ctx.is_null() || (*ctx).type_ != pg_sys::NodeTag::T_TriggerData {
            return Err(not_a_trigger());
        }
        let td = ctx as *mut pg_sys::TriggerData;
        let event = (*td).tg_event;
        let row = event & pg_sys::TRIGGER_EVENT_ROW != 0;
        let before = event & pg_sys::TRIGGER_EVENT_TIMINGMASK == pg_sys::TRIGGER_EVENT_BEFORE;
        let op = event & pg_sys::TRIGGER_EVENT_OPMASK;
        if !row || !before || (op != pg_sys::TRIGGER_EVENT_INSERT && op != pg_sys::TRIGGER_EVENT_UPDATE) {
            return Err(not_a_trigger());
        }
        let trigger = (*td).tg_trigger;
        let nargs = (*trigger).tgnargs as usize;
        if nargs < 4 {
            return Err(not_a_trigger());
        }
        let args: Vec<String> = (0..nargs)
            .map(|i| CStr::from_ptr(*(*trigger).tgargs.add(i)).to_string_lossy().into_owned())
            .collect();
        let rel = (*td).tg_relation;
        let desc = (*rel).rd_att;
        let tuple = if op == pg_sys::TRIGGER_EVENT_UPDATE { (*td).tg_newtuple } else { (*td).tg_trigtuple };
        let attnum = |name: &str| -> Option<i32> {
            let c = std::ffi::CString::new(name).ok()?;
            let n = pg_sys::SPI_fnumber(desc, c.as_ptr());
            (n > 0).then_some(n)
        };
        // A column of the sync dropped or renamed since: writes to the table go on as if it
        // had no trigger, but for the key, queued while there is one, so that the worker
        // finds the sync broken and stops it with the reason (ai_syncs).
        let Some(key_columns) = args[3..].iter().map(|n| attnum(n)).collect::<Option<Vec<i32>>>() else {
            return Ok(Some(pg_sys::Datum::from(tuple)));
        };
        let new = match attnum(&args[1]) {
            Some(mut target) => {
                let mut value = pg_sys::Datum::from(0);
                let mut null = true;
                pg_sys::heap_modify_tuple_by_cols(
                    tuple,
                    desc,
                    1,
                    &raw mut target,
                    &raw mut value,
                    &raw mut null,
                )
            }
            None => tuple,
        };
        let mut key = Vec::with_capacity(nargs - 3);
        for column in key_columns {
            let p = pg_sys::SPI_getvalue(new, desc, column);
            key.push(if p.is_null() { None } else { Some(CStr::from_ptr(p).to_string_lossy().into_owned()) });
        }
        // The sync's table, named by the trigger: on a partition (whose trigger is the
        // partitioned table's, cloned) it is not the relation at hand.
        let relid = args[2].parse::<u32>().map(pg_sys::Oid::from).map_err(|_| not_a_trigger())?;
        enqueue(&args[0], relid, key)?;
        // The database's worker (or the launcher, to start one) looks once this commits.
        super::wake::want_at_commit();
        Ok(Some(pg_sys::Datum::from(new)))
    }
}
