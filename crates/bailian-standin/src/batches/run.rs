//! A batch at work: its phases on the service clock (validating, in progress, finalizing),
//! its lines answered one after another by the code that answers live requests, its output
//! and error files, and how it ends when cancelled, expired, held or failed.
//!
//! Each batch has a task of its own. It sleeps through each phase on the service clock and
//! wakes early when something is done to the batch (a cancel, a release, an expiry or a
//! failure asked for by a test: the batch's `Notify`), then looks at the batch again. The
//! store holds what the API shows; the task holds the lines and their answers until the
//! batch ends, when the answers become its files and are billed, at the batch price
//! (research §1.10): the lines done before a cancel or an expiry are billed, lines not run
//! are not, nor is anything of a batch that failed.
//!
//! A line is answered as the live endpoint answers the same body (`chat::batch_line`,
//! `embedding::embeddings`), so a batch's answer equals the live one. Scripted faults
//! (`Standin::script`) apply to lines by their input as to live requests: a status, 429 or
//! moderation fault makes the line fail, `Malformed` writes a line that is not JSON, and the
//! faults that spoil an answer (NUL, a number beyond f32, structured output gone wrong) spoil
//! it here too. Faults of a connection (hang, delay, reset, redirect, oversized bodies,
//! streams) have no meaning for a line: they are used up and the line is answered.

use super::store::{Batch, Forced, Status};
use super::validate::{self, Line, EMBEDDINGS_ENDPOINT, TEST_ENDPOINT};
use crate::chat;
use crate::embedding;
use crate::errors::{self, status_error, Api};
use crate::faults;
use crate::files::{self, PURPOSE_BATCH_OUTPUT};
use crate::request::{inputs_of, Kind, Outcome};
use crate::state::{Config, Fault, Shared};
use crate::usage::{Billing, Ending, Tokens};
use serde_json::{json, Value};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;

/// The longest a task sleeps before it looks at its batch again, whatever it waits for: a
/// change of the clock's speed or of `batch_hold` is seen within this.
const MAX_NAP: Duration = Duration::from_millis(50);

/// Why a batch stopped before it completed.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Stop {
    /// `Standin::reset` removed it.
    Gone,
    Cancelled,
    Expired,
    Failed,
}

/// What a wait may be cut short by.
#[derive(Clone, Copy, PartialEq)]
enum Watch {
    /// While the batch runs: a cancel, an expiry, a forced failure.
    Running,
    /// While it finishes (finalizing, cancelling): nothing but a reset.
    Finishing,
}

/// One answered line, waiting for the batch to end.
struct Done {
    custom_id: String,
    /// The line of the output or error file.
    text: String,
    ok: bool,
    /// What it costs, booked when the batch ends with it.
    model: String,
    status: u16,
    inputs: u64,
    tokens: Option<Tokens>,
}

struct Run {
    shared: Arc<Shared>,
    id: String,
    notify: Arc<Notify>,
    owner: u64,
    hint: String,
    endpoint: String,
    /// When the completion window ends, in service seconds.
    deadline: f64,
    lines: Vec<Line>,
    done: Vec<Done>,
}

/// Runs batch `id` until it ends.
pub(crate) async fn drive(shared: Arc<Shared>, id: String) {
    let Some(mut run) = Run::new(shared, id) else { return };
    if let Err(stop) = run.work().await {
        run.stop(stop).await;
    }
}

impl Run {
    fn new(shared: Arc<Shared>, id: String) -> Option<Run> {
        let (notify, owner, hint, endpoint, deadline) = shared.batches.with(&id, |b| {
            (
                b.notify.clone(),
                b.owner,
                b.key_hint.clone(),
                b.endpoint.clone(),
                b.created_at as f64 + b.window_secs as f64,
            )
        })?;
        Some(Run { shared, id, notify, owner, hint, endpoint, deadline, lines: Vec::new(), done: Vec::new() })
    }

    fn config(&self) -> Config {
        self.shared.config.lock().unwrap().clone()
    }

    /// Changes the batch as the API shows it; `now` is the service clock's Unix second.
    fn update(&self, f: impl FnOnce(&mut Batch, u64)) -> Result<(), Stop> {
        let now = self.shared.service_secs();
        self.shared.batches.with(&self.id, |b| f(b, now)).ok_or(Stop::Gone)
    }

