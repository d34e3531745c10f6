//! A job's expression: what it reads and returns (`analyze`), and the query that computes it
//! for one chunk of rows at a time (`ChunkPlan`, `Cursor`).
//!
//! The chunk query runs as a cursor fetched a few rows at a time, so the job writes each
//! row's value while the AI Batch node below keeps the next rows' requests in flight; the
//! query reads the next chunk's rows after its own, so that requests stay in flight across
//! the end of the chunk and the commit after it (`executor::carry`). Values
//! are kept as the expression's own datums (copied out of SPI's memory), so the UPDATE's
//! assignment cast to the target column runs per row and a value it rejects fails that row.

use super::table::Table;
use crate::executor::list_ptrs;
use crate::functions::calls::Kernel;
use crate::spi::Scratch;
use bailian_core::AiError;
use pgrx::pg_sys;
use pgrx::IntoDatum;
use std::ffi::{CStr, CString};

/// What `analyze` learns of the expression.
pub struct Analysis {
    /// The type of the expression's value (the UPDATE's `$1`).
    pub value_type: pg_sys::Oid,
    /// Columns the expression and the filter read (but the target): a row whose text of
    /// them changed between the request and the write is skipped.
    pub checked: Vec<String>,
    /// Whether they read the whole row (`docs` or `docs.*`): then the chunk query reads every
    /// column; otherwise only those, so the job needs no more column privileges than an
    /// UPDATE computing the same expression.
    pub whole_row: bool,
    /// Whether they read the target column itself.
    pub reads_target: bool,
    /// Whether a chunk's query may read the next chunk's rows ahead: the expression makes one
    /// AI call, outside any subquery, so that the one AI Batch node's requests are all the
    /// read-ahead sends, and the next chunk's node takes them up (`executor::carry`). Nested
    /// calls (a node above another, which reads ahead what the one below returned) and calls
    /// the executor does not batch (made where their row is read) would be made again.
    pub read_ahead: bool,
}

/// The AI calls in `expr`, counted; None when it holds a subquery.
unsafe fn ai_calls(expr: *mut pg_sys::Node) -> Option<usize> {
    #[pgrx::pg_guard]
    unsafe extern "C-unwind" fn walk(node: *mut pg_sys::Node, cx: *mut std::ffi::c_void) -> bool {
        if node.is_null() {
            return false;
        }
        // SAFETY: cx is the counter passed below; node a valid node of an analyzed query.
        unsafe {
            let calls = &mut *(cx as *mut Option<usize>);
            match (*node).type_ {
                pg_sys::NodeTag::T_SubLink | pg_sys::NodeTag::T_Query => {
                    *calls = None;
                    return true;
                }
                pg_sys::NodeTag::T_FuncExpr
                    if Kernel::of_function((*(node as *mut pg_sys::FuncExpr)).funcid).is_some() =>
                {
                    *calls = calls.map(|n| n + 1);
                }
                _ => {}
            }
            pg_sys::expression_tree_walker(node, Some(walk), cx)
        }
    }
    let mut calls = Some(0);
    // SAFETY: a valid expression tree; the walker only reads it.
    unsafe { walk(expr, (&mut calls as *mut Option<usize>).cast()) };
    calls
}

fn internal(what: &str) -> AiError {
    AiError::Internal { message: format!("{what} failed") }
}

/// A prepared statement kept for the whole job (it spans the job's commits).
struct Kept(pg_sys::SPIPlanPtr);

impl Kept {
    /// `options`: cursor options (`CURSOR_OPT_*`), 0 for none.
    fn prepare(sql: &str, argtypes: &mut [pg_sys::Oid], options: u32) -> Result<Kept, AiError> {
        let c = CString::new(sql).map_err(|_| AiError::invalid("the expression must not contain NUL"))?;
        // SAFETY: inside the job's SPI connection; a parse or analysis error is raised as an
        // ERROR (the job's), and a NULL result is SPI's own failure.
        unsafe {
            let plan = pg_sys::SPI_prepare_cursor(
                c.as_ptr(),
                argtypes.len() as i32,
                argtypes.as_mut_ptr(),
                options as i32,
            );
            if plan.is_null() || pg_sys::SPI_keepplan(plan) != 0 {
                return Err(internal("SPI_prepare"));
            }
            Ok(Kept(plan))
        }
    }
}

