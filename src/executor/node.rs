//! The AI Batch executor node: reads its child's rows ahead, keeps their AI calls in flight,
//! and returns the rows in order with their answers (see `executor`'s module doc).
//!
//! Its Rust state lives in a Box that the node points to. The executor's memory can vanish
//! without `EndCustomScan` (an ERROR anywhere aborts the query), so a reset callback on the
//! query's memory context drops the Box too, which drops every request still in flight.

use super::capture;
use super::carry::{self, Call, Carry, Taken, CARRIED};
use super::plan::{list_of, list_ptrs, Demand};
use crate::answers;
use crate::backend::{self, Flight, Target};
use crate::catalog;
use crate::entry::{guard, Location};
use crate::functions::calls::{self, Answer, Args, Finish, Input, Kernel, ModelLess, Prepared};
use bailian_core::answers::AnswerKey;
use bailian_core::client::embed_each;
use bailian_core::meter::Served;
use bailian_core::providers::{ChatRequest, EmbedInput, EmbeddingModel};
use bailian_core::registry::Task;
use bailian_core::AiError;
use pgrx::pg_sys;
use std::collections::{HashMap, VecDeque};
use std::ffi::{c_void, CString};
use std::sync::Arc;

struct ScanMethods(pg_sys::CustomScanMethods);
// SAFETY: immutable after initialisation; PostgreSQL only reads it, on the backend's thread.
unsafe impl Sync for ScanMethods {}
struct ExecMethods(pg_sys::CustomExecMethods);
// SAFETY: as above.
unsafe impl Sync for ExecMethods {}

static SCAN_METHODS: ScanMethods = ScanMethods(pg_sys::CustomScanMethods {
    CustomName: c"AI Batch".as_ptr(),
    CreateCustomScanState: Some(create_state),
});

static EXEC_METHODS: ExecMethods = ExecMethods(pg_sys::CustomExecMethods {
    CustomName: c"AI Batch".as_ptr(),
    BeginCustomScan: Some(begin),
    ExecCustomScan: Some(exec),
    EndCustomScan: Some(end),
    ReScanCustomScan: Some(rescan),
    MarkPosCustomScan: None,
    RestrPosCustomScan: None,
    EstimateDSMCustomScan: None,
    InitializeDSMCustomScan: None,
    ReInitializeDSMCustomScan: None,
    InitializeWorkerCustomScan: None,
    ShutdownCustomScan: None,
    ExplainCustomScan: Some(explain),
});

pub fn scan_methods() -> *const pg_sys::CustomScanMethods {
    &SCAN_METHODS.0
}

/// Whether `cscan` is one of our nodes.
pub unsafe fn is_batch(cscan: *mut pg_sys::CustomScan) -> bool {
    // SAFETY: a valid CustomScan.
    unsafe { std::ptr::eq((*cscan).methods, &SCAN_METHODS.0) }
}

/// A new AI Batch plan node above `child`.
pub unsafe fn make_plan(
    child: *mut pg_sys::Plan,
    tlist: *mut pg_sys::List,
    scan_tlist: *mut pg_sys::List,
    demand: Demand,
    id: i32,
    role: Role,
) -> *mut pg_sys::Plan {
    // SAFETY: palloc0 gives a zeroed node in the planner's context; the fields set are the
    // ones a CustomScan plan needs after set_plan_references.
    unsafe {
        let cs = pg_sys::palloc0(std::mem::size_of::<pg_sys::CustomScan>()) as *mut pg_sys::CustomScan;
        let plan = &mut (*cs).scan.plan;
        plan.type_ = pg_sys::NodeTag::T_CustomScan;
        plan.startup_cost = (*child).startup_cost;
        plan.total_cost = (*child).total_cost;
        plan.plan_rows = (*child).plan_rows;
        plan.plan_width = (*child).plan_width;
        plan.parallel_aware = false;
        plan.parallel_safe = false;
        plan.plan_node_id = id;
        plan.targetlist = tlist;
        // The child is the outer plan (not in custom_plans) so that EXPLAIN resolves the
        // OUTER_VAR columns through it and changed parameters reach it on rescans.
        plan.lefttree = child;
        plan.extParam = pg_sys::bms_copy((*child).extParam);
        plan.allParam = pg_sys::bms_copy((*child).allParam);
        // disabled_nodes stays 0: see plan::recount_disabled.
        (*cs).scan.scanrelid = 0;
        (*cs).flags = 0;
        (*cs).custom_scan_tlist = scan_tlist;
        (*cs).custom_private = Private { demand, capture: false, role, filters: 0 }.encode();
        (*cs).methods = &SCAN_METHODS.0;
        cs.cast()
    }
}

/// What an AI Batch node computes, for EXPLAIN and for how it reads ahead.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Calls of the target list of the node below.
    Target,
    /// Calls of the n-th AI qual (1-based) of the node below, whose rows it filters.
    Filter(i32),
    /// Calls in the arguments and FILTERs of the aggregates of the node above.
    Aggregate,
    /// Calls in the arguments of the window functions of the node above.
    Window,
}

/// The node's settings, kept in the plan (custom_private, as Integers, so plans copy).
struct Private {
    demand: Demand,
    /// A job's node (see `capture`).
    capture: bool,
    role: Role,
    /// How many AI quals the chain of filter nodes this one belongs to has.
    filters: i32,
}

impl Private {
    unsafe fn encode(&self) -> *mut pg_sys::List {
        let (kind, bound) = self.demand.encode();
        let (role, ordinal) = match self.role {
            Role::Target => (0, 0),
            Role::Filter(n) => (1, n),
            Role::Aggregate => (2, 0),
            Role::Window => (3, 0),
        };
        let ints = [kind, bound, i32::from(self.capture), role, ordinal, self.filters];
        // SAFETY: makeInteger allocates in the current memory context.
        unsafe { list_of(ints.map(|i| pg_sys::makeInteger(i).cast::<c_void>())) }
    }

    unsafe fn decode(cscan: *mut pg_sys::CustomScan) -> Private {
        // SAFETY: a node of ours, whose custom_private `encode` made.
        unsafe {
            let ints: Vec<i32> = list_ptrs((*cscan).custom_private)
                .into_iter()
                .map(|p| (*(p as *mut pg_sys::Integer)).ival)
                .collect();
            let int = |i: usize| ints.get(i).copied().unwrap_or(0);
            Private {
                demand: Demand::decode(int(0), int(1)),
                capture: int(2) == 1,
                role: match int(3) {
                    1 => Role::Filter(int(4)),
                    2 => Role::Aggregate,
                    3 => Role::Window,
                    _ => Role::Target,
                },
                filters: int(5),
            }
        }
    }
}

