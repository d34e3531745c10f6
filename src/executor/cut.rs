//! How an expression's AI calls are cut out for an AI Batch node: which calls are ready at
//! this level, under which condition a row-by-row run would make them, and how the rest of
//! the expression is rewritten around their answers.
//!
//! A call is *ready* when no call of ours is evaluated inside its arguments (those come
//! first, one AI Batch node lower). It is *unconditional* when its expression evaluates it
//! whenever it is evaluated itself (through function arguments, operators, casts, arrays and
//! rows). Under AND, OR, CASE, COALESCE and an aggregate's FILTER a call is *conditional*:
//! the row-by-row run makes it only when the conditions before it came out a certain way
//! (for `a AND b`, b is evaluated when a is not false; for `CASE WHEN c THEN x END`, x when c
//! is true; for `COALESCE(a, b)`, b when a is null). Such a call is batched with that
//! condition as its *guard*: the AI Batch node evaluates the guard for each row first and
//! makes the call only where it holds, so no call is ever made that row by row would not
//! make. The guard is evaluated again by the expression above (which reads the answer only
//! where the guard holds), so a guard must not be volatile and must not call us itself (a
//! call guarded by another call's answer waits for the next level, where that answer is a
//! column).
//!
//! Parts of the expression that hold no call are either *hoisted* (evaluated by the plan node
//! below, as one of its output columns: fine where the expression evaluates them for every
//! row anyway) or *shifted* (kept in the expression, evaluated by the AI Batch node, with
//! only their column references taken from the node below: needed where they are
//! conditional, so that `CASE WHEN x <> 0 THEN ai_gen('m', (1/x)::text) END` divides only
//! where row by row would). A subquery (SubPlan) shifts whole; one in a guard (evaluated
//! twice) or under an aggregate cannot move, and makes the whole expression stay as it was,
//! row by row.

use super::plan::{list_of, list_ptrs, tag};
use crate::functions::calls::Kernel;
use pgrx::pg_sys;
use std::collections::HashMap;
use std::ffi::c_void;

/// Which functions are ours, by OID, for one planning run.
#[derive(Default)]
pub(super) struct Kernels(HashMap<pg_sys::Oid, Option<Kernel>>);

impl Kernels {
    pub fn of(&mut self, funcid: pg_sys::Oid) -> Option<Kernel> {
        *self.0.entry(funcid).or_insert_with(|| Kernel::of_function(funcid))
    }

    /// `node` if it is a (non set-returning) call of one of our functions.
    pub unsafe fn call(&mut self, node: *mut pg_sys::Node) -> Option<(Kernel, *mut pg_sys::FuncExpr)> {
        // SAFETY: a valid expression node.
        unsafe {
            if node.is_null() || tag(node.cast()) != pg_sys::NodeTag::T_FuncExpr {
                return None;
            }
            let f = node as *mut pg_sys::FuncExpr;
            if (*f).funcretset {
                return None;
            }
            self.of((*f).funcid).map(|k| (k, f))
        }
    }

    /// Whether a call of ours is anywhere in `node` (the plans of its subqueries aside: they
    /// are plans of their own, rewritten on their own).
    pub unsafe fn contains(&mut self, node: *mut pg_sys::Node) -> bool {
        #[pgrx::pg_guard]
        unsafe extern "C-unwind" fn walk(node: *mut pg_sys::Node, cx: *mut c_void) -> bool {
            if node.is_null() {
                return false;
            }
            // SAFETY: cx is the &mut Kernels passed below, not otherwise used during the walk.
            let kernels = unsafe { &mut *(cx as *mut Kernels) };
            // SAFETY: node is a valid expression node the walker hands us.
            unsafe { kernels.call(node).is_some() || pg_sys::expression_tree_walker(node, Some(walk), cx) }
        }
        // SAFETY: a valid expression tree; the walker only reads it.
        unsafe { walk(node, (self as *mut Kernels).cast()) }
    }
}

/// Where the parts of an expression that remain are evaluated, relative to the AI Batch node.
pub(super) enum Frame {
    /// The AI Batch node goes above plan node N and evaluates what remains of N's target
    /// list or quals over N's new output, `below` (expressions in N's own terms).
    Above { below: Vec<*mut pg_sys::Expr> },
    /// The AI Batch node goes under an aggregate or window node, above its input of `width`
    /// columns: the expressions stay in the upper node in the input's terms (OUTER_VAR), and
    /// each answer becomes a further column of the input, after those `width`.
    Under { width: usize },
}