impl Drop for Kept {
    fn drop(&mut self) {
        // SAFETY: a plan this struct kept; freeing it touches only its own memory context.
        unsafe { pg_sys::SPI_freeplan(self.0) };
    }
}

/// Parses `SELECT (expression), (filter)` over the table and checks that it computes one
/// value per row.
pub fn analyze(procedure: &str, table: &Table, expression: &str) -> Result<Analysis, AiError> {
    let has_filter = table.has_filter();
    let kept = Kept::prepare(&table.analysis_sql(expression), &mut [], 0)?;
    // SAFETY: the plan source and its analyzed query are valid while the plan is kept;
    // only their fields are read, and pull_varattnos allocates in the current context.
    unsafe {
        let sources = list_ptrs(pg_sys::SPI_plan_get_plan_sources(kept.0));
        let queries = match sources[..] {
            [source] => list_ptrs((*(source as *mut pg_sys::CachedPlanSource)).query_list),
            _ => Vec::new(),
        };
        let query = queries.first().map_or(std::ptr::null_mut(), |q| *q as *mut pg_sys::Query);
        let wanted = 1 + usize::from(has_filter);
        let entries = if query.is_null() { Vec::new() } else { list_ptrs((*query).targetList) };
        if query.is_null()
            || (*query).commandType != pg_sys::CmdType::CMD_SELECT
            || entries.len() != wanted
            || list_ptrs((*query).rtable).len() != 1
        {
            return Err(AiError::invalid(format!(
                "{procedure}: the expression{} must be one SQL expression over a row of {}",
                if has_filter { " and the filter" } else { "" },
                table.shown
            )));
        }
        if (*query).hasAggs || (*query).hasWindowFuncs || (*query).hasTargetSRFs {
            return Err(AiError::invalid(format!(
                "{procedure}: the expression must give one value per row: no aggregate, window or set-returning function"
            )));
        }
        let expr = |i: usize| (*(entries[i] as *mut pg_sys::TargetEntry)).expr as *mut pg_sys::Node;
        if has_filter && pg_sys::exprType(expr(1)) != pg_sys::BOOLOID {
            return Err(AiError::DatatypeMismatch {
                message: format!(
                    "{procedure}: filter must be a boolean expression over a row of {}",
                    table.shown
                ),
            });
        }
        let mut read: *mut pg_sys::Bitmapset = std::ptr::null_mut();
        for i in 0..wanted {
            pg_sys::pull_varattnos(expr(i), 1, &mut read);
        }
        let mut attnums = Vec::new();
        let mut whole_row = false;
        let mut member = pg_sys::bms_next_member(read, -1);
        while member >= 0 {
            let attnum = member + pg_sys::FirstLowInvalidHeapAttributeNumber;
            match attnum {
                0 => whole_row = true,
                n if n > 0 => attnums.push(n as i16),
                // System columns: the subquery the chunk reads through does not have them.
                _ => {}
            }
            member = pg_sys::bms_next_member(read, member);
        }
        let checked = table
            .columns()?
            .into_iter()
            .filter(|(attnum, _)| *attnum != table.target_attnum && (whole_row || attnums.contains(attnum)))
            .map(|(_, name)| name)
            .collect();
        let reads_target = attnums.contains(&table.target_attnum);
        let read_ahead = ai_calls(expr(0)) == Some(1);
        Ok(Analysis { value_type: pg_sys::exprType(expr(0)), checked, whole_row, reads_target, read_ahead })
    }
}

/// A row of a chunk as the query returned it.
pub struct Fetched {
    pub identity: String,
    /// The checked columns' text (see `Analysis::checked`).
    pub inputs: String,
    /// The expression's value, in the job's value memory; None for NULL.
    pub value: Option<pg_sys::Datum>,
}

/// The chunk query, prepared once for the job.
pub struct ChunkPlan(Kept);

/// Rows of a chunk query: their identities, and the first and last of their keys.
#[derive(Clone)]
pub struct Span {
    pub identities: Vec<Option<String>>,
    pub first: Vec<Option<String>>,
    pub last: Vec<Option<String>>,
}

impl Span {
    /// No rows.
    pub fn none() -> Span {
        Span { identities: Vec::new(), first: Vec::new(), last: Vec::new() }
    }
}