/// The ordinal of the AI qual `plan` filters on if it is a filtering AI Batch node, else 0.
pub unsafe fn filter_ordinal(plan: *mut pg_sys::Plan) -> i32 {
    // SAFETY: a valid plan node; a CustomScan's methods say whether it is ours.
    unsafe {
        if (*plan).type_ != pg_sys::NodeTag::T_CustomScan || !is_batch(plan.cast()) {
            return 0;
        }
        match Private::decode(plan.cast()).role {
            Role::Filter(n) => n,
            _ => 0,
        }
    }
}

/// Tells each filtering AI Batch node in the chain from `top` down how many AI quals the
/// chain has (for EXPLAIN's "AI Filter: 1 of 2").
pub unsafe fn number_filters(top: *mut pg_sys::Plan) {
    // SAFETY: a valid plan tree, in the planner's memory context.
    unsafe {
        let mut chain = Vec::new();
        let mut p = top;
        while !p.is_null() && (*p).type_ == pg_sys::NodeTag::T_CustomScan && is_batch(p.cast()) {
            chain.push(p);
            p = (*p).lefttree;
        }
        let filters = chain.iter().map(|p| filter_ordinal(*p)).max().unwrap_or(0);
        for p in chain {
            let cscan = p as *mut pg_sys::CustomScan;
            let mut private = Private::decode(cscan);
            if matches!(private.role, Role::Filter(_)) {
                private.filters = filters;
                (*cscan).custom_private = private.encode();
            }
        }
    }
}

/// Makes an AI Batch plan node one that captures its calls' errors for a job (see
/// `capture`), reading ahead its whole window.
pub unsafe fn set_capture(cscan: *mut pg_sys::CustomScan) {
    // SAFETY: one of our nodes, in the planner's memory context.
    unsafe {
        let mut private = Private::decode(cscan);
        private.demand = Demand::All;
        private.capture = true;
        (*cscan).custom_private = private.encode();
    }
}

/// The executor node: PostgreSQL's part, then ours.
#[repr(C)]
struct BatchState {
    css: pg_sys::CustomScanState,
    state: *mut Batch,
}

#[pgrx::pg_guard]
unsafe extern "C-unwind" fn create_state(_cscan: *mut pg_sys::CustomScan) -> *mut pg_sys::Node {
    // SAFETY: a zeroed node of our size in the executor's context, tagged as PostgreSQL
    // expects; `state` stays null until BeginCustomScan.
    unsafe {
        let node = pg_sys::palloc0(std::mem::size_of::<BatchState>()) as *mut BatchState;
        (*node).css.ss.ps.type_ = pg_sys::NodeTag::T_CustomScanState;
        (*node).css.methods = &EXEC_METHODS.0;
        node.cast()
    }
}

/// Where an argument of a call comes from.
#[derive(Clone, Copy)]
enum Source {
    Const(Option<pg_sys::Datum>),
    /// 0-based column of the child's row.
    Column(usize),
    /// An expression over the child's row (a conditional call's argument, evaluated only
    /// where its guard holds).
    Expr(*mut pg_sys::ExprState),
}

/// One call the node makes.
struct Site {
    kernel: Kernel,
    args: Vec<Source>,
    /// Where the call is conditional: the condition (over the child's row) under which a
    /// row-by-row run makes it. Elsewhere its answer is NULL, which nothing reads.
    guard: Option<*mut pg_sys::ExprState>,
}

/// A call's arguments for one row, evaluated.
struct RowArgs(Vec<Option<pg_sys::Datum>>);

impl Args for RowArgs {
    fn datum(&self, n: usize) -> Option<pg_sys::Datum> {
        self.0.get(n).copied().flatten()
    }
}

impl Site {
    /// Whether the call is to be made for the row in the expression context's outer tuple,
    /// and if so its arguments.
    ///
    /// SAFETY: the context's outer tuple is the child's current row, deformed by
    /// slot_getallattrs, in which every column the plan refers to exists.
    unsafe fn row_args(
        &self,
        slot: *mut pg_sys::TupleTableSlot,
        econtext: *mut pg_sys::ExprContext,
    ) -> Option<RowArgs> {
        // SAFETY: see above; expressions are evaluated in the per-tuple memory.
        unsafe {
            if let Some(guard) = self.guard {
                let mut isnull = false;
                let holds = pg_sys::ExecEvalExprSwitchContext(guard, econtext, &mut isnull);
                if isnull || holds.value() == 0 {
                    return None;
                }
            }
            Some(RowArgs(
                self.args
                    .iter()
                    .map(|source| match *source {
                        Source::Const(d) => d,
                        Source::Column(i) => {
                            if *(*slot).tts_isnull.add(i) {
                                None
                            } else {
                                Some(*(*slot).tts_values.add(i))
                            }
                        }
                        Source::Expr(state) => {
                            let mut isnull = false;
                            let d = pg_sys::ExecEvalExprSwitchContext(state, econtext, &mut isnull);
                            (!isnull).then_some(d)
                        }
                    })
                    .collect(),
            ))
        }
    }
}

/// A row read ahead: its copy, and its calls' answers as they arrive.
struct Row {
    tuple: pg_sys::MinimalTuple,
    results: Vec<Option<Result<Answer, AiError>>>,
    /// What the row holds, as counted against the window's budget (see `Batch::fill`).
    bytes: u64,
}

/// What one request answers: (row sequence number, call site, answer).
pub(super) type Answers = Vec<(u64, usize, Result<Answer, AiError>)>;

/// A request started but not sent yet, with the calls it answers: (row, call site).
struct Queued {
    calls: Vec<(u64, usize)>,
    request: std::pin::Pin<Box<dyn std::future::Future<Output = Answers>>>,
}

/// Embedding inputs of one model waiting to be sent together.
struct Pack {
    target: Arc<Target>,
    model: Arc<EmbeddingModel>,
    members: Vec<(u64, usize, Input)>,
    /// Each member's answer key, when answers are shared (`crate::answers`).
    keys: Vec<Option<AnswerKey>>,
}

/// Calls that wait for one request: its answer key, the call site where the answer's use
/// depends on it (else usize::MAX), and what the call makes of an answer (`Finish::class`; 0
/// for embeddings), so that a waiter is given exactly what its own request would have given.
type Group = (AnswerKey, usize, u8);

/// The target of the request a group waits for, and the calls waiting: (row, site).
type Waiting = (Arc<Target>, Vec<(u64, usize)>);