    async fn work(&mut self) -> Result<(), Stop> {
        let config = self.config();
        self.pause(config.batch_validating_secs, Watch::Running).await?;
        let input = self.shared.batches.with(&self.id, |b| b.input.clone()).ok_or(Stop::Gone)?;
        let limits = validate::Limits {
            max_lines: config.max_batch_lines,
            max_line_bytes: config.max_batch_line_bytes,
        };
        self.lines = match validate::lines(&input, &self.endpoint, &limits) {
            Ok(lines) => lines,
            Err(errors) => {
                // S17: a batch that fails validation never was in progress, and counts nothing.
                return self.update(|b, now| {
                    b.status = Status::Failed;
                    b.failed_at = Some(now);
                    b.errors = errors;
                });
            }
        };
        let total = self.lines.len() as u64;
        self.update(|b, now| {
            b.status = Status::InProgress;
            b.in_progress_at = Some(now);
            b.total = total;
        })?;
        self.pause(config.batch_queued_secs, Watch::Running).await?;
        self.hold().await?;
        for i in 0..self.lines.len() {
            self.pause(self.config().batch_line_secs, Watch::Running).await?;
            let done = answer(&self.shared, &self.config(), &self.endpoint, &self.lines[i]);
            let ok = done.ok;
            self.done.push(done);
            self.update(|b, _| if ok { b.completed += 1 } else { b.failed += 1 })?;
        }
        self.update(|b, now| {
            b.status = Status::Finalizing;
            b.finalizing_at = Some(now);
        })?;
        self.pause(self.config().batch_finalizing_secs, Watch::Finishing).await?;
        self.finish(Status::Completed, None)
    }

    /// How a batch that stopped ends.
    async fn stop(&mut self, stop: Stop) {
        let _ = match stop {
            Stop::Gone => Ok(()),
            // A batch that fails after it began keeps nothing and bills nothing. Bailian
            // documents failures of validation only; the entry is a guess in its shape.
            Stop::Failed => self.update(|b, now| {
                b.status = Status::Failed;
                b.failed_at = Some(now);
                b.errors = vec![json!({
                    "code": "internal_error",
                    "message": "The batch failed because of an internal error.",
                    "param": null,
                    "line": null,
                })];
            }),
            // The lines not run go to the error file and count as failed, as S17's cancelled
            // batch shows (two lines, none run: failed 2, an error file, no output file). Their
            // error codes and messages are OpenAI's; Bailian's are not documented.
            Stop::Expired => self.finish(
                Status::Expired,
                Some((
                    "batch_expired",
                    "This request could not be executed before the completion window expired.",
                )),
            ),
            Stop::Cancelled => {
                let secs = self.config().batch_finalizing_secs;
                match self.pause(secs, Watch::Finishing).await {
                    Ok(()) => self.finish(
                        Status::Cancelled,
                        Some((
                            "batch_cancelled",
                            "This request was not executed because the batch was cancelled.",
                        )),
                    ),
                    Err(stop) => Err(stop),
                }
            }
        };
    }

    /// Looks at the batch: Ok(now on the service clock) while it may go on.
    fn look(&self, watch: Watch) -> Result<f64, Stop> {
        let now = self.shared.service_now();
        let state =
            self.shared.batches.with(&self.id, |b| (b.status, b.forced, b.released)).ok_or(Stop::Gone)?;
        if watch == Watch::Finishing {
            return Ok(now);
        }
        match state {
            (Status::Cancelling, _, _) => Err(Stop::Cancelled),
            (_, Some(Forced::Fail), _) => Err(Stop::Failed),
            (_, Some(Forced::Expire), _) => Err(Stop::Expired),
            _ if now >= self.deadline => Err(Stop::Expired),
            _ => Ok(now),
        }
    }

    /// Waits `service_secs` on the service clock, unless the batch stops first.
    async fn pause(&self, service_secs: f64, watch: Watch) -> Result<(), Stop> {
        let secs = if service_secs.is_finite() { service_secs.max(0.0) } else { 0.0 };
        let until = self.look(watch)? + secs;
        loop {
            let now = self.look(watch)?;
            if now >= until {
                return Ok(());
            }
            let wake = if watch == Watch::Running { until.min(self.deadline) } else { until };
            self.nap(wake - now).await;
        }
    }

    /// Waits while the batch is held (`Config::batch_hold`, until released).
    async fn hold(&self) -> Result<(), Stop> {
        loop {
            let now = self.look(Watch::Running)?;
            let released = self.shared.batches.with(&self.id, |b| b.released).ok_or(Stop::Gone)?;
            if released || !self.config().batch_hold {
                return Ok(());
            }
            self.nap(self.deadline - now).await;
        }
    }

    /// Sleeps up to `service_secs` (and at most `MAX_NAP`), or until the batch is acted on.
    async fn nap(&self, service_secs: f64) {
        let real = super::clock::real(service_secs, self.config().batch_hour_ms, MAX_NAP);
        tokio::select! {
            _ = self.notify.notified() => {}
            _ = tokio::time::sleep(real) => {}
        }
    }

