//! The planner hook: finds AI calls in finished plans and inserts AI Batch nodes above them
//! (see the module doc of `executor` for the shape and the rules).
//!
//! The rewrite runs on plans after `set_plan_references`, so every Var it makes is already in
//! executor form: `OUTER_VAR` for a column of the node below, `INDEX_VAR` for a call's answer
//! in the AI Batch node's scan tuple (described by `custom_scan_tlist`, which is also what
//! EXPLAIN VERBOSE deparses).

use super::capture;
use super::cut::{bool_test, Cut, Frame, Kernels};
use super::node::{self, Role};
use pgrx::pg_sys;
use std::ffi::c_void;

static mut PREV_PLANNER: pg_sys::planner_hook_type = None;

pub fn install() {
    // SAFETY: _PG_init runs once per process, before any query is planned; the hook chain is
    // process-local and we keep the previous hook to call it first.
    unsafe {
        PREV_PLANNER = pg_sys::planner_hook;
        pg_sys::planner_hook = Some(planner);
        pg_sys::RegisterCustomScanMethods(node::scan_methods());
    }
}

#[pgrx::pg_guard]
unsafe extern "C-unwind" fn planner(
    parse: *mut pg_sys::Query,
    query_string: *const std::ffi::c_char,
    cursor_options: std::ffi::c_int,
    bound_params: pg_sys::ParamListInfo,
) -> *mut pg_sys::PlannedStmt {
    // SAFETY: the arguments are the planner's own, passed on unchanged. The previous hook is a
    // plain C function pointer: its errors become Rust panics only through the FFI guard.
    let plan = || unsafe {
        match PREV_PLANNER {
            Some(prev) => {
                pg_sys::ffi::pg_guard_ffi_boundary(|| prev(parse, query_string, cursor_options, bound_params))
            }
            None => pg_sys::standard_planner(parse, query_string, cursor_options, bound_params),
        }
    };
    // SAFETY: query_string is NULL or the statement's NUL-terminated text.
    let text = unsafe { (!query_string.is_null()).then(|| std::ffi::CStr::from_ptr(query_string)) };
    // Only a modification (Citus' error is about UPDATEs, DELETEs and MERGEs, also in a CTE or
    // an ON CONFLICT) that may call an AI function is planned inside a catch (which would
    // re-raise any other error without its position and context).
    // SAFETY: parse is the Query being planned.
    let modifies = unsafe { (*parse).commandType != pg_sys::CmdType::CMD_SELECT || (*parse).hasModifyingCTE };
    let stmt = if modifies && crate::citus::loaded() && text.is_some_and(|t| calls_ai(t.to_bytes())) {
        citus_modification_errors(plan, text.is_some_and(|t| on_conflict_calls_ai(t.to_bytes())))
    } else {
        plan()
    };
    let marked = capture::is_marked(query_string);
    if (crate::guc::batch_execution() || marked) && !stmt.is_null() {
        // SAFETY: a finished PlannedStmt in the current (planner) memory context.
        unsafe { rewrite(stmt, cursor_options as u32 & pg_sys::CURSOR_OPT_SCROLL != 0, marked) };
    }
    stmt
}

/// Citus refuses an UPDATE (or DELETE, MERGE) of a distributed or reference table that calls a
/// VOLATILE function, as every AI function is, and an INSERT whose ON CONFLICT clause calls one:
/// its own errors say nothing of what to do instead. For a statement calling an AI function,
/// the error says it.
fn citus_modification_errors(
    plan: impl FnOnce() -> *mut pg_sys::PlannedStmt + std::panic::UnwindSafe,
    on_conflict_calls_ai: bool,
) -> *mut pg_sys::PlannedStmt {
    use pgrx::pg_sys::panic::{CaughtError, ErrorReport};
    pgrx::PgTryBuilder::new(plan)
        .catch_others(|e| match &e {
            CaughtError::PostgresError(report) | CaughtError::ErrorReport(report) => {
                let Some((what, hint)) = citus_refusal(report.message(), on_conflict_calls_ai) else {
                    e.rethrow()
                };
                ErrorReport::new(
                    pgrx::PgSqlErrorCode::ERRCODE_FEATURE_NOT_SUPPORTED,
                    format!("AI functions cannot be called {what}: {}", report.message()),
                    "pg_bailian",
                )
                .set_hint(hint)
                .report(pgrx::PgLogLevel::ERROR);
                unreachable!("an ERROR does not return")
            }
            _ => e.rethrow(),
        })
        .execute()
}