/// What an AI Batch node being built will compute: its calls, and the frame of the rest.
pub(super) struct Cut<'k> {
    kernels: &'k mut Kernels,
    pub frame: Frame,
    /// Each call's column of the node's scan tuple: the call (its arguments in terms of the
    /// node's input), or `CASE WHEN guard THEN call END` for a conditional one.
    pub calls: Vec<*mut pg_sys::Expr>,
    failed: bool,
    /// Shifting a guard, which the expression above evaluates again: a subquery in it would
    /// be run twice (and its plan shared by two SubPlans), so it cannot move.
    in_guard: bool,
}

/// How far a cut had got, to undo what a failed expression added.
#[derive(Clone, Copy)]
pub(super) struct Mark {
    calls: usize,
    below: usize,
}

impl<'k> Cut<'k> {
    pub fn new(kernels: &'k mut Kernels, frame: Frame) -> Self {
        Cut { kernels, frame, calls: Vec::new(), failed: false, in_guard: false }
    }

    pub fn kernels(&mut self) -> &mut Kernels {
        self.kernels
    }

    pub fn mark(&self) -> Mark {
        let below = match &self.frame {
            Frame::Above { below } => below.len(),
            Frame::Under { .. } => 0,
        };
        Mark { calls: self.calls.len(), below }
    }

    pub fn undo(&mut self, mark: Mark) {
        self.calls.truncate(mark.calls);
        if let Frame::Above { below } = &mut self.frame {
            below.truncate(mark.below);
        }
        self.failed = false;
    }

    /// `expr` rewritten with its ready calls cut out (`cond`: whether the expression itself
    /// is evaluated only for some of the rows reaching the node), or None if it cannot be
    /// (then nothing was added). Check `calls` for whether any call was cut.
    pub unsafe fn top(
        &mut self,
        expr: *mut pg_sys::Node,
        guard: &[*mut pg_sys::Node],
        cond: bool,
    ) -> Option<*mut pg_sys::Node> {
        let mark = self.mark();
        self.failed = false;
        // SAFETY: a valid expression tree.
        let out = unsafe { self.ext(expr, guard, cond) };
        if self.failed {
            self.undo(mark);
            return None;
        }
        Some(out)
    }

    /// `expr` kept whole, evaluated by the AI Batch node (its calls, if any, row by row
    /// there), or None if it cannot move.
    pub unsafe fn moved(&mut self, expr: *mut pg_sys::Node) -> Option<*mut pg_sys::Node> {
        let mark = self.mark();
        self.failed = false;
        // SAFETY: a valid expression tree.
        let out = unsafe { self.shift(expr) };
        if self.failed {
            self.undo(mark);
            return None;
        }
        Some(out)
    }

    /// `expr` hoisted: a column of the node below (Above), or itself (Under). Under, a
    /// subquery would be evaluated by the AI Batch node with the parameters of the aggregate
    /// above it: it cannot be (`failed`).
    pub unsafe fn column(&mut self, expr: *mut pg_sys::Node) -> *mut pg_sys::Node {
        // SAFETY: a valid expression tree.
        unsafe {
            match &mut self.frame {
                Frame::Above { below } => column_for(below, expr).cast(),
                Frame::Under { .. } => {
                    if pg_sys::contain_subplans(expr) {
                        self.failed = true;
                    }
                    pg_sys::copyObjectImpl(expr.cast()).cast()
                }
            }
        }
    }

    /// The n-th (1-based) answer as the expression above reads it.
    unsafe fn answer(&self, n: usize, typ: pg_sys::Oid, collation: pg_sys::Oid) -> *mut pg_sys::Node {
        let (varno, attno) = match self.frame {
            Frame::Above { .. } => (pg_sys::INDEX_VAR, n),
            Frame::Under { width } => (pg_sys::OUTER_VAR, width + n),
        };
        // SAFETY: makeVar allocates in the current (planner) memory context.
        unsafe { pg_sys::makeVar(varno, attno as i16, typ, -1, collation, 0).cast() }
    }

