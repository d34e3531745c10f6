//! The Batch File client (`batchfile`) against the stand-in over loopback HTTP: batches that
//! complete, fail lines, fail validation, expire and are cancelled, a client that leaves a
//! batch running and collects it later, what is refused before anything is sent, and the
//! Batch Chat host.

use bailian_core::batchfile::{
    self, Answer, BatchStatus, CompletionWindow, Endpoint, Expect, InputFile, Limits, Poll,
};
use bailian_core::client::{Call, Client};
use bailian_core::error::BatchRule;
use bailian_core::providers::{compatible, prompt_messages, EmbedInput, EmbeddingModel};
use bailian_core::registry::{self, Api};
use bailian_core::retry::RetryPolicy;
use bailian_core::runtime::Runtime;
use bailian_core::secret::ApiKey;
use bailian_core::AiError;
use bailian_standin::{key_hint, Config, Fault, Standin};
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;
use std::time::Duration;

const KEY: &str = "sk-batchtest0123456789";

/// Polls a few milliseconds apart: the stand-in's batches run at test speed.
const FAST_POLL: Poll = Poll { first: Duration::from_millis(2), max: Duration::from_millis(20) };

/// An hour of the batch service's clock in 100 ms: a batch's phases take well under a
/// millisecond and a 24h window lasts 2.4 s.
fn fast() -> Config {
    Config { batch_hour_ms: 100.0, ..Config::default() }
}

struct Fixture {
    standin: Standin,
    endpoint: String,
    key: ApiKey,
    rt: Runtime,
    client: Client,
}

impl Fixture {
    fn new(config: Config) -> Fixture {
        let standin = Standin::start(config).unwrap();
        let endpoint = standin.base_url();
        Fixture {
            standin,
            endpoint,
            key: ApiKey::new(KEY),
            rt: Runtime::new().unwrap(),
            client: Client::new().unwrap(),
        }
    }