struct Batch {
    sites: Vec<Site>,
    demand: Demand,
    role: Role,
    /// For a filter node, the AI quals of its chain.
    filters: i32,
    /// Whether the node filters its rows (evaluates quals): then rows out are not rows in.
    filtering: bool,
    /// `pg_bailian.batch_execution` when the query started; off: each call row by row.
    batching: bool,
    /// A job's node: a call's error goes to `capture::record` and the call gives NULL.
    capture: bool,
    /// Row by row: each call's expression (the function called through fmgr).
    passthrough: Vec<*mut pg_sys::ExprState>,
    concurrency: usize,
    window_max: usize,
    read_ahead_limit: usize,
    window: VecDeque<Row>,
    /// The bytes the window's rows hold, and the most they may (half of
    /// `pg_bailian.max_batch_memory`, read when the query started).
    window_bytes: u64,
    window_budget: u64,
    /// Rows read from the child, and returned, since the start or the last rescan.
    read: u64,
    returned: u64,
    /// Rows the node's quals rejected since the start or the last rescan.
    rejected: u64,
    /// Calls made, and calls a guard said a row-by-row run would not make (EXPLAIN ANALYZE).
    calls: u64,
    skipped: u64,
    child_done: bool,
    flight: Flight<Answers>,
    in_flight: usize,
    queued: VecDeque<Queued>,
    /// A capturing node's: what it took up of the previous node's read-ahead (`carry`).
    taken: Option<Taken>,
    /// A capturing node's: the carry's signature of its calls and rows.
    signature: String,
    /// Requests started since the runtime last ran (not on the wire yet).
    unsent: bool,
    packs: HashMap<String, Pack>,
    /// Calls waiting for an identical call's request in flight: its target and their (row,
    /// site).
    waiting: HashMap<Group, Waiting>,
    /// The group of each call whose request others may wait for, by (row, site).
    sending: HashMap<(u64, usize), Group>,
    /// Answers a pack found in the answer cache, given to their rows at the next `next`.
    cached: Answers,
    requests: u64,
    /// The backend's AI totals when the node started: EXPLAIN ANALYZE shows what was spent
    /// since (including other AI work the statement did meanwhile, such as a second node).
    started: crate::shared::accounting::Totals,
    rows_cxt: pg_sys::MemoryContext,
    outer_slot: *mut pg_sys::TupleTableSlot,
    /// The copy the outer slot shows now, freed when the next row replaces it.
    current: pg_sys::MinimalTuple,
}

const WHERE: Location = Location { function: "AI Batch\0", file: concat!(file!(), "\0"), line: line!() };

unsafe fn batch_of<'a>(node: *mut pg_sys::CustomScanState) -> &'a mut Batch {
    // SAFETY: called between begin and end (or the reset callback), when state is set.
    unsafe { &mut *(*(node as *mut BatchState)).state }
}

/// Drops the Rust state with the executor's memory, for an error that skipped `end`.
#[pgrx::pg_guard]
unsafe extern "C-unwind" fn forget(arg: *mut c_void) {
    let node = arg as *mut BatchState;
    // SAFETY: the callback is registered on the context that holds the node, and runs before
    // that memory is freed; dropping the state touches no PostgreSQL memory.
    unsafe {
        let state = std::mem::replace(&mut (*node).state, std::ptr::null_mut());
        if !state.is_null() {
            drop(Box::from_raw(state));
            backend::settle();
        }
    }
}

#[pgrx::pg_guard]
unsafe extern "C-unwind" fn begin(
    node: *mut pg_sys::CustomScanState,
    estate: *mut pg_sys::EState,
    eflags: i32,
) {
    // SAFETY: PostgreSQL's arguments for our node; see each step.
    unsafe {
        let cscan = (*node).ss.ps.plan as *mut pg_sys::CustomScan;
        if eflags as u32 & (pg_sys::EXEC_FLAG_BACKWARD | pg_sys::EXEC_FLAG_MARK) != 0 {
            pgrx::error!(
                "AI Batch cannot scan backward or mark and restore (a plan pg_bailian should not have made)"
            );
        }
        let child = pg_sys::ExecInitNode((*cscan).scan.plan.lefttree, estate, eflags);
        (*node).ss.ps.lefttree = child;
        let private = Private::decode(cscan);
        let (demand, capture) = (private.demand, private.capture);
        let mut sites = Vec::new();
        let mut passthrough = Vec::new();
        let parent: *mut pg_sys::PlanState = &mut (*node).ss.ps;
        for tle in list_ptrs((*cscan).custom_scan_tlist) {
            let entry = (*(tle as *mut pg_sys::TargetEntry)).expr;
            let (f, guard) = super::cut::guarded(entry);
            let Some(kernel) = Kernel::of_function((*f).funcid) else {
                pgrx::error!("AI Batch: function {:?} is not a pg_bailian AI function", (*f).funcid);
            };
            let args = list_ptrs((*f).args)
                .into_iter()
                .map(|a| {
                    let a = a as *mut pg_sys::Node;
                    match (*a).type_ {
                        pg_sys::NodeTag::T_Const => {
                            let c = a as *mut pg_sys::Const;
                            Source::Const((!(*c).constisnull).then_some((*c).constvalue))
                        }
                        pg_sys::NodeTag::T_Var
                            if (*(a as *mut pg_sys::Var)).varno as i64 == pg_sys::OUTER_VAR as i64 =>
                        {
                            Source::Column(((*(a as *mut pg_sys::Var)).varattno - 1) as usize)
                        }
                        _ => Source::Expr(pg_sys::ExecInitExpr(a.cast(), parent)),
                    }
                })
                .collect();
            let guard = guard.map(|g| pg_sys::ExecInitExpr(g, parent));
            sites.push(Site { kernel, args, guard });
            passthrough.push(pg_sys::ExecInitExpr(entry, parent));
        }
        // A job's query is batched whatever the session's setting: the column procedures
        // always ran their requests concurrently.
        let batching = crate::guc::batch_execution() || capture;
        let concurrency = crate::guc::max_concurrency();
        let read_ahead_limit = crate::guc::max_read_ahead();
        let pack = sites.iter().map(pack_hint).max().unwrap_or(1);
        let query_cxt = (*estate).es_query_cxt;
        let rows_cxt = pg_sys::AllocSetContextCreateInternal(
            query_cxt,
            c"pg_bailian AI Batch rows".as_ptr(),
            0,
            8 * 1024,
            8 * 1024 * 1024,
        );
        let outer_slot = pg_sys::ExecInitExtraTupleSlot(
            estate,
            pg_sys::ExecGetResultType(child),
            &raw const pg_sys::TTSOpsMinimalTuple,
        );
        let batch = Batch {
            sites,
            demand,
            role: private.role,
            filters: private.filters,
            filtering: !(*cscan).scan.plan.qual.is_null(),
            batching,
            capture,
            passthrough,
            concurrency,
            window_max: (concurrency * pack * 2).clamp(1, read_ahead_limit),
            read_ahead_limit,
            window: VecDeque::new(),
            window_bytes: 0,
            window_budget: crate::guc::window_budget(),
            read: 0,
            returned: 0,
            rejected: 0,
            calls: 0,
            skipped: 0,
            child_done: false,
            flight: Flight::new(),
            in_flight: 0,
            queued: VecDeque::new(),
            taken: None,
            signature: String::new(),
            unsent: false,
            packs: HashMap::new(),
            waiting: HashMap::new(),
            sending: HashMap::new(),
            cached: Vec::new(),
            requests: 0,
            started: crate::shared::accounting::totals(),
            rows_cxt,
            outer_slot,
            current: std::ptr::null_mut(),
        };
        let callback =
            pg_sys::MemoryContextAlloc(query_cxt, std::mem::size_of::<pg_sys::MemoryContextCallback>())
                as *mut pg_sys::MemoryContextCallback;
        (*callback).func = Some(forget);
        (*callback).arg = node.cast();
        (*callback).next = std::ptr::null_mut();
        (*(node as *mut BatchState)).state = Box::into_raw(Box::new(batch));
        pg_sys::MemoryContextRegisterResetCallback(query_cxt, callback);
        if capture {
            let batch = batch_of(node);
            batch.signature = carry::signature(cscan, pg_sys::ExecGetResultType(child));
            if let Some((flight, in_flight, window_max, taken)) =
                carry::take((*cscan).scan.plan.plan_node_id, &batch.signature)
            {
                batch.flight = flight;
                batch.in_flight = in_flight;
                batch.window_max = batch.window_max.max(window_max);
                batch.taken = Some(taken);
            }
        }
    }
}