    /// `expr` evaluated by the AI Batch node: its column references (and, Above, its
    /// aggregates and window functions, which only the node below can compute) become
    /// columns of the input; everything else is kept. A SubPlan cannot move: `failed`.
    unsafe fn shift(&mut self, expr: *mut pg_sys::Node) -> *mut pg_sys::Node {
        #[pgrx::pg_guard]
        unsafe extern "C-unwind" fn each(node: *mut pg_sys::Node, cx: *mut c_void) -> *mut pg_sys::Node {
            if node.is_null() {
                return node;
            }
            // SAFETY: cx is the Cut that started the mutation, not otherwise used meanwhile;
            // node is a valid expression node.
            unsafe {
                let cut = &mut *(cx as *mut Cut);
                let above = matches!(cut.frame, Frame::Above { .. });
                match tag(node.cast()) {
                    pg_sys::NodeTag::T_Var if above => cut.column(node),
                    pg_sys::NodeTag::T_Aggref
                    | pg_sys::NodeTag::T_WindowFunc
                    | pg_sys::NodeTag::T_GroupingFunc
                        if above =>
                    {
                        cut.column(node)
                    }
                    // A subquery moves whole to the AI Batch node (its arguments taken from
                    // the node below), where it runs for the same rows as before: it is
                    // initialised there, once, and its parameters are the node's too (the
                    // node copies the extParam/allParam of the node below).
                    pg_sys::NodeTag::T_SubPlan if above && !cut.in_guard => mutate(node, each, cx),
                    pg_sys::NodeTag::T_Aggref
                    | pg_sys::NodeTag::T_WindowFunc
                    | pg_sys::NodeTag::T_GroupingFunc
                    | pg_sys::NodeTag::T_SubPlan
                    | pg_sys::NodeTag::T_AlternativeSubPlan => {
                        cut.failed = true;
                        node
                    }
                    _ => mutate(node, each, cx),
                }
            }
        }
        // SAFETY: a valid expression tree; the mutator copies what it changes.
        unsafe { each(expr, (self as *mut Self).cast()) }
    }