/// For an error of Citus' planner refusing a VOLATILE function in a modification: where the
/// call was, and what to do instead. An ON CONFLICT clause's error is ours only when an AI
/// function is named there (`on_conflict_calls_ai`): another function there (`now()`) fails
/// the same way, and its error is left as Citus words it.
fn citus_refusal(message: &str, on_conflict_calls_ai: bool) -> Option<(&'static str, &'static str)> {
    if message.contains("ON CONFLICT") || message.contains("DO UPDATE SET") {
        on_conflict_calls_ai.then_some((
            "in the ON CONFLICT clause of an INSERT into a Citus table",
            "Call it in the INSERT's SELECT or VALUES and use its result through EXCLUDED (ON CONFLICT (id) DO UPDATE SET col = EXCLUDED.col), or fill the column afterwards with CALL ai_update('table', 'column', $$<expression>$$).",
        ))
    } else if message.contains("must not be VOLATILE")
        || message.contains("STABLE functions used in UPDATE queries")
    {
        Some((
            "in an UPDATE of a Citus distributed or reference table",
            "CALL ai_update('table', 'column', $$<expression>$$) fills the column on the nodes that hold its shards, committing as it goes (ai_embed_column and ai_gen_column too).",
        ))
    } else {
        None
    }
}

/// Whether a statement's text names an AI function (`ai_` in any case): a cheap test that
/// never misses one (the names of the Hologres forms, list_external_models and prompt, call
/// no model).
fn calls_ai(text: &[u8]) -> bool {
    text.windows(3).any(|w| w.eq_ignore_ascii_case(b"ai_"))
}

/// Whether the text after a statement's (first) `ON CONFLICT` names an AI function.
fn on_conflict_calls_ai(text: &[u8]) -> bool {
    text.windows(11)
        .position(|w| w.eq_ignore_ascii_case(b"on conflict"))
        .is_some_and(|at| calls_ai(&text[at..]))
}

/// How many rows the consumer of a node's output will take.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Demand {
    /// Every row (UPDATE's source, a Sort's input ...): read ahead the whole window at once.
    All,
    /// At most this many (a constant LIMIT above).
    AtMost(u64),
    /// Unknown (a client or cursor may stop early): start small and grow.
    Unknown,
    /// The node must support mark/restore or backward scans: do not put a node above it.
    Untouchable,
}

impl Demand {
    /// As stored in the plan (custom_private): kind and bound.
    pub fn encode(self) -> (i32, i32) {
        match self {
            Demand::All => (0, 0),
            Demand::AtMost(n) => (1, i32::try_from(n).unwrap_or(i32::MAX)),
            Demand::Unknown | Demand::Untouchable => (2, 0),
        }
    }

    pub fn decode(kind: i32, bound: i32) -> Demand {
        match kind {
            0 => Demand::All,
            1 => Demand::AtMost(u64::try_from(bound).unwrap_or(0)),
            _ => Demand::Unknown,
        }
    }
}

struct Rewriter {
    next_id: i32,
    kernels: Kernels,
}

unsafe fn rewrite(stmt: *mut pg_sys::PlannedStmt, scroll: bool, marked: bool) {
    let mut r = Rewriter { next_id: 0, kernels: Kernels::default() };
    // SAFETY (whole function): stmt and its plans are valid planner output.
    unsafe {
        let mut max = 0;
        max_node_id((*stmt).planTree, &mut max);
        for p in list_ptrs((*stmt).subplans) {
            max_node_id(p.cast(), &mut max);
        }
        r.next_id = max + 1;
        // A SCROLL cursor fetches backwards through whatever passes backward scans down
        // (Limit, Append, Result ...), which an AI Batch node cannot do: its plan stays as it
        // is (the subplans below are fetched forwards only).
        if !scroll {
            (*stmt).planTree = r.walk((*stmt).planTree, Demand::Unknown);
        }
        if marked {
            // A job's query (see `capture`): the AI Batch nodes at the top capture errors,
            // and the job reads every row, so they read ahead the whole window at once. Only
            // nodes that return rows one for one: a row's position must be the query's.
            let mut top = (*stmt).planTree;
            while !top.is_null()
                && tag(top.cast()) == pg_sys::NodeTag::T_CustomScan
                && node::is_batch(top.cast())
                && (*top).qual.is_null()
            {
                node::set_capture(top.cast());
                top = (*top).lefttree;
            }
        }
        if !(*stmt).subplans.is_null() {
            let list = (*stmt).subplans;
            for i in 0..(*list).length as usize {
                let cell = (*list).elements.add(i);
                let p = (*cell).ptr_value as *mut pg_sys::Plan;
                (*cell).ptr_value = r.walk(p, Demand::Unknown).cast();
            }
        }
    }
}

/// The list's pointer elements.
pub unsafe fn list_ptrs(list: *mut pg_sys::List) -> Vec<*mut c_void> {
    if list.is_null() {
        return Vec::new();
    }
    // SAFETY: a valid pointer List: `length` cells in `elements`.
    unsafe { (0..(*list).length as usize).map(|i| (*(*list).elements.add(i)).ptr_value).collect() }
}

