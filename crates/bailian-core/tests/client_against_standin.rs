//! The HTTP client and retry loop against the stand-in over real loopback HTTP, no database.

use bailian_core::client::{Call, Client};
use bailian_core::providers::{compatible, prompt_messages, ChatRequest, EmbedInput, EmbeddingModel};
use bailian_core::registry::{self, Api};
use bailian_core::retry::{RetryPolicy, MAX_RETRY_AFTER};
use bailian_core::runtime::Runtime;
use bailian_core::secret::ApiKey;
use bailian_core::{AiError, ResponseLimit};
use bailian_standin::{Config, Fault, Standin};
use serde_json::Map;
use std::time::{Duration, Instant};

const KEY: &str = "sk-clienttest0123456789";

/// pg_bailian.max_response_size's default; tests of the cap set their own.
const DEFAULT_CAP: u64 = 64 << 20;

fn chat_request(endpoint: &str, prompt: &str) -> ChatRequest {
    let spec = registry::find("qwen-plus").unwrap();
    compatible::chat_request(spec, endpoint, prompt_messages(prompt, &Map::new()), &Map::new()).unwrap()
}

fn v4(endpoint: &str, dimension: u32) -> EmbeddingModel {
    EmbeddingModel {
        model_type: "text-embedding-v4",
        api: Api::Compatible,
        url: format!("{endpoint}/embeddings"),
        dimension: Some(dimension),
        choosable: true,
        per_request: 10,
    }
}

fn policy(max_retries: u32, initial: f64, max: f64) -> RetryPolicy {
    RetryPolicy {
        max_retries,
        initial_delay: Duration::from_secs_f64(initial),
        max_delay: Duration::from_secs_f64(max),
    }
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

    fn call(&self, retry: RetryPolicy, timeout: f64) -> Call<'_> {
        Call {
            model: "m1",
            endpoint: &self.endpoint,
            key: &self.key,
            timeout: Duration::from_secs_f64(timeout),
            retry,
            limiter: None,
            meter: None,
            max_response_bytes: DEFAULT_CAP,
            answers_budget: 0,
        }
    }

    /// Runs `fut` on the fixture's runtime, never interrupted.
    fn block<T>(&self, fut: impl std::future::Future<Output = T>) -> T {
        match self.rt.block_on_interruptible(fut, &|| false) {
            Ok(out) => out,
            Err(e) => panic!("an uninterrupted wait ended with {e:?}"),
        }
    }

    fn gen(&self, call: &Call<'_>, prompt: &str) -> Result<String, AiError> {
        self.block(self.client.chat(call, &chat_request(call.endpoint, prompt))).map(|o| o.content)
    }

    fn embed(&self, call: &Call<'_>, inputs: &[&str], dimension: u32) -> Result<Vec<Vec<f32>>, AiError> {
        let inputs: Vec<EmbedInput> = inputs.iter().map(|t| EmbedInput::Text(t)).collect();
        self.block(self.client.embed(call, &v4(call.endpoint, dimension), &inputs))
    }

    /// Waits until the stand-in has closed every connection: a client that stopped reading
    /// closes its end, and the stand-in notices when it next writes. The client's connection
    /// tasks run only while its runtime does (as in a backend, between calls nothing runs), so
    /// the wait is spent in it.
    fn wait_for_connections_closed(&self) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.standin.stats().connections_open > 0 && Instant::now() < deadline {
            self.block(async { tokio::time::sleep(Duration::from_millis(10)).await });
        }
        assert_eq!(self.standin.stats().connections_open, 0, "a connection stayed open");
    }
}

#[test]
fn chat_and_embeddings_round_trip() {
    let f = Fixture::new(Config::default());
    let call = f.call(policy(0, 0.5, 1.0), 5.0);
    assert_eq!(f.gen(&call, "hello").unwrap(), "Echo from qwen-plus: hello");
    let v = f.embed(&call, &["a b", "c"], 64).unwrap();
    assert_eq!(v[0], bailian_standin::embedding_for("a b", 64));
    assert_eq!(v[1], bailian_standin::embedding_for("c", 64));
    let log = f.standin.requests();
    assert_eq!(log[0].auth_hint, "sk-...6789");
}