/// Inputs per request of an embedding call's model, when the plan names it as a constant;
/// 1 for chat calls (and for what cannot be known before the rows come).
fn pack_hint(site: &Site) -> usize {
    let name = match site.kernel {
        Kernel::Embed | Kernel::EmbedImageUri | Kernel::EmbedImageBytes | Kernel::EmbedImageFormat => {
            let Some(Source::Const(Some(datum))) = site.args.first() else { return 1 };
            // SAFETY: argument 0 of every embedding function is the model name, a text constant.
            let Some(name) = (unsafe { <String as pgrx::datum::FromDatum>::from_datum(*datum, false) })
            else {
                return 1;
            };
            name
        }
        // The model-less ai_embed(content): its default model, as its calls will find it.
        Kernel::ModelLess(ModelLess::Embed) => match catalog::default_model("ai_embed") {
            Ok(name) => name,
            Err(_) => return 1,
        },
        _ => return 1,
    };
    catalog::load_for(&name, site.kernel.sql_name(), &[Task::Embedding])
        .map(|d| d.embedding_model().per_request.max(1))
        .unwrap_or(1)
}

#[pgrx::pg_guard]
unsafe extern "C-unwind" fn exec(node: *mut pg_sys::CustomScanState) -> *mut pg_sys::TupleTableSlot {
    // SAFETY: between begin and end; errors are raised by `guard` from a frame owning nothing.
    unsafe {
        guard(&WHERE, || {
            let batch = batch_of(node);
            if batch.batching {
                batch.next(node)
            } else {
                loop {
                    if let Ok(slot) = batch.row_by_row(node) {
                        return Ok(slot);
                    }
                }
            }
        })
    }
}

#[pgrx::pg_guard]
unsafe extern "C-unwind" fn end(node: *mut pg_sys::CustomScanState) {
    // SAFETY: PostgreSQL ends the node once; the state is dropped before the memory it
    // points into, and the child is ended as every node ends its own.
    unsafe {
        let state = std::mem::replace(&mut (*(node as *mut BatchState)).state, std::ptr::null_mut());
        if !state.is_null() {
            let mut batch = Box::from_raw(state);
            if batch.capture {
                capture::note_round(batch.window_max / 2);
                let id = (*(*node).ss.ps.plan).plan_node_id;
                carry::keep(id, batch.carry());
            }
            pg_sys::ExecClearTuple(batch.outer_slot);
            pg_sys::MemoryContextDelete(batch.rows_cxt);
            drop(batch);
            backend::settle();
        }
        pg_sys::ExecEndNode((*node).ss.ps.lefttree);
    }
}

#[pgrx::pg_guard]
unsafe extern "C-unwind" fn rescan(node: *mut pg_sys::CustomScanState) {
    // SAFETY: between begin and end.
    unsafe {
        let batch = batch_of(node);
        batch.abandon();
        pg_sys::ExecClearTuple(batch.outer_slot);
        pg_sys::MemoryContextReset(batch.rows_cxt);
        batch.current = std::ptr::null_mut();
        batch.read = 0;
        batch.returned = 0;
        batch.rejected = 0;
        batch.child_done = false;
        let child = (*node).ss.ps.lefttree;
        // With changed parameters the child rescans itself on its next row.
        if (*child).chgParam.is_null() {
            pg_sys::ExecReScan(child);
        }
    }
}

