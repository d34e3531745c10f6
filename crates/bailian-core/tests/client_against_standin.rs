//! The HTTP client and retry loop against the stand-in over real loopback HTTP, no database.

use bailian_core::client::{Call, Client};
use bailian_core::request;
use bailian_core::retry::RetryPolicy;
use bailian_core::runtime::Runtime;
use bailian_core::secret::ApiKey;
use bailian_core::AiError;
use bailian_standin::{Config, Fault, Standin};
use serde_json::Map;
use std::time::{Duration, Instant};

const KEY: &str = "sk-clienttest0123456789";

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
        }
    }

    fn gen(&self, call: &Call<'_>, prompt: &str) -> Result<String, AiError> {
        let body = request::chat_body("qwen-plus", prompt, &Map::new());
        self.rt.block_on_interruptible(self.client.chat(call, &body), || false)?.map(|(t, _)| t)
    }
}

#[test]
fn chat_and_embeddings_round_trip() {
    let f = Fixture::new(Config::default());
    let call = f.call(policy(0, 0.5, 1.0), 5.0);
    assert_eq!(f.gen(&call, "hello").unwrap(), "Echo from qwen-plus: hello");
    let body = request::embedding_body("text-embedding-v4", &["a b", "c"], Some(64), true);
    let v =
        f.rt.block_on_interruptible(f.client.embed(&call, &body, 2, Some(64)), || false).unwrap().unwrap();
    assert_eq!(v[0], bailian_standin::embedding_for("a b", 64));
    assert_eq!(v[1], bailian_standin::embedding_for("c", 64));
    let log = f.standin.requests();
    assert_eq!(log[0].auth_hint, "sk-...6789");
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
    let r = f.rt.block_on_interruptible(
        f.client.chat(&call, &request::chat_body("qwen-plus", "hold", &Map::new())),
        || start.elapsed() > Duration::from_millis(300),
    );
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
    let out =
        f.rt.block_on_interruptible(
            bailian_core::client::embed_each(
                &f.client,
                &call,
                &request::EmbeddingModel {
                    model_type: "text-embedding-v4",
                    dimension: Some(64),
                    choosable: true,
                },
                &inputs,
            ),
            || false,
        )
        .unwrap();
    assert_eq!(out[0].as_ref().unwrap(), &bailian_standin::embedding_for("good one", 64));
    assert_eq!(out[1].as_ref().unwrap_err().sqlstate(), "ZB400");
    assert_eq!(out[2].as_ref().unwrap(), &bailian_standin::embedding_for("good two", 64));
    let sizes: Vec<usize> = f.standin.requests().iter().map(|r| r.inputs.len()).collect();
    assert_eq!(sizes, vec![3, 1, 1, 1]);
}