    fn call(&self, model: &'static str) -> Call<'_> {
        Call {
            model,
            endpoint: &self.endpoint,
            key: &self.key,
            timeout: Duration::from_secs(5),
            retry: RetryPolicy {
                max_retries: 0,
                initial_delay: Duration::from_millis(10),
                max_delay: Duration::from_millis(10),
            },
            limiter: None,
            meter: None,
            max_response_bytes: 64 << 20,
            answers_budget: 0,
        }
    }

    fn block<T>(&self, fut: impl std::future::Future<Output = T>) -> T {
        match self.rt.block_on_interruptible(fut, &|| false) {
            Ok(out) => out,
            Err(e) => panic!("an uninterrupted wait ended with {e:?}"),
        }
    }

    /// Uploads `file` and creates its batch; the batch as created.
    fn submit(&self, call: &Call<'_>, file: &InputFile, endpoint: Endpoint) -> batchfile::Batch {
        let uploaded =
            self.block(batchfile::upload(&self.client, call, file.bytes.clone(), "input.jsonl")).unwrap();
        let window = CompletionWindow::parse("24h").unwrap();
        self.block(batchfile::create_batch(
            &self.client,
            call,
            &uploaded.id,
            endpoint,
            &window,
            &BTreeMap::new(),
        ))
        .unwrap()
    }

    fn wait(&self, call: &Call<'_>, id: &str) -> batchfile::Batch {
        self.block(batchfile::wait_for_batch(&self.client, call, id, &FAST_POLL)).unwrap()
    }
}

/// The body `ai_gen` sends live for `prompt` to `model`.
fn chat_body(endpoint: &str, model: &str, prompt: &str, params: Value) -> Value {
    let spec = registry::find(model).unwrap();
    let params: Map<String, Value> = params.as_object().cloned().unwrap_or_default();
    compatible::chat_request(spec, endpoint, prompt_messages(prompt, &params), &params).unwrap().body
}

fn chat_file(endpoint: &str, model: &str, prompts: &[(&str, &str)]) -> InputFile {
    let lines = prompts.iter().map(|(id, p)| (id.to_string(), chat_body(endpoint, model, p, json!({}))));
    let mut files = batchfile::input_files(Endpoint::ChatCompletions, lines, &Limits::default()).unwrap();
    assert_eq!(files.len(), 1);
    files.remove(0)
}

fn chat_answer(result: &Result<Answer, AiError>) -> &bailian_core::providers::ChatOutcome {
    match result {
        Ok(Answer::Chat(c)) => c,
        other => panic!("not a chat answer: {other:?}"),
    }
}

#[test]
fn a_chat_batch_answers_as_the_live_calls_do() {
    let f = Fixture::new(fast());
    let call = f.call("qwen-plus");
    let prompts = [("a", "one"), ("b", "two words"), ("c", "three more words")];
    let file = chat_file(&f.endpoint, "qwen-plus", &prompts);

    let uploaded = f.block(batchfile::upload(&f.client, &call, file.bytes.clone(), "chat.jsonl")).unwrap();
    assert!(uploaded.id.starts_with("file-batch-"), "{}", uploaded.id);
    assert_eq!(
        (uploaded.bytes, uploaded.filename.as_str(), uploaded.purpose.as_str()),
        (file.bytes.len() as u64, "chat.jsonl", "batch")
    );
    assert_eq!(f.standin.file_bytes(&uploaded.id).unwrap(), file.bytes, "uploaded byte for byte");
    let metadata = BTreeMap::from([("ds_name".to_string(), "pg_bailian test".to_string())]);
    let window = CompletionWindow::parse("2d").unwrap();
    let created = f
        .block(batchfile::create_batch(
            &f.client,
            &call,
            &uploaded.id,
            Endpoint::ChatCompletions,
            &window,
            &metadata,
        ))
        .unwrap();
    assert_eq!(created.status, BatchStatus::Validating);
    assert_eq!((created.request_counts.total, created.completion_window.as_str()), (0, "2d"));
    assert_eq!(created.metadata.as_ref().unwrap()["ds_name"], "pg_bailian test");
    assert_eq!(created.expires_at, created.created_at.map(|t| t + 48 * 3600));

    let batch = f.wait(&call, &created.id);
    assert_eq!(batch.status, BatchStatus::Completed);
    assert!(batch.status.is_terminal());
    assert_eq!((batch.request_counts.completed, batch.request_counts.failed), (3, 0));
    let results = f.block(batchfile::collect(&f.client, &call, &batch, &file.expected)).unwrap();
    assert_eq!((results.succeeded(), results.failed()), (3, 0));
    assert!(results.unreadable.is_empty() && results.unexpected.is_empty());

    // The same requests live: the same answers and the same usage.
    let mut live_tokens = 0;
    for (id, prompt) in prompts {
        let request = compatible::chat_request(
            registry::find("qwen-plus").unwrap(),
            &f.endpoint,
            prompt_messages(prompt, &Map::new()),
            &Map::new(),
        )
        .unwrap();
        let live = f.block(f.client.chat(&call, &request)).unwrap();
        let batched = chat_answer(results.get(id).unwrap());
        assert_eq!(batched.content, live.content, "{id}");
        assert_eq!(batched.tokens(), live.tokens(), "{id}");
        assert_eq!(batched.finish_reason, live.finish_reason);
        live_tokens += live.tokens().total_tokens;
    }
    assert_eq!(results.usage.total_tokens, live_tokens);
    // The stand-in billed the batch's tokens at the batch price, apart from the live ones.
    let billed = f.standin.batch_usage_of("qwen-plus", &key_hint(KEY));
    assert_eq!((billed.answered, billed.tokens.total_tokens), (3, live_tokens));
    assert_eq!(f.standin.usage_of("qwen-plus", &key_hint(KEY)).tokens.total_tokens, live_tokens);

    // Files are deleted once collected.
    let output = batch.output_file_id.clone().unwrap();
    for id in [&uploaded.id, &output] {
        assert!(f.block(batchfile::delete_file(&f.client, &call, id)).unwrap());
        assert!(f.standin.file_bytes(id).is_none());
    }
    let e = f.block(batchfile::delete_file(&f.client, &call, &output)).unwrap_err();
    assert_eq!(e.sqlstate(), "ZB404");
}

#[test]
fn an_embeddings_batch_answers_as_the_live_calls_do() {
    let f = Fixture::new(fast());
    let call = f.call("text-embedding-v4");
    let texts = [["a red fox", "jumps"], ["a blue whale", "sings"]];
    let lines = texts.iter().enumerate().map(|(i, pair)| {
        (format!("e{i}"), compatible::embedding_body("text-embedding-v4", pair, Some(64), true))
    });
    let files = batchfile::input_files(Endpoint::Embeddings, lines, &Limits::default()).unwrap();
    assert_eq!(files[0].expected[0].1, Expect::Embeddings { inputs: 2, dimension: Some(64) });
    let batch = f.submit(&call, &files[0], Endpoint::Embeddings);
    let batch = f.wait(&call, &batch.id);
    assert_eq!(batch.status, BatchStatus::Completed);
    let results = f.block(batchfile::collect(&f.client, &call, &batch, &files[0].expected)).unwrap();
    let model = EmbeddingModel {
        model_type: "text-embedding-v4",
        api: Api::Compatible,
        url: format!("{}/embeddings", f.endpoint),
        dimension: Some(64),
        choosable: true,
        per_request: 10,
    };
    for (i, pair) in texts.iter().enumerate() {
        let inputs: Vec<EmbedInput> = pair.iter().map(|t| EmbedInput::Text(t)).collect();
        let live = f.block(f.client.embed(&call, &model, &inputs)).unwrap();
        assert_eq!(results.get(&format!("e{i}")).unwrap().as_ref().unwrap(), &Answer::Embeddings(live));
    }
    assert_eq!(results.usage.total_tokens, f.standin.batch_usage_total().tokens.total_tokens);
    assert!(results.usage.total_tokens > 0);
}

#[test]
fn failed_lines_are_reported_by_custom_id() {
    let f = Fixture::new(fast());
    let call = f.call("qwen-plus");
    f.standin.script("boom", vec![Fault::Status(500)]);
    f.standin.script("cut", vec![Fault::Malformed]);
    f.standin.script("nul", vec![Fault::NulInContent]);
    let mut lines: Vec<(String, Value)> = ["fine", "boom", "cut", "nul"]
        .iter()
        .map(|p| (p.to_string(), chat_body(&f.endpoint, "qwen-plus", p, json!({}))))
        .collect();
    lines.push(("hot".into(), chat_body(&f.endpoint, "qwen-plus", "hot", json!({"temperature": 5}))));
    let file =
        batchfile::input_files(Endpoint::ChatCompletions, lines, &Limits::default()).unwrap().remove(0);
    let batch = f.submit(&call, &file, Endpoint::ChatCompletions);
    let batch = f.wait(&call, &batch.id);
    assert_eq!(batch.status, BatchStatus::Completed, "a batch with failed lines still completes");
    assert_eq!((batch.request_counts.completed, batch.request_counts.failed), (3, 2));
    let results = f.block(batchfile::collect(&f.client, &call, &batch, &file.expected)).unwrap();
    let error = |id: &str| results.get(id).unwrap().clone().unwrap_err();

    assert_eq!(chat_answer(results.get("fine").unwrap()).content, "Echo from qwen-plus: fine");
    // A line the live endpoint refuses fails as the live call would: the same status, the
    // same code, the same SQLSTATE.
    match error("hot") {
        AiError::Provider { status: 400, code, message, .. } => {
            assert_eq!(
                (code.as_str(), message.as_str()),
                ("invalid_parameter_error", "Range of temperature should be [0.0, 2.0)")
            )
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(error("boom").sqlstate(), "ZB500");
    // A line that is not JSON cannot be joined: the request is missing, the line reported.
    assert!(matches!(error("cut"), AiError::BatchLineFailed { code, .. } if code == "missing"));
    assert_eq!(results.unreadable.len(), 1);
    // An answer the live parser refuses is refused here too.
    let nul = error("nul");
    assert_eq!(nul.sqlstate(), "ZBM01");
    assert!(nul.to_string().contains("NUL"), "{nul}");
    assert!(results.lines.iter().filter_map(|(_, r)| r.as_ref().err()).all(AiError::is_row_failure));
}

#[test]
fn a_batch_that_fails_validation_has_no_answers() {
    let f = Fixture::new(fast());
    let call = f.call("batch-test-model");
    // S17: the test model's batch, its line's url mistyped (written by hand: `input_files`
    // writes the endpoint's url).
    let line = json!({"custom_id": "1", "method": "POST", "url": "/v1/chat/completion",
                      "body": {"model": "batch-test-model", "messages": [{"role": "user", "content": "hi"}]}});
    let file = InputFile {
        bytes: format!("{line}\n").into_bytes(),
        expected: vec![("1".into(), Expect::Chat)],
        model: "batch-test-model".into(),
    };
    let batch = f.submit(&call, &file, Endpoint::Test);
    let batch = f.wait(&call, &batch.id);
    assert_eq!(batch.status, BatchStatus::Failed);
    assert_eq!(batch.errors.len(), 1);
    let e = &batch.errors[0];
    assert_eq!(
        (e.code.as_deref(), e.param.as_deref(), e.line),
        (Some("url_not_found"), Some("url"), Some(1))
    );
    assert!(batch.failed_at.is_some() && batch.in_progress_at.is_none());
    let e = f.block(batchfile::collect(&f.client, &call, &batch, &file.expected)).unwrap_err();
    assert_eq!(e.sqlstate(), "ZBF02");
    assert!(e.to_string().contains("line 1: url_not_found: The provided url '/v1/chat/completion'"), "{e}");
    assert!(e.hint().is_some());

    // Written by input_files, the test model's batch answers its fixed text, for free.
    let lines = [(
        "t".to_string(),
        json!({"model": "batch-test-model", "messages": [{"role": "user", "content": "hi"}]}),
    )];
    let file = batchfile::input_files(Endpoint::Test, lines, &Limits::default()).unwrap().remove(0);
    let batch = f.wait(&call, &f.submit(&call, &file, Endpoint::Test).id);
    let results = f.block(batchfile::collect(&f.client, &call, &batch, &file.expected)).unwrap();
    assert_eq!(chat_answer(results.get("t").unwrap()).content, "This is a test result.");
    assert_eq!(results.usage.total_tokens, 0);
}

#[test]
fn an_expired_batch_keeps_the_lines_it_did() {
    // An hour in 50 ms, an hour a line: of 30 lines, those done in the 24h window (1.2 s)
    // are answered, the rest are not run.
    let f = Fixture::new(Config { batch_hour_ms: 50.0, batch_line_secs: 3600.0, ..Config::default() });
    let call = f.call("qwen-flash");
    let prompts: Vec<(String, String)> = (0..30).map(|i| (format!("r{i}"), format!("line {i}"))).collect();
    let prompts: Vec<(&str, &str)> = prompts.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
    let file = chat_file(&f.endpoint, "qwen-flash", &prompts);
    let batch = f.wait(&call, &f.submit(&call, &file, Endpoint::ChatCompletions).id);
    assert_eq!(batch.status, BatchStatus::Expired);
    let done = batch.request_counts.completed as usize;
    assert!((1..30).contains(&done), "{batch:?}");
    let results = f.block(batchfile::collect(&f.client, &call, &batch, &file.expected)).unwrap();
    assert_eq!((results.succeeded(), results.failed()), (done, 30 - done));
    for (id, result) in &results.lines {
        match result {
            Ok(answer) => {
                assert!(chat_answer(&Ok(answer.clone())).content.starts_with("Echo from qwen-flash: line"))
            }
            Err(AiError::BatchLineFailed { code, custom_id, .. }) => {
                assert_eq!((code.as_str(), custom_id), ("batch_expired", id));
            }
            Err(other) => panic!("{other:?}"),
        }
    }
    let billed = f.standin.batch_usage_of("qwen-flash", &key_hint(KEY));
    assert_eq!((billed.answered, billed.tokens.total_tokens), (done as u64, results.usage.total_tokens));
}

#[test]
fn a_client_can_leave_a_batch_running_and_collect_it_later_or_cancel_it() {
    let f = Fixture::new(Config { batch_hold: true, ..fast() });
    let call = f.call("qwen-plus");
    let file = chat_file(&f.endpoint, "qwen-plus", &[("a", "first"), ("b", "second")]);
    let kept = f.submit(&call, &file, Endpoint::ChatCompletions);
    let cancelled = f.submit(&call, &file, Endpoint::ChatCompletions);
    // The client returns while Bailian works: the batches stay in progress.
    for id in [&kept.id, &cancelled.id] {
        let mut batch = f.block(batchfile::retrieve_batch(&f.client, &call, id)).unwrap();
        for _ in 0..200 {
            if batch.status == BatchStatus::InProgress {
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
            batch = f.block(batchfile::retrieve_batch(&f.client, &call, id)).unwrap();
        }
        assert_eq!(batch.status, BatchStatus::InProgress);
        assert!(!batch.status.is_terminal());
        let e = f.block(batchfile::collect(&f.client, &call, &batch, &file.expected)).unwrap_err();
        assert_eq!(e.sqlstate(), "22023", "not ended: {e}");
    }

    let batch = f.block(batchfile::cancel_batch(&f.client, &call, &cancelled.id)).unwrap();
    assert_eq!(batch.status, BatchStatus::Cancelling);
    let batch = f.wait(&call, &cancelled.id);
    assert_eq!(batch.status, BatchStatus::Cancelled);
    assert!(batch.output_file_id.is_none() && batch.error_file_id.is_some());
    let results = f.block(batchfile::collect(&f.client, &call, &batch, &file.expected)).unwrap();
    assert!(results
        .lines
        .iter()
        .all(|(_, r)| matches!(r, Err(AiError::BatchLineFailed { code, .. }) if code == "batch_cancelled")));
    assert_eq!(results.usage.total_tokens, 0);
    let e = f.block(batchfile::cancel_batch(&f.client, &call, &cancelled.id)).unwrap_err();
    assert_eq!(e.sqlstate(), "ZB400", "an ended batch cannot be cancelled: {e}");

    // Later, Bailian gets to the other one; the client collects it.
    assert_eq!(f.standin.release_batches(), 1);
    let batch = f.wait(&call, &kept.id);
    let results = f.block(batchfile::collect(&f.client, &call, &batch, &file.expected)).unwrap();
    assert_eq!(chat_answer(results.get("b").unwrap()).content, "Echo from qwen-plus: second");
    assert_eq!(
        f.standin.batch_usage_of("qwen-plus", &key_hint(KEY)).answered,
        2,
        "the cancelled batch cost nothing"
    );
}

#[test]
fn what_bailian_would_refuse_is_refused_before_anything_is_sent() {
    let f = Fixture::new(fast());
    let call = f.call("qwen-plus");
    let body = |model: &str, prompt: &str| chat_body(&f.endpoint, model, prompt, json!({}));
    let refused = |lines: Vec<(String, Value)>, limits: &Limits| match batchfile::input_files(
        Endpoint::ChatCompletions,
        lines,
        limits,
    )
    .unwrap_err()
    {
        AiError::BatchInput { rule, line, .. } => (rule, line),
        other => panic!("{other:?}"),
    };
    let defaults = Limits::default();
    let two_models = vec![("a".into(), body("qwen-plus", "x")), ("b".into(), body("qwen-flash", "y"))];
    assert_eq!(refused(two_models, &defaults), (BatchRule::MixedModels, 2));
    let twice = vec![("a".into(), body("qwen-plus", "x")), ("a".into(), body("qwen-plus", "y"))];
    assert_eq!(refused(twice, &defaults), (BatchRule::DuplicateCustomId, 2));
    let long_id = vec![("i".repeat(257), body("qwen-plus", "x"))];
    assert_eq!(refused(long_id, &defaults), (BatchRule::CustomIdTooLong, 1));
    let small = Limits { max_line_bytes: 200, ..defaults };
    assert_eq!(
        refused(vec![("a".into(), body("qwen-plus", &"word ".repeat(100)))], &small),
        (BatchRule::LineTooLarge, 1)
    );
    // Split rather than refused: more lines than a file takes.
    let many: Vec<(String, Value)> = (0..5).map(|i| (format!("r{i}"), body("qwen-plus", "x"))).collect();
    let files = batchfile::input_files(Endpoint::ChatCompletions, many, &Limits { max_lines: 2, ..defaults })
        .unwrap();
    assert_eq!(files.len(), 3);
    // Ids that would reach another path, and windows Bailian does not take.
    for bad in ["../files", "batch_1/cancel", "a?b=c"] {
        let e = f.block(batchfile::retrieve_batch(&f.client, &call, bad)).unwrap_err();
        assert_eq!(e.sqlstate(), "22023", "{bad}");
    }
    assert!(CompletionWindow::parse("15d").is_err() && CompletionWindow::hours(23).is_err());
    let window = CompletionWindow::hours(24).unwrap();
    let name = BTreeMap::from([("ds_name".to_string(), "n".repeat(101))]);
    let e = f
        .block(batchfile::create_batch(
            &f.client,
            &call,
            "file-batch-x",
            Endpoint::ChatCompletions,
            &window,
            &name,
        ))
        .unwrap_err();
    assert_eq!(e.sqlstate(), "22023");
    assert_eq!(f.standin.stats().requests, 0, "nothing was sent");

    // What only the service knows, it refuses: a model without batch, a key it does not take.
    let file = chat_file(&f.endpoint, "deepseek-v3.1", &[("a", "x")]);
    let uploaded = f.block(batchfile::upload(&f.client, &call, file.bytes.clone(), "t.jsonl")).unwrap();
    let e = f
        .block(batchfile::create_batch(
            &f.client,
            &call,
            &uploaded.id,
            Endpoint::ChatCompletions,
            &window,
            &BTreeMap::new(),
        ))
        .unwrap_err();
    assert_eq!(e.sqlstate(), "ZB404");
    assert!(
        e.to_string().contains("The provided model deepseek-v3.1 is not supported by the Batch API."),
        "{e}"
    );
    let wrong = ApiKey::new("not-a-key");
    let e =
        f.block(batchfile::retrieve_batch(&f.client, &Call { key: &wrong, ..call }, "batch_x")).unwrap_err();
    assert_eq!(e.sqlstate(), "ZB401");
}

#[test]
fn the_batch_chat_host_is_the_same_call_elsewhere() {
    // Batch Chat: the live chat request, sent to another host, billed at the batch price.
    let f = Fixture::new(Config { batch_chat: true, ..Config::default() });
    let call = f.call("qwen-plus");
    let request = |model: &str| {
        compatible::chat_request(
            registry::find(model).unwrap(),
            &f.endpoint,
            prompt_messages("hi", &Map::new()),
            &Map::new(),
        )
        .unwrap()
    };
    let out = f.block(f.client.chat(&call, &request("qwen-plus"))).unwrap();
    assert_eq!(out.content, "Echo from qwen-plus: hi");
    assert_eq!(
        f.standin.batch_usage_of("qwen-plus", &key_hint(KEY)).tokens.total_tokens,
        out.tokens().total_tokens
    );
    assert_eq!(f.standin.usage_total().requests, 0);
    let e = f.block(f.client.chat(&call, &request("qwen-max"))).unwrap_err();
    assert_eq!(e.sqlstate(), "ZB404");
    assert!(e.to_string().contains("not supported by Batch Chat"), "{e}");
}
