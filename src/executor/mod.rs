//! Batched execution of AI calls inside ordinary queries.
//!
//! PostgreSQL evaluates a target list one row at a time, so `SELECT ai_gen('chat', body) FROM
//! t` waits out a model's whole latency per row. This module makes the executor read rows
//! ahead and keep many rows' calls in flight, without changing what any row gets.
//!
//! **Where.** A `planner_hook` (`plan.rs`) walks the finished plan (and every subplan) after
//! PostgreSQL's planner. Above each plan node whose target list calls one of our AI functions
//! where it is always evaluated, it inserts a `Custom Scan (AI Batch)` (`node.rs`):
//!
//! ```text
//!   before:  N  tlist: id, upper(ai_gen('chat', body))
//!   after:   AI Batch  tlist: OUTER.1, upper(INDEX.1)        scan tuple: INDEX.1 = ai_gen('chat', OUTER.2)
//!              -> N    tlist: id, body
//! ```
//!
//! `N` now outputs the calls' arguments and every other part of its target list that holds
//! no call (so Vars, Aggrefs, Params and volatile functions are still evaluated where and as
//! often as before); the AI Batch node reads `N`'s rows ahead, sends their calls, and
//! evaluates the rest of the original target list over each row and its answers, in order.
//! Nested calls (`ai_gen(m, ai_translate(...))`) get one AI Batch node per level. The node's
//! output is exactly `N`'s old output, so nothing above changes.
//!
//! **Filters.** Quals of `N` (its filter, and the join quals of an inner join) that call AI
//! functions: the quals before the first one whose calls can be batched stay in `N` and
//! filter first; that qual and every one after it move to an AI Batch node above, which
//! makes the first one's calls and evaluates the moved quals in their order over each row
//! and its answers, dropping the rows they reject. The next round puts another node above for
//! the next AI qual, and so on, so a row rejected by one AI qual is never sent to the next.
//! The planner ordered the quals by security level, then cost, and the order is kept: a row
//! reaches a model only after every RLS policy and security_barrier qual has passed it.
//!
//! **Aggregates.** For the calls in the arguments and FILTERs of an Agg's aggregates or a
//! WindowAgg's aggregates, an AI Batch node goes *below* the node: it passes its input's
//! columns through (grouping and sorting refer to them by position) and appends the
//! answers, which the arguments now read. A WindowAgg qualifies only when its aggregates read
//! every row: every frame holds its own row and no run condition stops it early; window
//! functions proper (lag, first_value...) read only the rows they pick and stay row by row.
//! A WindowAgg with a run condition keeps its target list too (the condition refers to it
//! by position).
//!
//! **Conditional calls** (under CASE, COALESCE, AND, OR, an aggregate's FILTER) are batched
//! with a guard: the condition under which row by row would make them, evaluated by the
//! node first (see `cut`). Their answers are NULL where the guard fails, and nothing reads
//! them there.
//!
//! **What is never batched** (it runs row by row, as before): calls in set-returning target
//! lists (ProjectSet), in RETURNING, under a volatile guard or one holding a subquery, in
//! outer/semi/anti join conditions; nodes under the inner side of a merge join (which needs
//! mark/restore) and the top of a SCROLL cursor (backward fetches); a plan made while
//! `pg_bailian.batch_execution` was off; a single-row Result.
//!
//! **Same rows, same errors.** Each call goes through the same `Kernel::prepare` as the
//! function called row by row (`functions::calls`), and a row's error is raised when that
//! row's turn comes, so a query fails with the error of its first failing row, as row by row.
//! An error in the plan below (not in a call) can surface up to one read-ahead window early.
//!
//! **How far ahead.** Under a constant `LIMIT n` (through nodes that pass rows one for one)
//! no more than n rows are read ahead. Under UPDATE/INSERT/DELETE, Sort, Hash or a hashed or
//! plain aggregate, which consume every row, the whole window is used at once. Elsewhere (a
//! SELECT whose client may stop early, a cursor) read-ahead starts at one row and grows to
//! twice the rows already returned, so a consumer that stops early costs at most twice the
//! calls it used. The window is `pg_bailian.max_concurrency` requests (embeddings packed up to
//! the model's inputs per request) times two, at most `pg_bailian.max_read_ahead` rows.
//!
//! **Stopping.** Requests wait in the backend's runtime with PostgreSQL's interrupts
//! serviced; a cancel or statement timeout drops every request of the node at once. An error
//! anywhere else drops them when the executor's memory goes (a reset callback), and a rescan
//! drops them too. A plan cached while batching was on runs row by row (each call through the
//! function itself) once `pg_bailian.batch_execution` is off.
//!
//! **Jobs.** `ai_update` (and the column procedures built on it) computes each chunk of rows
//! with one query through these nodes. That query is planned in capture mode (`capture.rs`):
//! batched whatever the setting, reading ahead the whole window, and a call's error is handed
//! to the job with its row's position instead of failing the query. Each chunk's query also
//! reads the next chunk's rows, after its own; what its node read ahead of them, requests in
//! flight included, goes to the next chunk's node when the query closes (`carry.rs`), so
//! the requests in flight do not drain at the end of each chunk and the commit after it.

pub mod capture;
mod carry;
mod cut;
mod node;
mod plan;

pub use plan::list_ptrs;

/// Installs the planner hook and registers the node's methods (for plan copies and reads).
pub fn install() {
    plan::install();
}