#[pgrx::pg_guard]
unsafe extern "C-unwind" fn explain(
    node: *mut pg_sys::CustomScanState,
    ancestors: *mut pg_sys::List,
    es: *mut pg_sys::ExplainState,
) {
    // SAFETY: between begin and end; the strings outlive the calls that copy them.
    unsafe {
        let batch = batch_of(node);
        let text = |label: &std::ffi::CStr, value: String| {
            let value = CString::new(value).unwrap_or_default();
            pg_sys::ExplainPropertyText(label.as_ptr(), value.as_ptr(), es);
        };
        text(c"AI Calls", batch.sites.iter().map(|s| s.kernel.sql_name()).collect::<Vec<_>>().join(", "));
        text(
            c"AI Calls For",
            match batch.role {
                Role::Target => "output columns".to_string(),
                Role::Filter(n) => format!(
                    "filter {n} of {} (cheaper quals first; a row it rejects reaches no later one)",
                    batch.filters.max(n)
                ),
                Role::Aggregate => "aggregate arguments and FILTERs of the node above".to_string(),
                Role::Window => "window function arguments of the node above".to_string(),
            },
        );
        if batch.sites.iter().any(|s| s.guard.is_some()) {
            text(c"Conditional Calls", "made only for rows whose conditions call for them".into());
        }
        // The calls as expressions over the input, conditions included, as EXPLAIN deparses
        // a target list (VERBOSE shows them again as the node's Output).
        let plan = (*node).ss.ps.plan;
        let context = pg_sys::set_deparse_context_plan((*es).deparse_cxt, plan, ancestors);
        let calls: Vec<String> = list_ptrs((*(plan as *mut pg_sys::CustomScan)).custom_scan_tlist)
            .into_iter()
            .map(|tle| {
                let expr = (*(tle as *mut pg_sys::TargetEntry)).expr;
                let shown = pg_sys::deparse_expression(expr.cast(), context, (*es).verbose, false);
                std::ffi::CStr::from_ptr(shown).to_string_lossy().into_owned()
            })
            .collect();
        text(c"AI Call Expressions", calls.join("; "));
        if batch.batching {
            text(
                c"Read-Ahead",
                format!("up to {} rows, {} requests in flight", batch.window_max, batch.concurrency),
            );
        } else {
            text(c"Read-Ahead", "off, calls run row by row (pg_bailian.batch_execution is off)".into());
        }
        if batch.batching {
            text(
                c"Read-Ahead Memory",
                format!(
                    "up to {} (pg_bailian.max_batch_memory / 2)",
                    bailian_core::error::show_bytes(batch.window_budget)
                ),
            );
        }
        if let Demand::AtMost(n) = batch.demand {
            pg_sys::ExplainPropertyInteger(c"Row Limit".as_ptr(), std::ptr::null(), n as i64, es);
        }
        if (*es).analyze {
            pg_sys::ExplainPropertyInteger(c"Requests".as_ptr(), std::ptr::null(), batch.requests as i64, es);
            pg_sys::ExplainPropertyInteger(c"Calls".as_ptr(), std::ptr::null(), batch.calls as i64, es);
            if batch.sites.iter().any(|s| s.guard.is_some()) {
                pg_sys::ExplainPropertyInteger(
                    c"Calls Skipped".as_ptr(),
                    std::ptr::null(),
                    batch.skipped as i64,
                    es,
                );
            }
            let spent = crate::shared::accounting::totals().since(&batch.started);
            let int = |label: &std::ffi::CStr, v: u64| {
                pg_sys::ExplainPropertyInteger(
                    label.as_ptr(),
                    std::ptr::null(),
                    v.min(i64::MAX as u64) as i64,
                    es,
                )
            };
            int(c"HTTP Requests", spent.requests);
            int(c"Retries", spent.retries);
            int(c"Rate Limited", spent.throttled);
            int(c"Prompt Tokens", spent.prompt_tokens);
            int(c"Completion Tokens", spent.completion_tokens);
            text(
                c"Cost",
                if spent.cost_unknown {
                    format!(
                        "at least {} yuan (a model has no price in ai_prices)",
                        crate::shared::accounting::yuan_text(spent.cost_nano_yuan)
                    )
                } else {
                    format!("{} yuan", crate::shared::accounting::yuan_text(spent.cost_nano_yuan))
                },
            );
        }
    }
}

impl Batch {
    /// How many rows may wait in the window now.
    fn cap(&self) -> usize {
        match self.demand {
            Demand::Unknown | Demand::Untouchable => {
                self.window_max.min((2 * self.consumed()).max(1).try_into().unwrap_or(usize::MAX))
            }
            Demand::All | Demand::AtMost(_) => self.window_max,
        }
    }

    /// Rows taken out of the window: returned or rejected.
    fn consumed(&self) -> u64 {
        self.returned + self.rejected
    }

    /// Whether another row may be read: under a LIMIT, no further than it unless the
    /// consumer asks for more (a node above may have dropped rows). A filtering node does
    /// not know how many rows the LIMIT will take from below, only how many it can still
    /// use: no more rows wait in its window than that.
    fn may_read(&self) -> bool {
        match self.demand {
            Demand::AtMost(n) if self.filtering => {
                (self.window.len() as u64) < n.saturating_sub(self.returned).max(1)
            }
            Demand::AtMost(n) => self.read < n.max(self.returned + 1),
            _ => true,
        }
    }

    /// The next row with its answers, or null at the end.
    unsafe fn next(
        &mut self,
        node: *mut pg_sys::CustomScanState,
    ) -> Result<*mut pg_sys::TupleTableSlot, AiError> {
        loop {
            // SAFETY: node is ours and live.
            unsafe { self.fill(node)? };
            if !self.cached.is_empty() {
                let cached = std::mem::take(&mut self.cached);
                self.apply(cached);
            }
            match self.window.front() {
                None => return Ok(std::ptr::null_mut()),
                Some(row) if row.results.iter().all(Option::is_some) => {
                    // SAFETY: as above.
                    if let Some(slot) = unsafe { self.emit(node)? } {
                        return Ok(slot);
                    }
                    continue;
                }
                Some(_) => {}
            }
            // The first row waits for an answer: everything read is sent, then we wait.
            self.seal_all();
            self.launch();
            let answers = self.pump(true)?;
            self.apply(answers);
            self.launch();
        }
    }

    /// Reads rows into the window and prepares their calls.
    unsafe fn fill(&mut self, node: *mut pg_sys::CustomScanState) -> Result<(), AiError> {
        // SAFETY: node is ours and live; the child's slot is valid until its next row.
        unsafe {
            let child = (*node).ss.ps.lefttree;
            let econtext = (*node).ss.ps.ps_ExprContext;
            let per_tuple = (*econtext).ecxt_per_tuple_memory;
            // A row that does not fit the memory budget waits until the rows before it are
            // returned; the first row is always read, however large.
            while !self.child_done
                && self.window.len() < self.cap()
                && self.may_read()
                && (self.window.is_empty() || self.window_bytes < self.window_budget)
            {
                let slot = pg_sys::ExecProcNode(child);
                if slot.is_null() || (*slot).tts_flags & pg_sys::TTS_FLAG_EMPTY as u16 != 0 {
                    self.child_done = true;
                    break;
                }
                let seq = self.read;
                self.read += 1;
                pg_sys::slot_getallattrs(slot);
                let old = pg_sys::MemoryContextSwitchTo(per_tuple);
                let mut results = Vec::with_capacity(self.sites.len());
                let mut failed = None;
                let mut bytes = 0u64;
                // A row the previous node of a job read ahead: its answers, and its requests
                // still in flight, are this row's (see `carry`).
                let mut carried = match self.taken.as_mut() {
                    Some(taken) if taken.any() => taken.row(&carry::print(slot), seq),
                    _ => None,
                };
                (*econtext).ecxt_outertuple = slot;
                for i in 0..self.sites.len() {
                    let call =
                        carried.as_mut().and_then(|c| c.get_mut(i)).map(|c| std::mem::replace(c, Call::Lost));
                    match call {
                        Some(Call::Arrived(answer)) => {
                            results.push(Some(answer));
                            continue;
                        }
                        Some(Call::InFlight) => {
                            results.push(None);
                            continue;
                        }
                        // Not carried, or never sent: the call is made here.
                        _ => {}
                    }
                    let Some(args) = self.sites[i].row_args(slot, econtext) else {
                        // Its guard does not hold: row by row, this call is not made.
                        self.skipped += 1;
                        results.push(Some(Ok(Answer::Null)));
                        continue;
                    };
                    self.calls += 1;
                    // Each argument is held about three times while its request waits or is
                    // in flight: decoded, in the JSON body, serialized. (One too large is
                    // refused by prepare, with its error.)
                    bytes += 3 * self.sites[i].kernel.argument_bytes(&args).unwrap_or(0) as u64;
                    let prepared = self.sites[i].kernel.prepare(&args);
                    match self.start(seq, i, prepared) {
                        Ok(result) => results.push(result),
                        Err(e) => {
                            failed = Some(e);
                            break;
                        }
                    }
                }
                if let Some(e) = failed {
                    pg_sys::MemoryContextSwitchTo(old);
                    self.abandon();
                    return Err(e);
                }
                pg_sys::MemoryContextSwitchTo(self.rows_cxt);
                let tuple = pg_sys::ExecCopySlotMinimalTuple(slot);
                pg_sys::MemoryContextSwitchTo(old);
                pg_sys::MemoryContextReset(per_tuple);
                bytes += u64::from((*tuple).t_len);
                bytes += results.iter().map(result_bytes).sum::<u64>();
                self.window_bytes += bytes;
                self.window.push_back(Row { tuple, results, bytes });
                self.launch();
            }
            Ok(())
        }
    }