    /// Ends the batch as `status`: writes its files (the lines not run, with `not_run`'s
    /// error, when it did not complete) and bills what was done.
    fn finish(&mut self, status: Status, not_run: Option<(&str, &str)>) -> Result<(), Stop> {
        // Output order is not guaranteed (research §1.7): the stand-in shuffles it, the same
        // way every time, so a client has to join on custom_id.
        let key = |custom_id: &str| crate::embedding::fnv1a(format!("{}/{custom_id}", self.id).as_bytes());
        let ok: Vec<&Done> = shuffled(self.done.iter().filter(|d| d.ok).collect(), |d| key(&d.custom_id));
        let mut failed: Vec<(u64, String)> =
            self.done.iter().filter(|d| !d.ok).map(|d| (key(&d.custom_id), d.text.clone())).collect();
        let mut unrun = 0;
        if let Some((code, message)) = not_run {
            for line in &self.lines[self.done.len()..] {
                let text = json!({
                    "id": errors::request_id(self.shared.next_id()),
                    "custom_id": line.custom_id,
                    "response": null,
                    "error": {"code": code, "message": message},
                })
                .to_string();
                failed.push((key(&line.custom_id), text));
                unrun += 1;
            }
        }
        let failed = shuffled(failed, |(k, _)| *k);
        let output = self.write(ok.iter().map(|d| d.text.as_str()));
        let error = self.write(failed.iter().map(|(_, t)| t.as_str()));
        for d in &self.done {
            self.bill(d);
        }
        let (completed, failed) = (ok.len() as u64, failed.len() as u64);
        let total = self.lines.len() as u64;
        let deadline = self.deadline as u64;
        debug_assert_eq!(completed + failed, self.done.len() as u64 + unrun);
        self.update(|b, now| {
            b.status = status;
            match status {
                Status::Completed => b.completed_at = Some(now),
                // When the window ended, not when the task noticed: at test speed a
                // millisecond late is minutes.
                Status::Expired => b.expired_at = Some(now.min(deadline)),
                _ => b.cancelled_at = Some(now),
            }
            b.output_file_id = output;
            b.error_file_id = error;
            b.total = total;
            b.completed = completed;
            b.failed = failed;
        })
    }

    /// A result file of these lines, None when there are none (S17: a batch without output
    /// has `output_file_id: null`).
    fn write<'a>(&self, lines: impl Iterator<Item = &'a str>) -> Option<String> {
        let mut text = String::new();
        for line in lines {
            text.push_str(line);
            text.push('\n');
        }
        if text.is_empty() {
            return None;
        }
        let filename = format!("{}_result.jsonl", self.id);
        let (id, _) = files::save(&self.shared, self.owner, &filename, PURPOSE_BATCH_OUTPUT, text.into());
        Some(id)
    }

    fn bill(&self, d: &Done) {
        let usage = &self.shared.usage;
        usage.inputs(&d.model, &self.hint, Billing::Batch, d.inputs);
        usage.ended(&d.model, &self.hint, Billing::Batch, Ending::Status(d.status));
        if let Some(tokens) = &d.tokens {
            usage.reported(&d.model, &self.hint, Billing::Batch, tokens, true);
        }
    }
}

/// `items` in the order of `key`, and never in the order they came in (when there are two
/// or more): a client that reads results in input order fails every time, not one time in
/// n factorial.
fn shuffled<T>(mut items: Vec<T>, key: impl Fn(&T) -> u64) -> Vec<T> {
    let keys: Vec<u64> = items.iter().map(&key).collect();
    items.sort_by_key(|i| key(i));
    if items.len() > 1 && items.iter().map(&key).eq(keys.iter().copied()) {
        items.reverse();
    }
    items
}