#[test]
fn rerank_scores_come_back_in_document_order() {
    let f = Fixture::new(Config::default());
    let call = f.call(policy(0, 0.5, 1.0), 5.0);
    let root = bailian_core::providers::multimodal::native_root(&f.endpoint).unwrap();
    let url = format!("{root}{}", bailian_core::providers::rerank::PATH);
    let docs = ["unrelated words", "a fast database", "fast database engine"];
    let scores = f.block(f.client.rerank(&call, "gte-rerank-v2", &url, "fast database", &docs)).unwrap();
    // The stand-in scores by the share of query words a document holds (rerank.rs).
    assert_eq!(scores, [0.0, 1.0, 1.0]);
    let e = f.block(f.client.rerank(&call, "no-such-rerank", &url, "q", &["d"])).unwrap_err();
    assert_eq!(e.sqlstate(), "ZB400");
}

#[test]
fn retries_transient_errors_with_backoff() {
    let f = Fixture::new(Config::default());
    f.standin.script("flaky", vec![Fault::Status(500), Fault::Status(429), Fault::Status(503)]);
    let start = Instant::now();
    let out = f.gen(&f.call(policy(3, 0.5, 1.0), 5.0), "flaky").unwrap();
    let took = start.elapsed().as_secs_f64();
    assert_eq!(out, "Echo from qwen-plus: flaky");
    assert_eq!(f.standin.stats().requests, 4);
    // Backoff 0.5, 1.0, 1.0 (capped), each jittered down by at most 25%.
    assert!((1.8..3.5).contains(&took), "took {took}");
}

#[test]
fn gives_up_after_max_retries_and_never_retries_other_4xx() {
    let f = Fixture::new(Config::default());
    f.standin.script("down", vec![Fault::Status(500); 10]);
    let e = f.gen(&f.call(policy(2, 0.5, 1.0), 5.0), "down").unwrap_err();
    assert!(matches!(e, AiError::RetriesExhausted { attempts: 3, .. }), "{e:?}");
    assert!(e.to_string().contains("failed after 3 attempts: HTTP 500 internal_error"), "{e}");
    assert_eq!(f.standin.stats().requests, 3);

    f.standin.reset();
    f.standin.script("bad", vec![Fault::Status(400)]);
    let e = f.gen(&f.call(policy(5, 0.5, 1.0), 5.0), "bad").unwrap_err();
    assert_eq!(e.sqlstate(), "ZB400");
    f.standin.script("nsfw", vec![Fault::Inspection]);
    let e = f.gen(&f.call(policy(5, 0.5, 1.0), 5.0), "nsfw").unwrap_err();
    assert!(e.to_string().contains("HTTP 400 data_inspection_failed"), "{e}");
    assert_eq!(f.standin.stats().requests, 2);
}

#[test]
fn honours_retry_after() {
    let f = Fixture::new(Config::default());
    f.standin.script("slowdown", vec![Fault::RateLimited { retry_after_secs: 2.0 }]);
    let start = Instant::now();
    f.gen(&f.call(policy(1, 0.5, 1.0), 5.0), "slowdown").unwrap();
    let took = start.elapsed().as_secs_f64();
    assert!((2.0..3.0).contains(&took), "took {took}");
}

#[test]
fn timeouts_connection_errors_and_malformed_bodies() {
    let f = Fixture::new(Config::default());
    f.standin.script("slow", vec![Fault::Delay(3000)]);
    let e = f.gen(&f.call(policy(0, 0.5, 1.0), 1.0), "slow").unwrap_err();
    assert!(matches!(e, AiError::Timeout { attempts: 1, .. }), "{e:?}");
    assert_eq!(e.sqlstate(), "ZBT01");

    f.standin.script("garbage", vec![Fault::Malformed]);
    let e = f.gen(&f.call(policy(3, 0.5, 1.0), 5.0), "garbage").unwrap_err();
    assert_eq!(e.sqlstate(), "ZBM01", "{e}");

    f.standin.script("reset", vec![Fault::Reset, Fault::Reset]);
    let out = f.gen(&f.call(policy(2, 0.5, 1.0), 5.0), "reset");
    assert_eq!(out.unwrap(), "Echo from qwen-plus: reset");

    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let endpoint = format!("http://{closed}/v1");
    let call = Call { endpoint: &endpoint, ..f.call(policy(1, 0.5, 1.0), 5.0) };
    let e = f.gen(&call, "x").unwrap_err();
    assert!(matches!(e, AiError::Connect { attempts: 2, .. }), "{e:?}");
    assert!(e.to_string().to_lowercase().contains("connection refused"), "{e}");
}