/// A new pointer List of `items`.
pub unsafe fn list_of(items: impl IntoIterator<Item = *mut c_void>) -> *mut pg_sys::List {
    let mut list = std::ptr::null_mut();
    for item in items {
        // SAFETY: lappend allocates in the current memory context.
        list = unsafe { pg_sys::lappend(list, item) };
    }
    list
}

pub(super) unsafe fn tag(node: *const c_void) -> pg_sys::NodeTag {
    // SAFETY: every Node starts with its tag.
    unsafe { (*(node as *const pg_sys::Node)).type_ }
}

unsafe fn max_node_id(plan: *mut pg_sys::Plan, max: &mut i32) {
    if plan.is_null() {
        return;
    }
    // SAFETY: a valid plan tree.
    unsafe {
        *max = (*max).max((*plan).plan_node_id);
        for child in children(plan) {
            max_node_id(child, max);
        }
    }
}

/// Every child plan of `plan` (not subplans of expressions: those are in stmt->subplans).
unsafe fn children(plan: *mut pg_sys::Plan) -> Vec<*mut pg_sys::Plan> {
    // SAFETY: a valid plan node of the tag it carries.
    unsafe {
        let mut out = vec![(*plan).lefttree, (*plan).righttree];
        match tag(plan.cast()) {
            pg_sys::NodeTag::T_Append => out.extend(plan_list((*(plan as *mut pg_sys::Append)).appendplans)),
            pg_sys::NodeTag::T_MergeAppend => {
                out.extend(plan_list((*(plan as *mut pg_sys::MergeAppend)).mergeplans))
            }
            pg_sys::NodeTag::T_SubqueryScan => out.push((*(plan as *mut pg_sys::SubqueryScan)).subplan),
            pg_sys::NodeTag::T_CustomScan => {
                out.extend(plan_list((*(plan as *mut pg_sys::CustomScan)).custom_plans))
            }
            _ => {}
        }
        out.retain(|p| !p.is_null());
        out
    }
}

unsafe fn plan_list(list: *mut pg_sys::List) -> Vec<*mut pg_sys::Plan> {
    // SAFETY: a List of plans.
    unsafe { list_ptrs(list).into_iter().map(|p| p.cast()).collect() }
}

/// Replaces each element of a List of plans with `f(element)`.
unsafe fn map_plan_list(list: *mut pg_sys::List, mut f: impl FnMut(*mut pg_sys::Plan) -> *mut pg_sys::Plan) {
    if list.is_null() {
        return;
    }
    // SAFETY: a valid List of plans.
    unsafe {
        for i in 0..(*list).length as usize {
            let cell = (*list).elements.add(i);
            (*cell).ptr_value = f((*cell).ptr_value.cast()).cast();
        }
    }
}

/// A constant, non-NULL bigint (a LIMIT or OFFSET), if that is what `node` is.
unsafe fn const_count(node: *mut pg_sys::Node) -> Option<Option<u64>> {
    if node.is_null() {
        return Some(None);
    }
    // SAFETY: a valid expression node.
    unsafe {
        if tag(node.cast()) != pg_sys::NodeTag::T_Const {
            return None;
        }
        let c = node as *mut pg_sys::Const;
        if (*c).constisnull {
            return Some(None);
        }
        if (*c).consttype != pg_sys::INT8OID {
            return None;
        }
        Some(Some(u64::try_from((*c).constvalue.value() as i64).unwrap_or(0)))
    }
}