    /// Queues a prepared call; its answer now if it needs no request.
    fn start(
        &mut self,
        seq: u64,
        site: usize,
        prepared: Result<Prepared, AiError>,
    ) -> Result<Option<Result<Answer, AiError>>, AiError> {
        match prepared {
            Err(AiError::Interrupted) => Err(AiError::Interrupted),
            Err(e) => Ok(Some(Err(e))),
            Ok(Prepared::Done(answer)) => Ok(Some(Ok(answer))),
            Ok(Prepared::Chat { target, request, finish }) => {
                let key = answers::chat_key(&target, &request);
                if let Some(out) = key.as_ref().and_then(|k| answers::batch::chat(&target, k, &request)) {
                    return Ok(Some(finish.settle(&target, out)));
                }
                if let Some(outcome) = answers::recall_chat(&target, key.as_ref()) {
                    return Ok(Some(finish.settle(&target, Ok(outcome))));
                }
                if let Some(key) = key.filter(|_| answers::sharing()) {
                    // Text, jsonb and audio answers are the same whichever site asked; a
                    // structured or task answer is checked by its site's own schema.
                    let class = finish.class();
                    let at = if class <= 2 { usize::MAX } else { site };
                    if self.wait((key, at, class), seq, site, &target) {
                        return Ok(None);
                    }
                }
                let client = backend::client()?;
                let request = Box::pin(chat(client, target, request, finish, seq, site, key));
                self.queued.push_back(Queued { calls: vec![(seq, site)], request });
                Ok(None)
            }
            Ok(Prepared::Rerank { target, .. } | Prepared::Similarity { target, .. })
                if answers::batch::active() =>
            {
                Ok(Some(Err(answers::batch::unbatchable(&target))))
            }
            Ok(Prepared::Rerank { target, url, query, document }) => {
                let client = backend::client()?;
                let request = Box::pin(rerank(client, target, url, query, document, seq, site));
                self.queued.push_back(Queued { calls: vec![(seq, site)], request });
                Ok(None)
            }
            Ok(Prepared::Similarity { target, model, a, b }) => {
                let client = backend::client()?;
                let request = Box::pin(similarity(client, target, model, a, b, seq, site));
                self.queued.push_back(Queued { calls: vec![(seq, site)], request });
                Ok(None)
            }
            Ok(Prepared::Embed { target, model, input }) => {
                let key = answers::embed_key(&target, &model, &input);
                if let Some(v) = key.as_ref().and_then(|k| answers::batch::vector(&target, k, &model, &input))
                {
                    return Ok(Some(target.on_error().settle(v.map(Answer::Vector))));
                }
                // The answer cache is asked for the whole pack at once, when it is sealed.
                if let Some(vector) = answers::recall_shared_vector(&target, key.as_ref()) {
                    return Ok(Some(target.on_error().settle(Ok(Answer::Vector(vector)))));
                }
                if let Some(key) = key.filter(|_| answers::sharing()) {
                    if self.wait((key, usize::MAX, 0), seq, site, &target) {
                        return Ok(None);
                    }
                }
                let per_request = model.per_request.max(1);
                if self.concurrency * per_request * 2 > self.window_max {
                    self.window_max = (self.concurrency * per_request * 2).min(self.read_ahead_limit);
                }
                // Looked up by &str: a row of a pack already open allocates no key.
                let owner = Arc::clone(&target);
                let name = owner.deployment().name.as_str();
                let full = match self.packs.get_mut(name) {
                    Some(pack) => {
                        pack.members.push((seq, site, input));
                        pack.keys.push(key);
                        pack.members.len() >= per_request
                    }
                    None => {
                        let members = vec![(seq, site, input)];
                        let keys = vec![key];
                        self.packs.insert(name.to_string(), Pack { target, model, members, keys });
                        per_request <= 1
                    }
                };
                if full {
                    if let Some(pack) = self.packs.remove(name) {
                        self.seal(pack)?;
                    }
                }
                Ok(None)
            }
        }
    }

    /// Whether the call of row `seq` waits for an identical call's request already started;
    /// if not, it is the one that sends, and identical calls after it wait for it.
    fn wait(&mut self, group: Group, seq: u64, site: usize, target: &Arc<Target>) -> bool {
        if let Some((_, calls)) = self.waiting.get_mut(&group) {
            calls.push((seq, site));
            return true;
        }
        self.waiting.insert(group, (Arc::clone(target), Vec::new()));
        self.sending.insert((seq, site), group);
        false
    }

    fn seal(&mut self, pack: Pack) -> Result<(), AiError> {
        let Some(pack) = self.answer_from_cache(pack) else { return Ok(()) };
        let client = backend::client()?;
        let calls = pack.members.iter().map(|(seq, site, _)| (*seq, *site)).collect();
        self.queued.push_back(Queued { calls, request: Box::pin(embed(client, pack)) });
        Ok(())
    }