#[test]
fn provider_errors_never_carry_the_key() {
    let f = Fixture::new(Config {
        accepted_keys: Some(vec!["sk-someoneelse000000".into()]),
        echo_key_in_errors: true,
        ..Config::default()
    });
    let e = f.gen(&f.call(policy(3, 0.5, 1.0), 5.0), "x").unwrap_err();
    assert_eq!(e.sqlstate(), "ZB401");
    let text = format!("{e} {e:?} {:?} {:?}", e.hint(), e.detail());
    assert!(!text.contains("clienttest0123456789"), "{text}");
    assert!(text.contains("sk-...6789"), "{text}");
    assert_eq!(f.standin.stats().requests, 1, "401 is not retried");
}

#[test]
fn sequential_calls_reuse_one_connection() {
    let f = Fixture::new(Config::default());
    let call = f.call(policy(0, 0.5, 1.0), 5.0);
    for i in 0..300 {
        f.gen(&call, &format!("n{i}")).unwrap();
    }
    let s = f.standin.stats();
    assert_eq!(s.requests, 300);
    assert!(s.connections_accepted <= 2, "{s:?}");
}

#[test]
fn dropping_a_request_closes_it_at_the_server() {
    let f = Fixture::new(Config::default());
    f.standin.script("hold", vec![Fault::Hang]);
    let call = f.call(policy(0, 0.5, 1.0), 60.0);
    let start = Instant::now();
    let r = f.rt.block_on_interruptible(f.client.chat(&call, &chat_request(&f.endpoint, "hold")), &|| {
        start.elapsed() > Duration::from_millis(300)
    });
    assert_eq!(r.unwrap_err(), AiError::Interrupted);
    let deadline = Instant::now() + Duration::from_secs(2);
    while f.standin.stats().aborted == 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let s = f.standin.stats();
    assert_eq!(s.aborted, 1, "{s:?}");
    assert_eq!(s.in_flight, 0, "{s:?}");
}

#[test]
fn a_refused_batch_is_retried_input_by_input() {
    let f = Fixture::new(Config::default());
    f.standin.script("bad apple", vec![Fault::Inspection, Fault::Inspection]);
    let call = f.call(policy(0, 0.5, 1.0), 5.0);
    let inputs = ["good one", "bad apple", "good two"];
    let out = f.block(bailian_core::client::embed_each(
        &f.client,
        &call,
        &v4(&f.endpoint, 64),
        &inputs.map(EmbedInput::Text),
    ));
    assert_eq!(out[0].as_ref().unwrap(), &bailian_standin::embedding_for("good one", 64));
    assert_eq!(out[1].as_ref().unwrap_err().sqlstate(), "ZB400");
    assert_eq!(out[2].as_ref().unwrap(), &bailian_standin::embedding_for("good two", 64));
    let sizes: Vec<usize> = f.standin.requests().iter().map(|r| r.inputs.len()).collect();
    assert_eq!(sizes, vec![3, 1, 1, 1]);
}

// ---- An endpoint that is not to be trusted: every fault below is one Bailian does not
// ---- document, but whatever answers at base_url can send.

fn oversized(bytes: u64, content_length: bool) -> Fault {
    Fault::Oversized { bytes, content_length }
}

#[test]
fn a_declared_huge_body_is_refused_before_reading_it() {
    let f = Fixture::new(Config::default());
    f.standin.script("huge", vec![oversized(1 << 30, true)]);
    // One byte short: a client that read up to the cap before deciding would read 1 GB.
    let cap = (1 << 30) - 1;
    let call = Call { max_response_bytes: cap, ..f.call(policy(3, 0.5, 1.0), 30.0) };
    let start = Instant::now();
    let e = f.gen(&call, "huge").unwrap_err();
    let took = start.elapsed();
    assert_eq!(
        e,
        AiError::ResponseTooLarge { model: "m1".into(), limit_bytes: cap, limit: ResponseLimit::OneAnswer }
    );
    assert_eq!(e.sqlstate(), "ZBM02");
    assert!(e.to_string().contains("exceeds pg_bailian.max_response_size (1073741823 bytes)"), "{e}");
    // Reading 1 GB over loopback takes seconds even in a release build.
    assert!(took < Duration::from_millis(1500), "took {took:?}");
    assert_eq!(f.standin.stats().requests, 1, "a too-large answer is not retried");
    f.wait_for_connections_closed();
    // What the sockets buffered, no more.
    let sent = f.standin.stats().oversized_bytes_sent;
    assert!(sent < 64 << 20, "the stand-in got to send {sent} bytes");
}