impl Rewriter {
    /// Walks `plan` with what its consumer demands, returning what replaces it.
    unsafe fn walk(&mut self, plan: *mut pg_sys::Plan, demand: Demand) -> *mut pg_sys::Plan {
        if plan.is_null() {
            return plan;
        }
        // SAFETY (whole function): a valid plan node of the tag it carries.
        unsafe {
            let own_disabled = own_disabled(plan);
            let t = tag(plan.cast());
            let (outer, inner) = match t {
                pg_sys::NodeTag::T_ModifyTable => (Demand::All, Demand::Unknown),
                pg_sys::NodeTag::T_Limit => {
                    let l = plan as *mut pg_sys::Limit;
                    let bound = match (const_count((*l).limitOffset), const_count((*l).limitCount)) {
                        (Some(offset), Some(Some(count)))
                            if (*l).limitOption == pg_sys::LimitOption::LIMIT_OPTION_COUNT =>
                        {
                            let above = match demand {
                                Demand::AtMost(n) => n.min(count),
                                _ => count,
                            };
                            Demand::AtMost(offset.unwrap_or(0).saturating_add(above))
                        }
                        _ => Demand::Unknown,
                    };
                    (bound, Demand::Unknown)
                }
                pg_sys::NodeTag::T_Sort | pg_sys::NodeTag::T_Hash => (Demand::All, Demand::Unknown),
                pg_sys::NodeTag::T_Agg => {
                    let strategy = (*(plan as *mut pg_sys::Agg)).aggstrategy;
                    if strategy == pg_sys::AggStrategy::AGG_SORTED
                        || strategy == pg_sys::AggStrategy::AGG_MIXED
                    {
                        (Demand::Unknown, Demand::Unknown)
                    } else {
                        (Demand::All, Demand::Unknown)
                    }
                }
                // One row out per row in: the consumer's demand passes through.
                pg_sys::NodeTag::T_Result if (*plan).qual.is_null() => (demand, Demand::Unknown),
                // The inner side of a merge join is marked and restored.
                pg_sys::NodeTag::T_MergeJoin => (Demand::Unknown, Demand::Untouchable),
                _ => (Demand::Unknown, Demand::Unknown),
            };
            (*plan).lefttree = self.walk((*plan).lefttree, outer);
            (*plan).righttree = self.walk((*plan).righttree, inner);
            match t {
                pg_sys::NodeTag::T_Append => {
                    let d = if demand == Demand::All { Demand::All } else { Demand::Unknown };
                    map_plan_list((*(plan as *mut pg_sys::Append)).appendplans, |p| self.walk(p, d));
                }
                pg_sys::NodeTag::T_MergeAppend => {
                    map_plan_list((*(plan as *mut pg_sys::MergeAppend)).mergeplans, |p| {
                        self.walk(p, Demand::Unknown)
                    });
                }
                pg_sys::NodeTag::T_SubqueryScan => {
                    let s = plan as *mut pg_sys::SubqueryScan;
                    let d = if (*plan).qual.is_null() { demand } else { Demand::Unknown };
                    (*s).subplan = self.walk((*s).subplan, d);
                }
                pg_sys::NodeTag::T_CustomScan => {
                    map_plan_list((*(plan as *mut pg_sys::CustomScan)).custom_plans, |p| {
                        self.walk(p, Demand::Unknown)
                    });
                }
                // Aggregate and window function arguments are computed below the node.
                pg_sys::NodeTag::T_Agg | pg_sys::NodeTag::T_WindowAgg
                    if !(*plan).lefttree.is_null()
                        && (t == pg_sys::NodeTag::T_Agg || window_reads_every_row(plan)) =>
                {
                    let role = if t == pg_sys::NodeTag::T_Agg { Role::Aggregate } else { Role::Window };
                    while let Some(batch) = self.lower(plan, outer, role) {
                        (*plan).lefttree = batch;
                    }
                }
                _ => {}
            }
            recount_disabled(plan, own_disabled);
            if demand == Demand::Untouchable || !self.projects(plan) {
                return plan;
            }
            let mut top = plan;
            while let Some(batch) = self.wrap(top, demand) {
                top = batch;
            }
            node::number_filters(top);
            top
        }
    }

    /// Plan nodes that evaluate their own target list and quals, where we may change them.
    unsafe fn projects(&self, plan: *mut pg_sys::Plan) -> bool {
        use pg_sys::NodeTag::*;
        // SAFETY: a valid plan node.
        unsafe {
            match tag(plan.cast()) {
                T_SeqScan
                | T_SampleScan
                | T_IndexScan
                | T_IndexOnlyScan
                | T_BitmapHeapScan
                | T_TidScan
                | T_SubqueryScan
                | T_FunctionScan
                | T_ValuesScan
                | T_TableFuncScan
                | T_CteScan
                | T_NamedTuplestoreScan
                | T_WorkTableScan
                | T_NestLoop
                | T_MergeJoin
                | T_HashJoin
                | T_Agg
                | T_Group => true,
                // Its run condition refers to its target list by position.
                T_WindowAgg => run_condition(plan).is_null(),
                // A Result with no input returns one row: nothing to read ahead.
                T_Result => !(*plan).lefttree.is_null(),
                T_CustomScan => node::is_batch((plan as *mut pg_sys::CustomScan).cast()),
                _ => false,
            }
        }
    }

    /// Puts an AI Batch node above `plan` for the calls ready at this level (its first AI
    /// qual's, else its target list's), or None if there are none.
    unsafe fn wrap(&mut self, plan: *mut pg_sys::Plan, demand: Demand) -> Option<*mut pg_sys::Plan> {
        // SAFETY: a valid plan node.
        unsafe { self.wrap_quals(plan, demand).or_else(|| self.wrap_tlist(plan, demand)) }
    }

