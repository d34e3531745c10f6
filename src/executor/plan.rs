//! The planner hook: finds AI calls in finished plans and inserts AI Batch nodes above them
//! (see the module doc of `executor` for the shape and the rules).
//!
//! The rewrite runs on plans after `set_plan_references`, so every Var it makes is already in
//! executor form: `OUTER_VAR` for a column of the node below, `INDEX_VAR` for a call's answer
//! in the AI Batch node's scan tuple (described by `custom_scan_tlist`, which is also what
//! EXPLAIN VERBOSE deparses).

use super::{capture, node};
use crate::functions::calls::Kernel;
use pgrx::pg_sys;
use std::collections::HashMap;
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
    // SAFETY: the arguments are the planner's own, passed on unchanged.
    let stmt = unsafe {
        match PREV_PLANNER {
            Some(prev) => prev(parse, query_string, cursor_options, bound_params),
            None => pg_sys::standard_planner(parse, query_string, cursor_options, bound_params),
        }
    };
    let marked = capture::is_marked(query_string);
    if (crate::guc::batch_execution() || marked) && !stmt.is_null() {
        // SAFETY: a finished PlannedStmt in the current (planner) memory context.
        unsafe { rewrite(stmt, cursor_options as u32 & pg_sys::CURSOR_OPT_SCROLL != 0, marked) };
    }
    stmt
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
    /// Which functions are ours, by OID, for this planning run.
    kernels: HashMap<pg_sys::Oid, Option<Kernel>>,
}