#[test]
fn a_chunked_body_over_the_cap_is_cut_off() {
    let f = Fixture::new(Config::default());
    f.standin.script("endless", vec![oversized(1 << 30, false)]);
    let call = Call { max_response_bytes: 1 << 20, ..f.call(policy(3, 0.5, 1.0), 30.0) };
    let start = Instant::now();
    let e = f.gen(&call, "endless").unwrap_err();
    let took = start.elapsed();
    assert!(matches!(e, AiError::ResponseTooLarge { limit_bytes: 1048576, .. }), "{e:?}");
    assert_eq!(e.sqlstate(), "ZBM02");
    assert!(took < Duration::from_millis(1500), "took {took:?}");
    assert_eq!(f.standin.stats().requests, 1);
    f.wait_for_connections_closed();
    let sent = f.standin.stats().oversized_bytes_sent;
    // The client read past the cap (so it saw the body was too large) but stopped there:
    // what the stand-in got out is the cap plus what the sockets buffer.
    assert!(sent > 1 << 20 && sent < 64 << 20, "the stand-in got to send {sent} bytes");
}

#[test]
fn bodies_up_to_the_cap_are_read_whole() {
    let f = Fixture::new(Config::default());
    let cap: u64 = 256 << 10;
    let call = Call { max_response_bytes: cap, ..f.call(policy(0, 0.5, 1.0), 10.0) };
    for declared in [true, false] {
        f.standin.script("fits", vec![oversized(cap, declared)]);
        let text = f.gen(&call, "fits").unwrap();
        assert!(text.starts_with("Echo from qwen-plus: fits"), "declared {declared}");
        assert!(text.len() as u64 > cap - 400 && text.len() as u64 <= cap, "{}", text.len());
        f.standin.script("one more", vec![oversized(cap + 1, declared)]);
        let e = f.gen(&call, "one more").unwrap_err();
        assert!(matches!(e, AiError::ResponseTooLarge { .. }), "declared {declared}: {e:?}");
    }
    // Embeddings answers are capped the same way; padding below the cap changes nothing.
    f.standin.script("padded", vec![oversized(cap, false), oversized(cap + 1, true)]);
    let v = f.embed(&call, &["padded", "b"], 64).unwrap();
    assert_eq!(v[0], bailian_standin::embedding_for("padded", 64));
    let e = f.embed(&call, &["padded", "b"], 64).unwrap_err();
    assert_eq!(e.sqlstate(), "ZBM02");
}

#[test]
fn error_bodies_over_the_cap_keep_their_status() {
    let f = Fixture::new(Config::default());
    // A cap smaller than any error body: the status still decides what the error is.
    let call = Call { max_response_bytes: 10, ..f.call(policy(0, 0.5, 1.0), 5.0) };
    f.standin.script("busy", vec![Fault::Status(429)]);
    let e = f.gen(&call, "busy").unwrap_err();
    assert!(matches!(e, AiError::RetriesExhausted { attempts: 1, .. }), "{e:?}");
    assert!(e.to_string().contains("HTTP 429 -: {\"error\":"), "the first 10 bytes: {e}");
    f.standin.script("nokey", vec![Fault::Status(401)]);
    let e = f.gen(&call, "nokey").unwrap_err();
    assert_eq!(e.sqlstate(), "ZB401");
    assert!(e.to_string().contains("HTTP 401 -: {\"error\":"), "{e}");
    // A 5xx over the cap is still retried, like any 5xx.
    f.standin.script("down", vec![Fault::Status(500); 2]);
    let call = Call { retry: policy(1, 0.1, 0.2), ..call };
    let e = f.gen(&call, "down").unwrap_err();
    assert!(matches!(e, AiError::RetriesExhausted { attempts: 2, .. }), "{e:?}");
    assert_eq!(f.standin.stats().requests, 4);
}

#[test]
fn a_nul_in_the_answer_is_malformed() {
    let f = Fixture::new(Config::default());
    f.standin.script("nul", vec![Fault::NulInContent]);
    let e = f.gen(&f.call(policy(3, 0.5, 1.0), 5.0), "nul").unwrap_err();
    assert!(matches!(e, AiError::MalformedResponse { .. }), "{e:?}");
    assert_eq!(e.sqlstate(), "ZBM01");
    assert!(e.to_string().contains("NUL character (U+0000)"), "{e}");
    assert!(e.to_string().contains("PostgreSQL text cannot hold"), "{e}");
    assert_eq!(f.standin.stats().requests, 1, "a malformed answer is not retried");
    // Embeddings have no text to carry one: the fault leaves them alone.
    f.standin.script("nul", vec![Fault::NulInContent]);
    assert!(f.embed(&f.call(policy(0, 0.5, 1.0), 5.0), &["nul"], 64).is_ok());
}