    /// The quals of `plan` a node above may take over: its filter, and the join quals of an
    /// inner join (which only filter the joined rows). (list, whether they are join quals).
    unsafe fn qual_lists(plan: *mut pg_sys::Plan) -> Vec<(*mut *mut pg_sys::List, bool)> {
        use pg_sys::NodeTag::*;
        // SAFETY: a valid plan node of the tag it carries.
        unsafe {
            let mut lists = Vec::new();
            if matches!(tag(plan.cast()), T_NestLoop | T_MergeJoin | T_HashJoin) {
                let join = plan as *mut pg_sys::Join;
                if (*join).jointype == pg_sys::JoinType::JOIN_INNER {
                    lists.push((std::ptr::addr_of_mut!((*join).joinqual), true));
                }
            }
            lists.push((std::ptr::addr_of_mut!((*plan).qual), false));
            lists
        }
    }

    /// The first qual (in the order PostgreSQL evaluates them: join quals, then the filter,
    /// each as the planner ordered it, by security level and cost) whose calls can be batched
    /// goes to a new AI Batch node above, with every qual after it: the quals before it still
    /// filter first in `plan`, so no row they reject is sent; the node makes its qual's calls
    /// for the rest and evaluates the moved quals in their order (a later AI qual's calls row
    /// by row, until the next round puts a node above this one for them). The target list
    /// moves up too, to be computed only for the rows that pass.
    unsafe fn wrap_quals(&mut self, plan: *mut pg_sys::Plan, demand: Demand) -> Option<*mut pg_sys::Plan> {
        // SAFETY (whole function): a valid plan node; everything is allocated in the
        // planner's memory context like the plan itself.
        unsafe {
            let lists = Self::qual_lists(plan);
            let quals: Vec<(usize, *mut pg_sys::Node)> = lists
                .iter()
                .enumerate()
                .flat_map(|(l, (list, _))| list_ptrs(**list).into_iter().map(move |q| (l, q.cast())))
                .collect();
            if !quals.iter().any(|(_, q)| self.kernels.contains(*q)) {
                return None;
            }
            let mut cut = Cut::new(&mut self.kernels, Frame::Above { below: Vec::new() });
            let mut first = None;
            for (i, (_, q)) in quals.iter().enumerate() {
                if !cut.kernels().contains(*q) {
                    continue;
                }
                let mark = cut.mark();
                if let Some(e) = cut.top(*q, &[], false) {
                    if !cut.calls.is_empty() {
                        first = Some((i, e));
                        break;
                    }
                }
                cut.undo(mark);
            }
            let (at, rewritten) = first?;
            let mut moved = vec![rewritten.cast::<std::ffi::c_void>()];
            for (_, q) in &quals[at + 1..] {
                moved.push(cut.moved(*q)?.cast());
            }
            let mut above = Vec::new();
            for tle in list_ptrs((*plan).targetlist) {
                let tle = tle as *mut pg_sys::TargetEntry;
                let copy = pg_sys::flatCopyTargetEntry(tle);
                (*copy).expr = cut.moved((*tle).expr.cast())?.cast();
                above.push(copy.cast());
            }
            // Nothing failed: change the plan.
            for (l, (list, _)) in lists.iter().enumerate() {
                **list = list_of(
                    quals[..at].iter().filter(|(ql, _)| *ql == l).map(|(_, q)| q.cast::<std::ffi::c_void>()),
                );
            }
            // A unique inner side means the join takes the first inner row that passes its
            // join quals; with some of them moved above, that row may fail them there while
            // a later one would have passed.
            if quals[at..].iter().any(|(l, _)| lists[*l].1) {
                (*(plan as *mut pg_sys::Join)).inner_unique = false;
            }
            let ordinal = node::filter_ordinal(plan) + 1;
            let batch = finish(&mut self.next_id, plan, cut, above, demand, Role::Filter(ordinal));
            (*batch).qual = list_of(moved);
            Some(batch)
        }
    }

    /// An AI Batch node above `plan` for the calls of its target list, or None if it has none
    /// that can be batched.
    unsafe fn wrap_tlist(&mut self, plan: *mut pg_sys::Plan, demand: Demand) -> Option<*mut pg_sys::Plan> {
        // SAFETY (whole function): as wrap_quals.
        unsafe {
            let tlist = list_ptrs((*plan).targetlist);
            if !tlist
                .iter()
                .any(|tle| self.kernels.contains((*(*tle as *mut pg_sys::TargetEntry)).expr.cast()))
            {
                return None;
            }
            let mut cut = Cut::new(&mut self.kernels, Frame::Above { below: Vec::new() });
            let mut above = Vec::with_capacity(tlist.len());
            for tle in tlist {
                let tle = tle as *mut pg_sys::TargetEntry;
                let copy = pg_sys::flatCopyTargetEntry(tle);
                let expr = (*tle).expr.cast();
                (*copy).expr = match cut.top(expr, &[], false) {
                    Some(e) => e.cast(),
                    // Evaluated below as it was, row by row.
                    None => cut.column(expr).cast(),
                };
                above.push(copy.cast());
            }
            if cut.calls.is_empty() {
                return None;
            }
            Some(finish(&mut self.next_id, plan, cut, above, demand, Role::Target))
        }
    }