    /// Answers the members of `pack` the answer cache has (one lookup for the pack; their
    /// answers wait in `cached` until the rows they belong to are in the window), and gives
    /// back the pack of the others, if any.
    fn answer_from_cache(&mut self, mut pack: Pack) -> Option<Pack> {
        if !answers::caches(&pack.target) {
            return Some(pack);
        }
        let keys: Vec<AnswerKey> = pack.keys.iter().flatten().copied().collect();
        let mut found = answers::cached_vectors(&pack.target, &keys);
        if found.is_empty() {
            return Some(pack);
        }
        let on_error = pack.target.on_error();
        let mut members = Vec::with_capacity(pack.members.len());
        let mut keys = Vec::with_capacity(pack.keys.len());
        for (member, key) in pack.members.into_iter().zip(pack.keys) {
            match key.and_then(|k| found.remove(&k)) {
                Some(v) => self.cached.push((member.0, member.1, on_error.settle(Ok(Answer::Vector(v))))),
                None => {
                    members.push(member);
                    keys.push(key);
                }
            }
        }
        pack.members = members;
        pack.keys = keys;
        (!pack.members.is_empty()).then_some(pack)
    }

    fn seal_all(&mut self) {
        let packs: Vec<Pack> = self.packs.drain().map(|(_, p)| p).collect();
        for pack in packs {
            // backend::client() cannot fail here: a pack exists only after a call made it.
            let _ = self.seal(pack);
        }
    }

    /// Starts queued requests while fewer than `concurrency` are in flight.
    fn launch(&mut self) {
        while self.in_flight < self.concurrency {
            let Some(Queued { request, .. }) = self.queued.pop_front() else { break };
            self.flight.push(request);
            self.in_flight += 1;
            self.requests += 1;
            self.unsent = true;
        }
    }

    fn pump(&mut self, wait: bool) -> Result<Answers, AiError> {
        self.unsent = false;
        match backend::pump(&mut self.flight, wait) {
            Ok(done) => {
                self.in_flight -= done.len();
                Ok(done.into_iter().flatten().collect())
            }
            Err(e) => {
                self.abandon();
                Err(e)
            }
        }
    }

    fn apply(&mut self, mut answers: Answers) {
        // The calls that waited for these requests get the same answers.
        let mut shared = Vec::new();
        for (seq, site, answer) in &answers {
            if seq & CARRIED != 0 {
                continue;
            }
            let Some(group) = self.sending.remove(&(*seq, *site)) else { continue };
            let Some((target, calls)) = self.waiting.remove(&group) else { continue };
            let billed = answers::billed(&group.0);
            for (row, at) in calls {
                let how = if answer.is_ok() { Served::Shared } else { Served::SharedFailure };
                target.served(how, &billed);
                shared.push((row, at, answer.clone()));
            }
        }
        answers.extend(shared);
        for (seq, site, answer) in answers {
            let (seq, answer) = if seq & CARRIED == 0 {
                (seq, answer)
            } else {
                match self.taken.as_mut().and_then(|t| t.route(seq & !CARRIED, site, answer)) {
                    Some(routed) => routed,
                    None => continue,
                }
            };
            if let Some(row) = seq.checked_sub(self.consumed()).and_then(|i| self.window.get_mut(i as usize))
            {
                let answer = Some(answer);
                let bytes = result_bytes(&answer);
                row.bytes += bytes;
                self.window_bytes += bytes;
                row.results[site] = answer;
            }
        }
    }

    /// Returns the first row of the window with its answers, or raises its first error.
    /// None: the node's quals rejected it.
    unsafe fn emit(
        &mut self,
        node: *mut pg_sys::CustomScanState,
    ) -> Result<Option<*mut pg_sys::TupleTableSlot>, AiError> {
        let Some(row) = self.window.pop_front() else { return Ok(Some(std::ptr::null_mut())) };
        self.window_bytes -= row.bytes;
        self.returned += 1;
        // SAFETY: node is ours and live; the answers' datums are made in the per-tuple
        // memory, which lives until the next row; the row's copy stays until the next one.
        unsafe {
            let econtext = (*node).ss.ps.ps_ExprContext;
            pg_sys::MemoryContextReset((*econtext).ecxt_per_tuple_memory);
            let scan = (*node).ss.ss_ScanTupleSlot;
            pg_sys::ExecClearTuple(scan);
            let old = pg_sys::MemoryContextSwitchTo((*econtext).ecxt_per_tuple_memory);
            for (i, result) in row.results.into_iter().enumerate() {
                let datum = match result {
                    Some(Ok(answer)) => answer.into_datum(),
                    Some(Err(e)) => {
                        let raised =
                            if self.capture { capture::record(self.returned - 1, e) } else { Err(e) };
                        if let Err(e) = raised {
                            pg_sys::MemoryContextSwitchTo(old);
                            self.abandon();
                            return Err(e);
                        }
                        None
                    }
                    None => None,
                };
                *(*scan).tts_values.add(i) = datum.unwrap_or(pg_sys::Datum::from(0));
                *(*scan).tts_isnull.add(i) = datum.is_none();
            }
            pg_sys::MemoryContextSwitchTo(old);
            pg_sys::ExecStoreVirtualTuple(scan);
            pg_sys::ExecStoreMinimalTuple(row.tuple, self.outer_slot, false);
            if !self.current.is_null() {
                pg_sys::pfree(self.current.cast());
            }
            self.current = row.tuple;
            (*econtext).ecxt_outertuple = self.outer_slot;
            (*econtext).ecxt_scantuple = scan;
            if self.unsent {
                // Requests started for rows read ahead go on the wire before the consumer
                // works on this row.
                let answers = self.pump(false)?;
                self.apply(answers);
                self.launch();
            }
            if !passes(node) {
                self.returned -= 1;
                self.rejected += 1;
                return Ok(None);
            }
            Ok(Some(project(node, scan)))
        }
    }

    /// Row by row: each call evaluated through its function, for the child's row.
    unsafe fn row_by_row(
        &mut self,
        node: *mut pg_sys::CustomScanState,
    ) -> Result<*mut pg_sys::TupleTableSlot, Rejected> {
        // SAFETY: node is ours and live; ExecEvalExpr raises errors as the function would.
        unsafe {
            let slot = pg_sys::ExecProcNode((*node).ss.ps.lefttree);
            if slot.is_null() || (*slot).tts_flags & pg_sys::TTS_FLAG_EMPTY as u16 != 0 {
                return Ok(std::ptr::null_mut());
            }
            let econtext = (*node).ss.ps.ps_ExprContext;
            pg_sys::MemoryContextReset((*econtext).ecxt_per_tuple_memory);
            (*econtext).ecxt_outertuple = slot;
            let scan = (*node).ss.ss_ScanTupleSlot;
            pg_sys::ExecClearTuple(scan);
            for (i, state) in self.passthrough.iter().enumerate() {
                let mut isnull = false;
                let value = pg_sys::ExecEvalExprSwitchContext(*state, econtext, &mut isnull);
                *(*scan).tts_values.add(i) = value;
                *(*scan).tts_isnull.add(i) = isnull;
            }
            pg_sys::ExecStoreVirtualTuple(scan);
            (*econtext).ecxt_scantuple = scan;
            if !passes(node) {
                self.rejected += 1;
                return Err(Rejected);
            }
            self.returned += 1;
            Ok(project(node, scan))
        }
    }