unsafe fn rewrite(stmt: *mut pg_sys::PlannedStmt, scroll: bool, marked: bool) {
    let mut r = Rewriter { next_id: 0, kernels: HashMap::new() };
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
            // and the job reads every row, so they read ahead the whole window at once.
            let mut top = (*stmt).planTree;
            while !top.is_null()
                && tag(top.cast()) == pg_sys::NodeTag::T_CustomScan
                && node::is_batch(top.cast())
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

unsafe fn tag(node: *const c_void) -> pg_sys::NodeTag {
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
                _ => {}
            }
            if demand == Demand::Untouchable || !self.projects(plan) {
                return plan;
            }
            let mut top = plan;
            while let Some(batch) = self.wrap(top, demand) {
                top = batch;
            }
            top
        }
    }

    /// Plan nodes that evaluate their own target list, where we may change it.
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
                | T_Group
                | T_WindowAgg => true,
                // A Result with no input returns one row: nothing to read ahead.
                T_Result => !(*plan).lefttree.is_null(),
                T_CustomScan => node::is_batch((plan as *mut pg_sys::CustomScan).cast()),
                _ => false,
            }
        }
    }

    /// Our kernel for `funcid`, if the function is one of ours.
    fn kernel(&mut self, funcid: pg_sys::Oid) -> Option<Kernel> {
        *self.kernels.entry(funcid).or_insert_with(|| Kernel::of_function(funcid))
    }

    /// `node` if it is a call of one of our functions.
    unsafe fn ai_call(&mut self, node: *mut pg_sys::Node) -> Option<(Kernel, *mut pg_sys::FuncExpr)> {
        // SAFETY: a valid expression node.
        unsafe {
            if node.is_null() || tag(node.cast()) != pg_sys::NodeTag::T_FuncExpr {
                return None;
            }
            let f = node as *mut pg_sys::FuncExpr;
            if (*f).funcretset {
                return None;
            }
            self.kernel((*f).funcid).map(|k| (k, f))
        }
    }

    /// The expression children through which evaluation is unconditional: a node of these
    /// kinds evaluates every one of them whenever it is evaluated itself. None: not such a node.
    unsafe fn spine_children(node: *mut pg_sys::Node) -> Option<Vec<*mut *mut pg_sys::Node>> {
        use pg_sys::NodeTag::*;
        // SAFETY: a valid expression node of the tag it carries; the pointers are to its fields.
        unsafe {
            let args = |list: *mut pg_sys::List| -> Vec<*mut *mut pg_sys::Node> {
                if list.is_null() {
                    return Vec::new();
                }
                (0..(*list).length as usize)
                    .map(|i| std::ptr::addr_of_mut!((*(*list).elements.add(i)).ptr_value).cast())
                    .collect()
            };
            Some(match tag(node.cast()) {
                T_FuncExpr if !(*(node as *mut pg_sys::FuncExpr)).funcretset => {
                    args((*(node as *mut pg_sys::FuncExpr)).args)
                }
                T_OpExpr | T_DistinctExpr | T_NullIfExpr if !(*(node as *mut pg_sys::OpExpr)).opretset => {
                    args((*(node as *mut pg_sys::OpExpr)).args)
                }
                T_RelabelType => {
                    vec![std::ptr::addr_of_mut!((*(node as *mut pg_sys::RelabelType)).arg).cast()]
                }
                T_CoerceViaIO => {
                    vec![std::ptr::addr_of_mut!((*(node as *mut pg_sys::CoerceViaIO)).arg).cast()]
                }
                T_CoerceToDomain => {
                    vec![std::ptr::addr_of_mut!((*(node as *mut pg_sys::CoerceToDomain)).arg).cast()]
                }
                T_CollateExpr => {
                    vec![std::ptr::addr_of_mut!((*(node as *mut pg_sys::CollateExpr)).arg).cast()]
                }
                T_FieldSelect => {
                    vec![std::ptr::addr_of_mut!((*(node as *mut pg_sys::FieldSelect)).arg).cast()]
                }
                T_ArrayExpr => args((*(node as *mut pg_sys::ArrayExpr)).elements),
                T_RowExpr => args((*(node as *mut pg_sys::RowExpr)).args),
                _ => return None,
            })
        }
    }

    /// Whether an AI call is reachable from `node` through unconditional evaluation.
    unsafe fn has_call(&mut self, node: *mut pg_sys::Node) -> bool {
        // SAFETY: a valid expression tree.
        unsafe {
            if node.is_null() {
                return false;
            }
            if self.ai_call(node).is_some() {
                return true;
            }
            match Self::spine_children(node) {
                Some(kids) => kids.into_iter().any(|k| self.has_call(*k)),
                None => false,
            }
        }
    }

    /// A call we can batch at this level: ours, with no call of ours evaluated inside its
    /// arguments (those come first, one level down).
    unsafe fn ready_call(&mut self, node: *mut pg_sys::Node) -> Option<Kernel> {
        // SAFETY: a valid expression tree.
        unsafe {
            let (kernel, f) = self.ai_call(node)?;
            let args = list_ptrs((*f).args);
            (!args.into_iter().any(|a| self.has_call(a.cast()))).then_some(kernel)
        }
    }

    /// Whether a ready call is reachable from `node` through unconditional evaluation.
    unsafe fn has_ready(&mut self, node: *mut pg_sys::Node) -> bool {
        // SAFETY: a valid expression tree.
        unsafe {
            if node.is_null() {
                return false;
            }
            if self.ready_call(node).is_some() {
                return true;
            }
            match Self::spine_children(node) {
                Some(kids) => kids.into_iter().any(|k| self.has_ready(*k)),
                None => false,
            }
        }
    }

    /// Puts an AI Batch node above `plan` for the calls ready at this level, or None if
    /// its target list has none.
    unsafe fn wrap(&mut self, plan: *mut pg_sys::Plan, demand: Demand) -> Option<*mut pg_sys::Plan> {
        // SAFETY (whole function): a valid plan node; everything is allocated in the
        // planner's memory context like the plan itself.
        unsafe {
            let tlist = list_ptrs((*plan).targetlist);
            if !tlist.iter().any(|tle| self.has_ready((*(*tle as *mut pg_sys::TargetEntry)).expr.cast())) {
                return None;
            }
            let mut split = Split { below: Vec::new(), calls: Vec::new() };
            let mut above = Vec::with_capacity(tlist.len());
            for tle in tlist {
                let tle = tle as *mut pg_sys::TargetEntry;
                let copy = pg_sys::flatCopyTargetEntry(tle);
                (*copy).expr = self.split((*tle).expr.cast(), &mut split).cast();
                above.push(copy.cast());
            }
            (*plan).targetlist = list_of(split.below.iter().enumerate().map(|(i, e)| {
                pg_sys::makeTargetEntry(*e, (i + 1) as i16, std::ptr::null_mut(), false).cast()
            }));
            let scan_tlist = list_of(split.calls.iter().enumerate().map(|(i, (_, call))| {
                pg_sys::makeTargetEntry((*call).cast(), (i + 1) as i16, std::ptr::null_mut(), false).cast()
            }));
            let id = self.next_id;
            self.next_id += 1;
            Some(node::make_plan(plan, list_of(above), scan_tlist, demand, id))
        }
    }

    /// `expr` as the AI Batch node evaluates it: ready calls become its answers (INDEX_VAR),
    /// subtrees without them become columns of the node below (OUTER_VAR), and the spine
    /// between is copied.
    unsafe fn split(&mut self, expr: *mut pg_sys::Node, s: &mut Split) -> *mut pg_sys::Node {
        // SAFETY: a valid expression tree; copies are made in the current memory context.
        unsafe {
            if expr.is_null() {
                return expr;
            }
            if tag(expr.cast()) == pg_sys::NodeTag::T_Const {
                return pg_sys::copyObjectImpl(expr.cast()).cast();
            }
            if let Some(kernel) = self.ready_call(expr) {
                let call = pg_sys::copyObjectImpl(expr.cast()) as *mut pg_sys::FuncExpr;
                let args = list_ptrs((*call).args);
                (*call).args = list_of(args.into_iter().map(|a| {
                    let a = a as *mut pg_sys::Node;
                    if tag(a.cast()) == pg_sys::NodeTag::T_Const {
                        a.cast()
                    } else {
                        s.column_for(a).cast()
                    }
                }));
                s.calls.push((kernel, call));
                let var = pg_sys::makeVar(
                    pg_sys::INDEX_VAR,
                    s.calls.len() as i16,
                    (*call).funcresulttype,
                    -1,
                    (*call).funccollid,
                    0,
                );
                return var.cast();
            }
            if self.has_ready(expr) {
                let copy = pg_sys::copyObjectImpl(expr.cast()) as *mut pg_sys::Node;
                if let Some(kids) = Self::spine_children(copy) {
                    for kid in kids {
                        *kid = self.split(*kid, s);
                    }
                }
                return copy;
            }
            s.column_for(expr).cast()
        }
    }
}

/// What a target list split into.
struct Split {
    /// The new target list of the node below.
    below: Vec<*mut pg_sys::Expr>,
    /// The calls the AI Batch node makes, with their arguments as columns of `below`.
    calls: Vec<(Kernel, *mut pg_sys::FuncExpr)>,
}

impl Split {
    /// An OUTER_VAR for `expr` as a column of the node below (a Var already there is reused;
    /// nothing else is, so a volatile expression is evaluated as often as before).
    unsafe fn column_for(&mut self, expr: *mut pg_sys::Node) -> *mut pg_sys::Var {
        // SAFETY: a valid expression tree.
        unsafe {
            let is_var = tag(expr.cast()) == pg_sys::NodeTag::T_Var;
            let found = is_var
                .then(|| self.below.iter().position(|e| pg_sys::equal((*e).cast(), expr.cast())))
                .flatten();
            let index = match found {
                Some(i) => i,
                None => {
                    self.below.push(expr.cast());
                    self.below.len() - 1
                }
            };
            pg_sys::makeVar(
                pg_sys::OUTER_VAR,
                (index + 1) as i16,
                pg_sys::exprType(expr),
                pg_sys::exprTypmod(expr),
                pg_sys::exprCollation(expr),
                0,
            )
        }
    }
}