    /// Puts an AI Batch node between the aggregate or window node `plan` and its input for
    /// the ready calls in its aggregates' or window functions' arguments and FILTERs, or
    /// None if there are none. The input's columns pass through unchanged (the node's
    /// grouping, sorting and partitioning refer to them by position); the answers follow.
    unsafe fn lower(
        &mut self,
        plan: *mut pg_sys::Plan,
        demand: Demand,
        role: Role,
    ) -> Option<*mut pg_sys::Plan> {
        // SAFETY (whole function): a valid Agg or WindowAgg node after set_plan_references:
        // its aggregates' arguments refer to its input as OUTER_VAR.
        unsafe {
            let child = (*plan).lefttree;
            let width = list_ptrs((*child).targetlist).len();
            let mut found = Vec::new();
            for expr in list_ptrs((*plan).targetlist)
                .into_iter()
                .map(|tle| (*(tle as *mut pg_sys::TargetEntry)).expr.cast::<pg_sys::Node>())
                .chain(list_ptrs((*plan).qual).into_iter().map(|q| q.cast()))
            {
                aggregates(expr, &mut found);
            }
            let mut cut = Cut::new(&mut self.kernels, Frame::Under { width });
            for a in found {
                let (filter, args): (*mut *mut pg_sys::Expr, Vec<*mut *mut pg_sys::Expr>) =
                    if tag(a.cast()) == pg_sys::NodeTag::T_Aggref {
                        let a = a as *mut pg_sys::Aggref;
                        let entries = list_ptrs((*a).args)
                            .into_iter()
                            .map(|tle| std::ptr::addr_of_mut!((*(tle as *mut pg_sys::TargetEntry)).expr))
                            .collect();
                        (std::ptr::addr_of_mut!((*a).aggfilter), entries)
                    } else {
                        let w = a as *mut pg_sys::WindowFunc;
                        // A window function proper (lag, first_value, ntile...) reads its
                        // argument for the rows it picks, not for every row: row by row.
                        if !(*w).winagg {
                            continue;
                        }
                        let list = (*w).args;
                        let entries = (0..if list.is_null() { 0 } else { (*list).length as usize })
                            .map(|i| std::ptr::addr_of_mut!((*(*list).elements.add(i)).ptr_value).cast())
                            .collect();
                        (std::ptr::addr_of_mut!((*w).aggfilter), entries)
                    };
                // The FILTER is evaluated for every row; the arguments only where it is true.
                let original = *filter;
                let mut guard = Vec::new();
                if !original.is_null() {
                    if cut.kernels().contains(original.cast()) {
                        if let Some(e) = cut.top(original.cast(), &[], false) {
                            *filter = e.cast();
                        }
                    }
                    guard.push(bool_test(original.cast(), pg_sys::BoolTestType::IS_TRUE));
                }
                for arg in args {
                    if cut.kernels().contains((*arg).cast()) {
                        if let Some(e) = cut.top((*arg).cast(), &guard, !guard.is_empty()) {
                            *arg = e.cast();
                        }
                    }
                }
            }
            if cut.calls.is_empty() {
                return None;
            }
            let mut above: Vec<*mut std::ffi::c_void> = Vec::with_capacity(width + cut.calls.len());
            for (i, tle) in list_ptrs((*child).targetlist).into_iter().enumerate() {
                let e = (*(tle as *mut pg_sys::TargetEntry)).expr.cast::<pg_sys::Node>();
                let var = pg_sys::makeVar(
                    pg_sys::OUTER_VAR,
                    (i + 1) as i16,
                    pg_sys::exprType(e),
                    pg_sys::exprTypmod(e),
                    pg_sys::exprCollation(e),
                    0,
                );
                above.push(
                    pg_sys::makeTargetEntry(var.cast(), (i + 1) as i16, std::ptr::null_mut(), false).cast(),
                );
            }
            for (j, call) in cut.calls.iter().enumerate() {
                let e = (*call).cast::<pg_sys::Node>();
                let var = pg_sys::makeVar(
                    pg_sys::INDEX_VAR,
                    (j + 1) as i16,
                    pg_sys::exprType(e),
                    -1,
                    pg_sys::exprCollation(e),
                    0,
                );
                above.push(
                    pg_sys::makeTargetEntry(var.cast(), (width + j + 1) as i16, std::ptr::null_mut(), false)
                        .cast(),
                );
            }
            let id = self.next_id;
            self.next_id += 1;
            Some(node::make_plan(child, list_of(above), scan_tlist(&cut.calls), demand, id, role))
        }
    }
}