#[test]
fn non_finite_embeddings_are_malformed() {
    let f = Fixture::new(Config::default());
    let call = f.call(policy(3, 0.5, 1.0), 5.0);
    for literal in ["1e39", "-1e39", "3.5e38", "1E+300"] {
        f.standin.script("inf", vec![Fault::NonFiniteEmbedding { literal: literal.into() }]);
        let e = f.embed(&call, &["first", "inf"], 64).unwrap_err();
        assert_eq!(e.sqlstate(), "ZBM01", "{literal}: {e:?}");
        // The stand-in puts the literal at the last value of the last vector.
        assert!(e.to_string().contains("data[1] (index 1) embedding[63] is not a finite"), "{literal}: {e}");
    }
    assert_eq!(f.standin.stats().requests, 4, "none of them retried");
    // Within f32's range it is a number like any other.
    f.standin.script("big", vec![Fault::NonFiniteEmbedding { literal: "3.4e38".into() }]);
    let v = f.embed(&call, &["big"], 64).unwrap();
    assert_eq!(v[0][63], 3.4e38);
    // Beyond f64's range serde_json refuses the number itself.
    f.standin.script("huge", vec![Fault::NonFiniteEmbedding { literal: "1e400".into() }]);
    assert_eq!(f.embed(&call, &["huge"], 64).unwrap_err().sqlstate(), "ZBM01");
}

#[test]
fn retry_after_of_any_shape_is_survived() {
    let f = Fixture::new(Config::default());
    let once = f.call(policy(0, 0.5, 1.0), 5.0);
    let values = [
        "99999999999999999999999999999999",
        "18446744073709551616",
        "-5",
        "1e309",
        "NaN",
        "inf",
        "",
        "soon",
        "Wed, 21 Oct 2015 07:28:00 GMT",
        "Fri, 31 Dec 9999 23:59:59 GMT",
        "１２０",
    ];
    for value in values {
        f.standin.script("busy", vec![Fault::RateLimitedRaw { retry_after: value.into() }]);
        let start = Instant::now();
        let e = f.gen(&once, "busy").unwrap_err();
        assert!(matches!(e, AiError::RetriesExhausted { attempts: 1, .. }), "{value:?}: {e:?}");
        assert_eq!(e.sqlstate(), "ZBR01");
        assert!(start.elapsed() < Duration::from_secs(1), "{value:?}");
    }
    let log = f.standin.requests();
    assert!(log.iter().all(|r| r.status == 429 && !r.fault.as_deref().unwrap_or("").contains("left out")));
}

#[test]
fn retry_after_waits_are_bounded_and_dates_count() {
    let f = Fixture::new(Config::default());
    let retry_once = f.call(policy(1, 0.2, 0.4), 10.0);
    let timed = |value: String| {
        f.standin.script("busy", vec![Fault::RateLimitedRaw { retry_after: value.clone() }]);
        let start = Instant::now();
        assert_eq!(f.gen(&retry_once, "busy").unwrap(), "Echo from qwen-plus: busy", "{value}");
        start.elapsed().as_secs_f64()
    };
    // Nothing usable: the backoff alone (0.2 s less up to 25% jitter).
    for value in ["-5", "garbage", "Wed, 21 Oct 2015 07:28:00 GMT"] {
        let took = timed(value.into());
        assert!((0.14..0.9).contains(&took), "{value}: took {took}");
    }
    // An HTTP-date 3 s ahead (whole seconds, so 2 to 3 s from now).
    let date = httpdate::fmt_http_date(std::time::SystemTime::now() + Duration::from_secs(3));
    let took = timed(date.clone());
    assert!((1.9..3.6).contains(&took), "{date}: took {took}");
}

#[test]
fn a_huge_retry_after_is_capped() {
    // What the client would wait on a huge Retry-After, without waiting it.
    let p = policy(5, 0.5, 1.0);
    for value in ["99999999999999999999999999999999", "18446744073709551616", "86400"] {
        let ra = bailian_core::retry::parse_retry_after(value);
        assert_eq!(ra, Some(MAX_RETRY_AFTER), "{value}");
        assert_eq!(p.delay(1, ra), MAX_RETRY_AFTER);
    }
}