impl ChunkPlan {
    /// Planned once for all chunks (a generic plan), so that every chunk's query has the
    /// same nodes: a node takes up only what the same node of the same plan carried.
    pub fn prepare(sql: &str) -> Result<ChunkPlan, AiError> {
        Kept::prepare(sql, &mut [pg_sys::TEXTARRAYOID; 6], pg_sys::CURSOR_OPT_GENERIC_PLAN).map(ChunkPlan)
    }

    /// Opens a cursor over the rows of `chunk`, then those of `next` (read ahead, for the
    /// next chunk's query to take up; see `executor::carry`). Its parameters are built in
    /// `values`, which must not be reset before it is closed.
    pub fn open(&self, chunk: Span, next: Span, values: &Scratch) -> Result<Cursor, AiError> {
        // In `values`: the arrays and what SPI makes of them stay until the chunk is done.
        let portal = values.keep(|| {
            let mut params: Vec<pg_sys::Datum> =
                [chunk.identities, chunk.first, chunk.last, next.identities, next.first, next.last]
                    .into_iter()
                    .map(|a| a.into_datum().unwrap_or(pg_sys::Datum::from(0)))
                    .collect();
            let nulls = [b' ' as std::ffi::c_char; 6];
            // SAFETY: a kept plan with six text[] parameters, given six non-NULL arrays.
            // The portal belongs to the transaction; `Cursor` closes it.
            unsafe {
                pg_sys::SPI_cursor_open(
                    std::ptr::null(),
                    self.0 .0,
                    params.as_mut_ptr(),
                    nulls.as_ptr(),
                    false,
                )
            }
        });
        if portal.is_null() {
            return Err(internal("SPI_cursor_open"));
        }
        // SAFETY: a live portal's name, copied (the portal may be dropped by an abort).
        let name = unsafe { CStr::from_ptr((*portal).name) }.to_owned();
        Ok(Cursor { name })
    }
}

/// An open chunk cursor, known by its portal's name: an error that aborts a subtransaction
/// the cursor was fetched in leaves the portal failed, and closing looks it up again.
pub struct Cursor {
    name: CString,
}

impl Cursor {
    fn portal(&self) -> pg_sys::Portal {
        // SAFETY: a lookup by name in the portal table; NULL once the portal is gone.
        unsafe { pg_sys::GetPortalByName(self.name.as_ptr()) }
    }

    /// The next rows, up to `count`; their values are copied into `values`.
    pub fn fetch(&mut self, count: usize, values: &Scratch) -> Result<Vec<Fetched>, AiError> {
        let portal = self.portal();
        if portal.is_null() {
            return Err(internal("chunk cursor lookup"));
        }
        // SAFETY: an open portal of the job's SPI connection; the tuple table is read and
        // freed here, each tuple copied into `values` first, so that the values' datums
        // point into memory the job owns until it resets `values`.
        unsafe {
            pg_sys::SPI_cursor_fetch(portal, true, count as std::ffi::c_long);
            let table = pg_sys::SPI_tuptable;
            let n = pg_sys::SPI_processed as usize;
            if table.is_null() {
                return Ok(Vec::new());
            }
            let tupdesc = (*table).tupdesc;
            let mut rows = Vec::with_capacity(n);
            for i in 0..n {
                let tuple = values.keep(|| pg_sys::heap_copytuple(*(*table).vals.add(i)));
                let text = |col: i32| {
                    let p = pg_sys::SPI_getvalue(tuple, tupdesc, col);
                    if p.is_null() {
                        return String::new();
                    }
                    let s = CStr::from_ptr(p).to_string_lossy().into_owned();
                    pg_sys::pfree(p.cast());
                    s
                };
                let mut isnull = false;
                let value = pg_sys::SPI_getbinval(tuple, tupdesc, 3, &mut isnull);
                rows.push(Fetched { identity: text(1), inputs: text(2), value: (!isnull).then_some(value) });
            }
            pg_sys::SPI_freetuptable(table);
            Ok(rows)
        }
    }
}

impl Drop for Cursor {
    fn drop(&mut self) {
        let portal = self.portal();
        // SAFETY: the job's portal. One still marked active is the one an error is unwinding
        // through (dropping it would raise again); the transaction's abort drops it.
        unsafe {
            if !portal.is_null() && (*portal).status != pg_sys::PortalStatus::PORTAL_ACTIVE {
                pg_sys::SPI_cursor_close(portal);
            }
        }
    }
}