/// The AI Batch node above `plan` that `cut` describes, `above` its target list.
unsafe fn finish(
    next_id: &mut i32,
    plan: *mut pg_sys::Plan,
    cut: Cut,
    above: Vec<*mut std::ffi::c_void>,
    demand: Demand,
    role: Role,
) -> *mut pg_sys::Plan {
    // SAFETY: as wrap_quals.
    unsafe {
        let below: &[*mut pg_sys::Expr] = match &cut.frame {
            Frame::Above { below } => below,
            Frame::Under { .. } => &[],
        };
        (*plan).targetlist =
            list_of(below.iter().enumerate().map(|(i, e)| {
                pg_sys::makeTargetEntry(*e, (i + 1) as i16, std::ptr::null_mut(), false).cast()
            }));
        let id = *next_id;
        *next_id += 1;
        let batch = node::make_plan(plan, list_of(above), scan_tlist(&cut.calls), demand, id, role);
        // The expressions that moved up may read the parameters of an InitPlan attached to
        // `plan`; EXPLAIN (PostgreSQL 17 on) names them only through the node that owns the
        // InitPlan or one above it, so it moves up too. It still runs lazily, the first time
        // a parameter is read, by whichever node reads it first; the node's allParam (copied
        // from plan's) already holds its parameters, so rescans propagate as before.
        if !(*plan).initPlan.is_null() {
            (*batch).initPlan = (*plan).initPlan;
            (*plan).initPlan = std::ptr::null_mut();
        }
        batch
    }
}

/// The AI Batch node's scan tuple: one column per call.
unsafe fn scan_tlist(calls: &[*mut pg_sys::Expr]) -> *mut pg_sys::List {
    // SAFETY: makeTargetEntry allocates in the planner's memory context.
    unsafe {
        list_of(calls.iter().enumerate().map(|(i, call)| {
            pg_sys::makeTargetEntry(*call, (i + 1) as i16, std::ptr::null_mut(), false).cast()
        }))
    }
}

/// PostgreSQL 18 counts in each plan node's disabled_nodes the nodes of its subtree that the
/// planner used although disabled (`enable_seqscan = off`...), and EXPLAIN marks a node
/// "Disabled" when its count exceeds the sum of its children's, where a CustomScan's
/// children are only its custom_plans. An AI Batch node's child is its outer plan, so the node
/// must count 0 (else it is marked) and the nodes above must not count its subtree (else
/// they are): `own_disabled` is what a node counts for itself, taken before its children
/// change, and `recount_disabled` sums it again with its children as they are now.
#[cfg(feature = "pg18")]
unsafe fn own_disabled(plan: *mut pg_sys::Plan) -> i32 {
    // SAFETY: a valid plan node.
    unsafe { (*plan).disabled_nodes - children_disabled(plan) }
}

#[cfg(feature = "pg18")]
unsafe fn recount_disabled(plan: *mut pg_sys::Plan, own: i32) {
    // SAFETY: a valid plan node.
    unsafe { (*plan).disabled_nodes = own + children_disabled(plan) }
}

/// The disabled nodes of `plan`'s children, as EXPLAIN (plan_is_disabled) sums them.
#[cfg(feature = "pg18")]
unsafe fn children_disabled(plan: *mut pg_sys::Plan) -> i32 {
    use pg_sys::NodeTag::*;
    // SAFETY: a valid plan node of the tag it carries; its child lists hold valid plans.
    unsafe {
        let count = |p: *mut pg_sys::Plan| if p.is_null() { 0 } else { (*p).disabled_nodes };
        let sum = |list: *mut pg_sys::List| list_ptrs(list).into_iter().map(|p| count(p.cast())).sum::<i32>();
        match tag(plan.cast()) {
            T_Append => sum((*(plan as *mut pg_sys::Append)).appendplans),
            T_MergeAppend => sum((*(plan as *mut pg_sys::MergeAppend)).mergeplans),
            T_SubqueryScan => count((*(plan as *mut pg_sys::SubqueryScan)).subplan),
            T_CustomScan => sum((*(plan as *mut pg_sys::CustomScan)).custom_plans),
            _ => count((*plan).lefttree) + count((*plan).righttree),
        }
    }
}

#[cfg(not(feature = "pg18"))]
unsafe fn own_disabled(_plan: *mut pg_sys::Plan) -> i32 {
    0
}