#[test]
fn redirects_are_not_followed() {
    let f = Fixture::new(Config::default());
    let elsewhere = Standin::start(Config::default()).unwrap();
    let target = format!("{}/chat/completions?token=sk-leaked0123456789#x", elsewhere.base_url());
    let call = f.call(policy(3, 0.5, 1.0), 5.0);
    for status in [301, 302, 303, 307, 308] {
        f.standin.reset();
        f.standin.script("moved", vec![Fault::Redirect { status, location: target.clone() }]);
        let e = f.gen(&call, "moved").unwrap_err();
        assert!(matches!(&e, AiError::Provider { status: s, .. } if *s == status), "{e:?}");
        assert_eq!(e.sqlstate(), format!("ZB{status}"));
        assert!(!e.is_retryable());
        let text = e.to_string();
        assert!(text.contains("which was not followed"), "{text}");
        assert!(text.contains(&format!("redirect to {}/chat/completions,", elsewhere.base_url())), "{text}");
        assert!(!text.contains("token") && !text.contains("leaked0123456789"), "{text}");
        assert_eq!(f.standin.stats().requests, 1, "one attempt");
    }
    f.standin.script("relative", vec![Fault::Redirect { status: 302, location: "/login?next=/v1".into() }]);
    let e = f.gen(&call, "relative").unwrap_err();
    assert!(e.to_string().contains(&format!("to http://{}/login,", f.standin.addr())), "{e}");
    assert_eq!(elsewhere.stats().requests, 0, "nothing reached the Location");
}

#[test]
fn the_new_faults_can_be_scripted_over_http() {
    let f = Fixture::new(Config::default());
    let script = serde_json::json!({"input": "remote", "faults": [
        "nul_in_content",
        {"oversized": {"bytes": 4096, "content_length": false}},
        {"rate_limited_raw": {"retry_after": "soon"}},
        {"redirect": {"status": 307, "location": "https://example.invalid/v1"}},
    ]});
    let url = format!("http://{}/_standin/script", f.standin.addr());
    let answer = f.block(async {
        let r = reqwest::Client::new().post(&url).body(script.to_string()).send().await.unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    });
    assert_eq!(answer.0, 200, "{}", answer.1);
    let call = Call { max_response_bytes: 2048, ..f.call(policy(0, 0.5, 1.0), 5.0) };
    assert_eq!(f.gen(&call, "remote").unwrap_err().sqlstate(), "ZBM01");
    assert_eq!(f.gen(&call, "remote").unwrap_err().sqlstate(), "ZBM02");
    assert_eq!(f.gen(&call, "remote").unwrap_err().sqlstate(), "ZBR01");
    assert_eq!(f.gen(&call, "remote").unwrap_err().sqlstate(), "ZB307");
    assert_eq!(f.gen(&call, "remote").unwrap(), "Echo from qwen-plus: remote");
}

#[test]
fn answers_being_read_share_one_budget_and_give_it_back() {
    let f = Fixture::new(Config::default());
    let budget: u64 = 512 << 10;
    let call =
        Call { max_response_bytes: 1 << 20, answers_budget: budget, ..f.call(policy(0, 0.5, 1.0), 10.0) };
    for declared in [true, false] {
        // One answer larger than the budget alone: refused however it is sent.
        f.standin.script("big", vec![oversized(600 << 10, declared)]);
        let e = f.gen(&call, "big").unwrap_err();
        assert_eq!(
            e,
            AiError::ResponseTooLarge {
                model: "m1".into(),
                limit_bytes: budget,
                limit: ResponseLimit::InFlight
            },
            "declared {declared}"
        );
        assert!(e.to_string().contains("past their share of pg_bailian.max_batch_memory (512kB)"), "{e}");
        assert_eq!(f.client.bytes_held(), 0, "a refused answer gives its bytes back");
    }
    // Answers that fit together are all read, at once, and give everything back.
    for i in 0..4 {
        f.standin.script(&format!("fits {i}"), vec![oversized(100 << 10, i % 2 == 0)]);
    }
    let requests: Vec<ChatRequest> =
        (0..4).map(|i| chat_request(call.endpoint, &format!("fits {i}"))).collect();
    let all = f.block(futures_util::future::join_all(requests.iter().map(|r| f.client.chat(&call, r))));
    assert!(all.iter().all(Result::is_ok), "{all:?}");
    assert_eq!(f.client.bytes_held(), 0);
}
