//! Plans and rows of queries as the server renders them: the shared helpers of the tests
//! that compare batched execution with row by row (`batched_queries`, `query_shapes`).

use postgres::{Client, SimpleQueryMessage};

/// How EXPLAIN shows the node.
pub const BATCH_NODE: &str = "Custom Scan (AI Batch)";

/// Rows as the server renders them in text, NULL as None.
pub type Rows = Vec<Vec<Option<String>>>;

pub fn rows_of(messages: Vec<SimpleQueryMessage>) -> Rows {
    messages
        .into_iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => Some((0..r.len()).map(|i| r.get(i).map(str::to_string)).collect()),
            _ => None,
        })
        .collect()
}

/// Runs `sql` exactly as written (simple protocol, no wrapping that could change its plan)
/// and returns its rows as text.
pub fn text_rows(c: &mut Client, sql: &str) -> Rows {
    rows_of(c.simple_query(sql).unwrap_or_else(|e| panic!("{sql}: {e}")))
}

pub fn set_batching(c: &mut Client, on: bool) {
    let value = if on { "on" } else { "off" };
    c.batch_execute(&format!("SET pg_bailian.batch_execution = {value}")).unwrap();
}

pub fn reset_batching(c: &mut Client) {
    c.batch_execute("RESET pg_bailian.batch_execution").unwrap();
}

/// The plan of `sql` in EXPLAIN's text format (costs off).
pub fn explain(c: &mut Client, sql: &str) -> String {
    explain_with(c, "COSTS OFF", sql)
}

pub fn explain_with(c: &mut Client, options: &str, sql: &str) -> String {
    text_rows(c, &format!("EXPLAIN ({options}) {sql}"))
        .into_iter()
        .map(|r| r[0].clone().unwrap_or_default())
        .collect::<Vec<_>>()
        .join("\n")
}

pub fn assert_batched(c: &mut Client, sql: &str) -> String {
    let plan = explain(c, sql);
    assert!(plan.contains(BATCH_NODE), "expected an AI Batch node in the plan of {sql}:\n{plan}");
    plan
}

pub fn assert_not_batched(c: &mut Client, sql: &str) {
    let plan = explain(c, sql);
    assert!(!plan.contains(BATCH_NODE), "expected no AI Batch node in the plan of {sql}:\n{plan}");
}

/// The values of EXPLAIN property lines `name: value` in `plan`.
pub fn property(plan: &str, name: &str) -> Vec<String> {
    let prefix = format!("{name}: ");
    plan.lines().map(str::trim).filter_map(|l| l.strip_prefix(prefix.as_str()).map(str::to_string)).collect()
}