#[cfg(not(feature = "pg18"))]
unsafe fn recount_disabled(_plan: *mut pg_sys::Plan, _own: i32) {}

/// Whether the aggregates of the WindowAgg `plan` evaluate their arguments for every input
/// row, so computing them all ahead calls nothing row by row execution would not: each
/// row's frame contains the row itself, and no run condition stops evaluating the window
/// functions part way (PostgreSQL 15's pass-through mode).
unsafe fn window_reads_every_row(plan: *mut pg_sys::Plan) -> bool {
    // SAFETY: a valid WindowAgg node.
    unsafe {
        let w = plan as *mut pg_sys::WindowAgg;
        let o = (*w).frameOptions as u32;
        let starts_after =
            pg_sys::FRAMEOPTION_START_UNBOUNDED_FOLLOWING | pg_sys::FRAMEOPTION_START_OFFSET_FOLLOWING;
        let ends_before =
            pg_sys::FRAMEOPTION_END_UNBOUNDED_PRECEDING | pg_sys::FRAMEOPTION_END_OFFSET_PRECEDING;
        let excludes = pg_sys::FRAMEOPTION_EXCLUDE_CURRENT_ROW | pg_sys::FRAMEOPTION_EXCLUDE_GROUP;
        o & (starts_after | ends_before | excludes) == 0 && run_condition(plan).is_null()
    }
}

/// The run condition of the WindowAgg `plan` (PostgreSQL 15 on): a qual on its window
/// functions' results after which it stops computing them.
#[cfg(not(any(feature = "pg13", feature = "pg14")))]
unsafe fn run_condition(plan: *mut pg_sys::Plan) -> *mut pg_sys::List {
    // SAFETY: a valid WindowAgg node.
    unsafe { (*(plan as *mut pg_sys::WindowAgg)).runCondition }
}

#[cfg(any(feature = "pg13", feature = "pg14"))]
unsafe fn run_condition(_plan: *mut pg_sys::Plan) -> *mut pg_sys::List {
    std::ptr::null_mut()
}

/// The Aggrefs and WindowFuncs in `expr` (not looking inside them: aggregates do not nest).
unsafe fn aggregates(expr: *mut pg_sys::Node, out: &mut Vec<*mut pg_sys::Node>) {
    #[pgrx::pg_guard]
    unsafe extern "C-unwind" fn walk(node: *mut pg_sys::Node, cx: *mut std::ffi::c_void) -> bool {
        if node.is_null() {
            return false;
        }
        // SAFETY: cx is the Vec passed below; node a valid expression node.
        unsafe {
            if matches!(tag(node.cast()), pg_sys::NodeTag::T_Aggref | pg_sys::NodeTag::T_WindowFunc) {
                (*(cx as *mut Vec<*mut pg_sys::Node>)).push(node);
                return false;
            }
            pg_sys::expression_tree_walker(node, Some(walk), cx)
        }
    }
    // SAFETY: a valid expression tree.
    unsafe {
        walk(expr, (out as *mut Vec<*mut pg_sys::Node>).cast());
    }
}

#[cfg(test)]
mod tests {
    use super::{citus_refusal, on_conflict_calls_ai};

    #[test]
    fn citus_refusals_are_reworded_only_where_an_ai_call_caused_them() {
        let update = "functions used in UPDATE queries on distributed tables must not be VOLATILE";
        assert!(citus_refusal(update, false).unwrap().1.contains("CALL ai_update"));
        let set = "functions used in the DO UPDATE SET clause of INSERTs on distributed tables must be marked IMMUTABLE";
        let r#where = "functions used in the WHERE clause of the ON CONFLICT clause of INSERTs on distributed tables must be marked IMMUTABLE";
        for m in [set, r#where] {
            assert!(citus_refusal(m, true).unwrap().1.contains("EXCLUDED"), "{m}");
            assert_eq!(citus_refusal(m, false), None, "{m}");
        }
        assert_eq!(citus_refusal("relation \"x\" does not exist", true), None);
    }

    #[test]
    fn only_an_ai_call_after_on_conflict_counts() {
        let t = |s: &str| on_conflict_calls_ai(s.as_bytes());
        assert!(t(
            "INSERT INTO t VALUES (1, 'x') ON CONFLICT (id) DO UPDATE SET a = AI_GEN('chat', EXCLUDED.a)"
        ));
        assert!(t(
            "insert into t values (1) on conflict (id) do update set a = 1 where ai_gen('c', t.a) = ''"
        ));
        assert!(!t(
            "INSERT INTO t SELECT id, ai_gen('chat', b) FROM d ON CONFLICT (id) DO UPDATE SET at = now()"
        ));
        assert!(!t("INSERT INTO t SELECT id, ai_gen('chat', b) FROM d"));
    }
}