/// Answers one line as the live endpoint answers its body.
fn answer(shared: &Shared, config: &Config, endpoint: &str, line: &Line) -> Done {
    shared.counters.batch_lines_run.fetch_add(1, Ordering::Relaxed);
    let n = shared.next_id();
    let body = &line.body;
    let model = body.get("model").and_then(Value::as_str).unwrap_or_default().to_string();
    let kind = if endpoint == EMBEDDINGS_ENDPOINT { Kind::Embeddings } else { Kind::Chat };
    let inputs = inputs_of(kind, body);
    let fault = shared.take_scripted(&inputs);
    let refusal = |status: u16| Outcome::Respond {
        status,
        body: status_error(Api::Compatible, status, n, &model),
        retry_after: None,
    };
    let outcome = match &fault {
        _ if config.unavailable_models.contains(&model) => refusal(404),
        Some(Fault::Status(s)) => refusal(*s),
        Some(Fault::RateLimited { .. } | Fault::RateLimitedRaw { .. }) => refusal(429),
        Some(Fault::Inspection) => errors::respond(400, errors::inspection(Api::Compatible, n)),
        _ if endpoint == TEST_ENDPOINT => chat::batch_test_line(&model, n),
        _ if kind == Kind::Embeddings => embedding::embeddings(body, &model, &inputs, n),
        _ => chat::batch_line(body, &model, n),
    };
    // A spoiled answer keeps the usage of the answer it was.
    let tokens = match &outcome {
        Outcome::Respond { status: 200..=299, body, .. } => Tokens::of_answer(body),
        _ => None,
    };
    let outcome = match fault {
        Some(Fault::Malformed) => match outcome {
            Outcome::Respond { status: 200, .. } => Outcome::Raw {
                status: 200,
                headers: Vec::new(),
                content_type: "application/json",
                body: bytes::Bytes::from_static(b"{\"choices\": [truncated"),
            },
            other => other,
        },
        Some(
            f @ (Fault::NulInContent
            | Fault::NonFiniteEmbedding { .. }
            | Fault::NotJson
            | Fault::OffList
            | Fault::SchemaViolation),
        ) => faults::spoil(&f, kind, body, outcome, n),
        _ => outcome,
    };
    let request_id = errors::request_id(n);
    let (status, body_text, error) = match &outcome {
        Outcome::Respond { status, body, .. } => {
            let error = (!(200..300).contains(status)).then(|| {
                json!({
                    "code": body.pointer("/error/code").cloned().unwrap_or(Value::Null),
                    "message": body.pointer("/error/message").cloned().unwrap_or(Value::Null),
                })
            });
            (*status, body.to_string(), error)
        }
        Outcome::Raw { status, body, .. } => (*status, String::from_utf8_lossy(body).into_owned(), None),
        // Not made for a line: streams, padded bodies and resets come from faults filtered
        // out above, or from a request that asked to stream, which `batch_line` refuses.
        Outcome::Stream { .. } | Outcome::Padded { .. } | Outcome::Reset => {
            let e = status_error(Api::Compatible, 500, n, &model);
            (500, e.to_string(), Some(json!({"code": e["error"]["code"], "message": e["error"]["message"]})))
        }
    };
    Done {
        text: line_text(&request_id, &line.custom_id, status, &body_text, error.as_ref()),
        custom_id: line.custom_id.clone(),
        ok: error.is_none(),
        model,
        status,
        inputs: inputs.len() as u64,
        tokens: tokens.filter(|_| endpoint != TEST_ENDPOINT),
    }
}

/// One line of a result file (research §1.7, S17's output file): the answer as `response`,
/// with its status and request id, and `error` null for a success. A failed line carries the
/// live refusal as its response and its code and message as `error`: the failed-line shape
/// is UNCONFIRMED for Bailian (§1.7), and this is OpenAI's. The body is spliced in as text: a
/// fault may have made it something a JSON value cannot hold (a number beyond f32) or not
/// JSON at all.
fn line_text(request_id: &str, custom_id: &str, status: u16, body: &str, error: Option<&Value>) -> String {
    let quote = |s: &str| Value::String(s.to_string()).to_string();
    format!(
        "{{\"id\":{id},\"custom_id\":{custom_id},\"response\":{{\"status_code\":{status},\"request_id\":{id},\"body\":{body}}},\"error\":{error}}}",
        id = quote(request_id),
        custom_id = quote(custom_id),
        error = error.map_or_else(|| "null".to_string(), Value::to_string),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_never_come_in_input_order() {
        assert_eq!(shuffled(vec![1, 2, 3], |n| *n), [3, 2, 1]);
        assert_eq!(shuffled(vec![3, 1, 2], |n| *n), [1, 2, 3]);
        assert_eq!(shuffled(vec![7], |n| *n), [7]);
    }

    #[test]
    fn lines_are_json_in_the_documented_shape() {
        let text = line_text("r1", "a\"b", 200, r#"{"x":1}"#, None);
        let v: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(
            v,
            json!({"id": "r1", "custom_id": "a\"b", "error": null,
                   "response": {"status_code": 200, "request_id": "r1", "body": {"x": 1}}})
        );
        let error = json!({"code": "c", "message": "m"});
        let v: Value = serde_json::from_str(&line_text("r2", "b", 400, "{}", Some(&error))).unwrap();
        assert_eq!(
            (v["error"]["code"].as_str(), v["response"]["status_code"].as_u64()),
            (Some("c"), Some(400))
        );
    }
}