    /// Rewrites `expr` (evaluated under `guard`, a list of conditions all of which hold;
    /// `cond`: whether it is evaluated only for some rows).
    unsafe fn ext(
        &mut self,
        expr: *mut pg_sys::Node,
        guard: &[*mut pg_sys::Node],
        cond: bool,
    ) -> *mut pg_sys::Node {
        use pg_sys::NodeTag::*;
        // SAFETY (whole function): valid expression trees; everything is allocated in the
        // planner's memory context.
        unsafe {
            if expr.is_null() {
                return expr;
            }
            if tag(expr.cast()) == T_Const {
                return pg_sys::copyObjectImpl(expr.cast()).cast();
            }
            if let Some((_, f)) = self.kernels.call(expr) {
                let args = list_ptrs((*f).args);
                let ready = !args.iter().any(|a| self.kernels.contains((*a).cast()))
                    && guard
                        .iter()
                        .all(|g| !self.kernels.contains(*g) && !pg_sys::contain_volatile_functions(*g));
                if ready {
                    return self.cut_call(f, &args, guard, cond);
                }
            }
            if !self.kernels.contains(expr) {
                return if cond { self.shift(expr) } else { self.column(expr) };
            }
            let copy = pg_sys::copyObjectImpl(expr.cast()) as *mut pg_sys::Node;
            match tag(expr.cast()) {
                T_BoolExpr if (*(expr as *mut pg_sys::BoolExpr)).boolop != pg_sys::BoolExprType::NOT_EXPR => {
                    // AND evaluates an argument while none before it was false; OR while none
                    // was true.
                    let b = expr as *mut pg_sys::BoolExpr;
                    let test = if (*b).boolop == pg_sys::BoolExprType::AND_EXPR {
                        pg_sys::BoolTestType::IS_NOT_FALSE
                    } else {
                        pg_sys::BoolTestType::IS_NOT_TRUE
                    };
                    let originals = list_ptrs((*b).args);
                    let mut prior = guard.to_vec();
                    let mut out = Vec::with_capacity(originals.len());
                    for (i, a) in originals.iter().enumerate() {
                        out.push(self.ext((*a).cast(), &prior, cond || i > 0).cast::<c_void>());
                        prior.push(bool_test((*a).cast(), test));
                    }
                    (*(copy as *mut pg_sys::BoolExpr)).args = list_of(out);
                }
                T_CaseExpr if (*(expr as *mut pg_sys::CaseExpr)).arg.is_null() => {
                    // WHEN i is evaluated when no WHEN before it was true; THEN i when WHEN
                    // i is; ELSE when none is.
                    let c = expr as *mut pg_sys::CaseExpr;
                    let whens = list_ptrs((*c).args);
                    let mut prior = guard.to_vec();
                    let mut out = Vec::with_capacity(whens.len());
                    for (i, w) in whens.iter().enumerate() {
                        let w = *w as *mut pg_sys::CaseWhen;
                        let nw = pg_sys::copyObjectImpl(w.cast()) as *mut pg_sys::CaseWhen;
                        (*nw).expr = self.ext((*w).expr.cast(), &prior, cond || i > 0).cast();
                        let mut taken = prior.clone();
                        taken.push(bool_test((*w).expr.cast(), pg_sys::BoolTestType::IS_TRUE));
                        (*nw).result = self.ext((*w).result.cast(), &taken, true).cast();
                        prior.push(bool_test((*w).expr.cast(), pg_sys::BoolTestType::IS_NOT_TRUE));
                        out.push(nw.cast::<c_void>());
                    }
                    let nc = copy as *mut pg_sys::CaseExpr;
                    (*nc).args = list_of(out);
                    (*nc).defresult = self.ext((*c).defresult.cast(), &prior, true).cast();
                }
                T_CoalesceExpr => {
                    // Argument i is evaluated when every one before it was null.
                    let c = expr as *mut pg_sys::CoalesceExpr;
                    let originals = list_ptrs((*c).args);
                    let mut prior = guard.to_vec();
                    let mut out = Vec::with_capacity(originals.len());
                    for (i, a) in originals.iter().enumerate() {
                        out.push(self.ext((*a).cast(), &prior, cond || i > 0).cast::<c_void>());
                        prior.push(null_test((*a).cast()));
                    }
                    (*(copy as *mut pg_sys::CoalesceExpr)).args = list_of(out);
                }
                _ => match (spine_children(expr), spine_children(copy)) {
                    (Some(originals), Some(copies)) => {
                        for (o, c) in originals.into_iter().zip(copies) {
                            *c = self.ext(*o, guard, cond);
                        }
                    }
                    // Anything else that holds a call is evaluated as it was, row by row.
                    _ => return if cond { self.shift(expr) } else { self.column(expr) },
                },
            }
            copy
        }
    }

    /// A ready call cut out: its scan-tuple column, and the answer's reference in its place.
    unsafe fn cut_call(
        &mut self,
        f: *mut pg_sys::FuncExpr,
        args: &[*mut c_void],
        guard: &[*mut pg_sys::Node],
        cond: bool,
    ) -> *mut pg_sys::Node {
        // SAFETY: valid expression trees, copied in the planner's memory context.
        unsafe {
            let call = pg_sys::copyObjectImpl(f.cast()) as *mut pg_sys::FuncExpr;
            let mut out = Vec::with_capacity(args.len());
            for a in args {
                let a = *a as *mut pg_sys::Node;
                out.push(if tag(a.cast()) == pg_sys::NodeTag::T_Const {
                    pg_sys::copyObjectImpl(a.cast())
                } else if cond {
                    // Evaluated by the AI Batch node, only where the guard holds.
                    self.shift(a).cast()
                } else {
                    self.column(a).cast()
                });
            }
            (*call).args = list_of(out);
            let entry: *mut pg_sys::Expr = if guard.is_empty() {
                call.cast()
            } else {
                let all = if guard.len() == 1 {
                    guard[0].cast()
                } else {
                    pg_sys::makeBoolExpr(
                        pg_sys::BoolExprType::AND_EXPR,
                        list_of(guard.iter().map(|g| g.cast::<c_void>())),
                        -1,
                    )
                };
                self.in_guard = true;
                let condition = self.shift(all.cast());
                self.in_guard = false;
                case_when(condition, call)
            };
            self.calls.push(entry);
            self.answer(self.calls.len(), (*f).funcresulttype, (*f).funccollid)
        }
    }
}