    /// What a capturing node at its end read ahead and did not return, for the next one
    /// (see `carry`): its requests in flight, and its rows with their answers so far. Calls
    /// not sent yet are dropped: the next node makes them again.
    unsafe fn carry(&mut self) -> Carry {
        // Answers found in the cache are arrived answers: their rows carry them.
        let cached = std::mem::take(&mut self.cached);
        self.apply(cached);
        let mut unsent: std::collections::HashSet<(u64, usize)> =
            self.queued.drain(..).flat_map(|q| q.calls).collect();
        // A waiting call's answer would come from this node, which ends: the taker makes it.
        unsent.extend(self.waiting.drain().flat_map(|(_, (_, calls))| calls));
        self.sending.clear();
        unsent.extend(self.packs.drain().flat_map(|(_, p)| p.members.into_iter().map(|(s, i, _)| (s, i))));
        let first = self.consumed();
        let mut rows = HashMap::with_capacity(self.window.len());
        for (n, row) in std::mem::take(&mut self.window).into_iter().enumerate() {
            let seq = first + n as u64;
            // SAFETY: the row's copy lives in rows_cxt until the node's end, after this;
            // the outer slot is cleared before the copy is freed.
            let print = unsafe {
                pg_sys::ExecStoreMinimalTuple(row.tuple, self.outer_slot, false);
                pg_sys::slot_getallattrs(self.outer_slot);
                carry::print(self.outer_slot)
            };
            let calls = row
                .results
                .into_iter()
                .enumerate()
                .map(|(site, result)| match result {
                    Some(answer) => Call::Arrived(answer),
                    None if unsent.contains(&(seq, site)) => Call::Lost,
                    None => Call::InFlight,
                })
                .collect();
            // Two rows alike (no key among the child's columns) make the same calls: the
            // first is carried, the second's answers are dropped.
            rows.entry(print).or_insert((seq, calls));
        }
        self.window_bytes = 0;
        let flight = std::mem::replace(&mut self.flight, Flight::new());
        let in_flight = std::mem::replace(&mut self.in_flight, 0);
        Carry::new(
            std::mem::take(&mut self.signature),
            flight,
            in_flight,
            self.window_max,
            rows,
            self.taken.take(),
        )
    }

    /// Drops every request and row in the window; their connections close now.
    fn abandon(&mut self) {
        self.taken = None;
        self.queued.clear();
        self.packs.clear();
        self.waiting.clear();
        self.sending.clear();
        self.cached.clear();
        self.flight = Flight::new();
        self.in_flight = 0;
        self.unsent = false;
        self.window.clear();
        self.window_bytes = 0;
        backend::settle();
    }
}

/// The bytes an answer (or its error) holds while it waits in the window.
fn result_bytes(result: &Option<Result<Answer, AiError>>) -> u64 {
    match result {
        Some(Ok(answer)) => answer.bytes() as u64,
        Some(Err(_)) | None => 0,
    }
}

/// A row the node's quals rejected.
struct Rejected;

/// Whether the row in the node's expression context passes its quals (as ExecQual: no
/// quals pass every row), counting a rejected one for EXPLAIN ANALYZE.
unsafe fn passes(node: *mut pg_sys::CustomScanState) -> bool {
    // SAFETY: the expression context holds this row's slots; the qual state is the one
    // ExecInitCustomScan built from the plan's quals.
    unsafe {
        let qual = (*node).ss.ps.qual;
        if qual.is_null() {
            return true;
        }
        let mut isnull = false;
        let result = pg_sys::ExecEvalExprSwitchContext(qual, (*node).ss.ps.ps_ExprContext, &mut isnull);
        let passed = !isnull && result.value() != 0;
        let instrument = (*node).ss.ps.instrument;
        if !passed && !instrument.is_null() {
            (*instrument).nfiltered1 += 1.0;
        }
        passed
    }
}

/// The node's output row: its target list over the child's row and the answers.
unsafe fn project(
    node: *mut pg_sys::CustomScanState,
    scan: *mut pg_sys::TupleTableSlot,
) -> *mut pg_sys::TupleTableSlot {
    // SAFETY: the expression context holds this row's slots.
    unsafe {
        let projection = (*node).ss.ps.ps_ProjInfo;
        if projection.is_null() {
            scan
        } else {
            pg_sys::ExecProject(projection)
        }
    }
}

async fn chat(
    client: &'static bailian_core::client::Client,
    target: Arc<Target>,
    request: ChatRequest,
    finish: Finish,
    seq: u64,
    site: usize,
    key: Option<AnswerKey>,
) -> Answers {
    let call = target.call();
    let out = client.chat(&call, &request).await;
    answers::keep_chat(&target, key, &out);
    vec![(seq, site, finish.settle(&target, out))]
}

async fn similarity(
    client: &'static bailian_core::client::Client,
    target: Arc<Target>,
    model: Arc<EmbeddingModel>,
    a: String,
    b: String,
    seq: u64,
    site: usize,
) -> Answers {
    let call = target.call();
    let cosine = calls::similarity(client, &call, &model, &a, &b).await;
    vec![(seq, site, target.on_error().settle(cosine))]
}

async fn rerank(
    client: &'static bailian_core::client::Client,
    target: Arc<Target>,
    url: String,
    query: String,
    document: String,
    seq: u64,
    site: usize,
) -> Answers {
    let call = target.call();
    let model_type = target.deployment().spec.model_type;
    let score = calls::rerank(client, &call, model_type, &url, &query, &document).await;
    vec![(seq, site, target.on_error().settle(score))]
}

async fn embed(client: &'static bailian_core::client::Client, pack: Pack) -> Answers {
    let call = pack.target.call();
    let on_error = pack.target.on_error();
    let inputs: Vec<EmbedInput> = pack.members.iter().map(|(_, _, input)| input.as_embed_input()).collect();
    let results = embed_each(client, &call, &pack.model, &inputs).await;
    pack.members
        .iter()
        .zip(pack.keys.iter())
        .zip(results)
        .map(|(((seq, site, input), key), r)| {
            if let Ok(v) = &r {
                answers::keep_vector(&pack.target, *key, &pack.model, input, v);
            }
            (*seq, *site, on_error.settle(r.map(Answer::Vector)))
        })
        .collect()
}