/// expression_tree_mutator, as each major spells it.
unsafe fn mutate(
    node: *mut pg_sys::Node,
    f: unsafe extern "C-unwind" fn(*mut pg_sys::Node, *mut c_void) -> *mut pg_sys::Node,
    cx: *mut c_void,
) -> *mut pg_sys::Node {
    // SAFETY: PostgreSQL's mutator over a valid expression; it calls f (with cx) for each
    // child of the copy it makes.
    unsafe {
        #[cfg(feature = "pg15")]
        {
            // PG15 declares the callback without its parameters (a C cast in its macro).
            pg_sys::expression_tree_mutator(
                node,
                Some(std::mem::transmute::<
                    unsafe extern "C-unwind" fn(*mut pg_sys::Node, *mut c_void) -> *mut pg_sys::Node,
                    unsafe extern "C-unwind" fn() -> *mut pg_sys::Node,
                >(f)),
                cx,
            )
        }
        #[cfg(not(feature = "pg15"))]
        {
            pg_sys::expression_tree_mutator_impl(node, Some(f), cx)
        }
    }
}

/// An OUTER_VAR for `expr` as a column of the node below, `below` its target list (a Var
/// already there is reused; nothing else is, so a volatile expression is evaluated as often
/// as before).
pub(super) unsafe fn column_for(
    below: &mut Vec<*mut pg_sys::Expr>,
    expr: *mut pg_sys::Node,
) -> *mut pg_sys::Var {
    // SAFETY: a valid expression tree.
    unsafe {
        let is_var = tag(expr.cast()) == pg_sys::NodeTag::T_Var;
        let found =
            is_var.then(|| below.iter().position(|e| pg_sys::equal((*e).cast(), expr.cast()))).flatten();
        let index = match found {
            Some(i) => i,
            None => {
                below.push(expr.cast());
                below.len() - 1
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

/// The expression children through which evaluation is unconditional: a node of these kinds
/// evaluates every one of them whenever it is evaluated itself. None: not such a node.
pub(super) unsafe fn spine_children(node: *mut pg_sys::Node) -> Option<Vec<*mut *mut pg_sys::Node>> {
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
        let one = |p: *mut *mut pg_sys::Expr| vec![p.cast::<*mut pg_sys::Node>()];
        Some(match tag(node.cast()) {
            T_FuncExpr if !(*(node as *mut pg_sys::FuncExpr)).funcretset => {
                args((*(node as *mut pg_sys::FuncExpr)).args)
            }
            T_OpExpr | T_DistinctExpr | T_NullIfExpr if !(*(node as *mut pg_sys::OpExpr)).opretset => {
                args((*(node as *mut pg_sys::OpExpr)).args)
            }
            // Both sides are evaluated before the comparisons (which stop early).
            T_ScalarArrayOpExpr => args((*(node as *mut pg_sys::ScalarArrayOpExpr)).args),
            T_BoolExpr if (*(node as *mut pg_sys::BoolExpr)).boolop == pg_sys::BoolExprType::NOT_EXPR => {
                args((*(node as *mut pg_sys::BoolExpr)).args)
            }
            T_NullTest => one(std::ptr::addr_of_mut!((*(node as *mut pg_sys::NullTest)).arg)),
            T_BooleanTest => one(std::ptr::addr_of_mut!((*(node as *mut pg_sys::BooleanTest)).arg)),
            T_RelabelType => one(std::ptr::addr_of_mut!((*(node as *mut pg_sys::RelabelType)).arg)),
            T_CoerceViaIO => one(std::ptr::addr_of_mut!((*(node as *mut pg_sys::CoerceViaIO)).arg)),
            T_CoerceToDomain => one(std::ptr::addr_of_mut!((*(node as *mut pg_sys::CoerceToDomain)).arg)),
            T_CollateExpr => one(std::ptr::addr_of_mut!((*(node as *mut pg_sys::CollateExpr)).arg)),
            T_FieldSelect => one(std::ptr::addr_of_mut!((*(node as *mut pg_sys::FieldSelect)).arg)),
            T_ArrayExpr => args((*(node as *mut pg_sys::ArrayExpr)).elements),
            T_RowExpr => args((*(node as *mut pg_sys::RowExpr)).args),
            T_MinMaxExpr => args((*(node as *mut pg_sys::MinMaxExpr)).args),
            // An array element or slice: its subscripts are evaluated only when the array is
            // not NULL, so only plain ones (a constant, a column: nothing that can fail or
            // vary) are taken as if unconditional.
            T_SubscriptingRef => {
                let r = node as *mut pg_sys::SubscriptingRef;
                let mut subscripts = args((*r).refupperindexpr);
                subscripts.extend(args((*r).reflowerindexpr));
                let plain = |p: &*mut *mut pg_sys::Node| {
                    let e = **p;
                    e.is_null() || matches!(tag(e.cast()), T_Const | T_Var)
                };
                if !(*r).refassgnexpr.is_null() || !subscripts.iter().all(plain) {
                    return None;
                }
                subscripts.push(std::ptr::addr_of_mut!((*r).refexpr).cast());
                subscripts
            }
            _ => return None,
        })
    }
}

/// `arg IS [NOT] TRUE/FALSE`.
pub(super) unsafe fn bool_test(
    arg: *mut pg_sys::Node,
    test: pg_sys::BoolTestType::Type,
) -> *mut pg_sys::Node {
    // SAFETY: a zeroed node of the right size, tagged, in the planner's memory context.
    unsafe {
        let t = pg_sys::palloc0(std::mem::size_of::<pg_sys::BooleanTest>()) as *mut pg_sys::BooleanTest;
        (*t).xpr.type_ = pg_sys::NodeTag::T_BooleanTest;
        (*t).arg = arg.cast();
        (*t).booltesttype = test;
        (*t).location = -1;
        t.cast()
    }
}

/// `arg IS NULL`.
unsafe fn null_test(arg: *mut pg_sys::Node) -> *mut pg_sys::Node {
    // SAFETY: as bool_test.
    unsafe {
        let t = pg_sys::palloc0(std::mem::size_of::<pg_sys::NullTest>()) as *mut pg_sys::NullTest;
        (*t).xpr.type_ = pg_sys::NodeTag::T_NullTest;
        (*t).arg = arg.cast();
        (*t).nulltesttype = pg_sys::NullTestType::IS_NULL;
        (*t).argisrow = false;
        (*t).location = -1;
        t.cast()
    }
}

/// `CASE WHEN condition THEN call END`: how a conditional call is kept in the plan (so
/// EXPLAIN VERBOSE shows the condition, and row-by-row execution evaluates it as written).
unsafe fn case_when(condition: *mut pg_sys::Node, call: *mut pg_sys::FuncExpr) -> *mut pg_sys::Expr {
    // SAFETY: zeroed nodes of the right sizes, tagged, in the planner's memory context.
    unsafe {
        let w = pg_sys::palloc0(std::mem::size_of::<pg_sys::CaseWhen>()) as *mut pg_sys::CaseWhen;
        (*w).xpr.type_ = pg_sys::NodeTag::T_CaseWhen;
        (*w).expr = condition.cast();
        (*w).result = call.cast();
        (*w).location = -1;
        let c = pg_sys::palloc0(std::mem::size_of::<pg_sys::CaseExpr>()) as *mut pg_sys::CaseExpr;
        (*c).xpr.type_ = pg_sys::NodeTag::T_CaseExpr;
        (*c).casetype = (*call).funcresulttype;
        (*c).casecollid = (*call).funccollid;
        (*c).arg = std::ptr::null_mut();
        (*c).args = list_of([w.cast::<c_void>()]);
        (*c).defresult = pg_sys::makeNullConst((*call).funcresulttype, -1, (*call).funccollid).cast();
        (*c).location = -1;
        c.cast()
    }
}

/// The call and its guard (None: unconditional) of a scan-tuple column made by `case_when`.
pub(super) unsafe fn guarded(entry: *mut pg_sys::Expr) -> (*mut pg_sys::FuncExpr, Option<*mut pg_sys::Expr>) {
    // SAFETY: a column this module made: a FuncExpr, or a CaseExpr of one CaseWhen.
    unsafe {
        if tag(entry.cast()) == pg_sys::NodeTag::T_CaseExpr {
            let c = entry as *mut pg_sys::CaseExpr;
            let w = list_ptrs((*c).args)[0] as *mut pg_sys::CaseWhen;
            ((*w).result.cast(), Some((*w).expr))
        } else {
            (entry.cast(), None)
        }
    }
}
