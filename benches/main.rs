//! pg_bailian benchmarks, run by `bash scripts/bench.sh` against a running cluster with the
//! extension installed (release build) and in-process stand-ins. Each scenario is measured
//! against its baseline in the same run; the table goes to stdout and to
//! benches/RESULTS.md.

use bailian_standin::{Config, Standin};
use postgres::{Client, NoTls};
use serde::Deserialize;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const DB: &str = "pg_bailian_bench";
const KEY: &str = "sk-benchmark-000000000000";

struct Row {
    scenario: &'static str,
    command: String,
    measured: String,
    baseline: String,
    ratio: f64,
    target: &'static str,
    pass: bool,
}

fn connect(db: &str) -> Client {
    let port = std::env::var("PGPORT").unwrap_or_else(|_| "28816".into());
    Client::connect(&format!("host=127.0.0.1 port={port} user=postgres dbname={db}"), NoTls)
        .expect("connect to the cluster scripts/bench.sh starts")
}

fn fresh_db() -> Client {
    let mut admin = connect("postgres");
    admin.batch_execute(&format!("DROP DATABASE IF EXISTS {DB} WITH (FORCE)")).unwrap();
    admin.batch_execute(&format!("CREATE DATABASE {DB}")).unwrap();
    let mut c = connect(DB);
    c.batch_execute("CREATE EXTENSION pg_bailian").unwrap();
    c
}

fn standin(latency_ms: u64, rpm: Option<u32>) -> Standin {
    Standin::start(Config { latency_ms, rpm_limit: rpm, log_bodies: false, ..Config::default() }).unwrap()
}

fn deploy(c: &mut Client, name: &str, model_type: &str, s: &Standin, extra: &str) {
    c.batch_execute(&format!(
        "SELECT ai_deploy_model('{name}', '{model_type}', '{KEY}', base_url => '{}', replace => true{extra})",
        s.base_url()
    ))
    .unwrap();
}

fn table(c: &mut Client, name: &str, rows: u32) {
    c.batch_execute(&format!(
        "DROP TABLE IF EXISTS {name};
         CREATE TABLE {name} (id int PRIMARY KEY, body text, emb real[], answer text);
         INSERT INTO {name} SELECT g, 'row ' || g || ' of the benchmark, about topic ' || (g % 97), NULL, NULL
           FROM generate_series(1, {rows}) g"
    ))
    .unwrap();
    c.batch_execute(&format!("VACUUM ANALYZE {name}")).unwrap();
}

#[derive(Deserialize)]
struct EmbeddingResponse {
    data: Vec<EmbeddingItem>,
}

#[derive(Deserialize)]
struct EmbeddingItem {
    embedding: Vec<f32>,
}

/// The baseline: the same requests from a plain Rust loop (reqwest, one pooled client,
/// typed parse into Vec<f32>), one after another.
fn plain_rust_loop(s: &Standin, n: u32) -> Duration {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let http = reqwest::Client::builder().use_rustls_tls().tcp_nodelay(true).build().unwrap();
        let url = format!("{}/embeddings", s.base_url());
        let call = |i: u32| {
            let body = serde_json::json!({"model": "text-embedding-v4", "input": [format!("row {i}")],
                                          "encoding_format": "float", "dimensions": 1024});
            let req = http
                .post(&url)
                .bearer_auth(KEY)
                .header("content-type", "application/json")
                .body(serde_json::to_vec(&body).unwrap());
            async move {
                let bytes = req.send().await.unwrap().bytes().await.unwrap();
                let r: EmbeddingResponse = serde_json::from_slice(&bytes).unwrap();
                assert_eq!(r.data[0].embedding.len(), 1024);
            }
        };
        for i in 0..200 {
            call(i).await;
        }
        let start = Instant::now();
        for i in 0..n {
            call(i).await;
        }
        start.elapsed()
    })
}

fn overhead() -> Row {
    const N: u32 = 10_000;
    let s = standin(0, None);
    let mut c = fresh_db();
    deploy(&mut c, "emb", "text-embedding-v4", &s, "");
    let sql = format!("SELECT count(ai_embed('emb', 'row ' || g)) FROM generate_series(1, {N}) g");
    c.batch_execute("SELECT count(ai_embed('emb', 'row ' || g)) FROM generate_series(1, 200) g").unwrap();
    let start = Instant::now();
    let n: i64 = c.query_one(sql.as_str(), &[]).unwrap().get(0);
    let sql_time = start.elapsed();
    assert_eq!(n, i64::from(N));
    let rust_time = plain_rust_loop(&s, N);
    let per = |d: Duration| d.as_secs_f64() * 1e6 / f64::from(N);
    let ratio = per(sql_time) / per(rust_time);
    Row {
        scenario: "overhead: 10,000 scalar ai_embed, 0 ms latency",
        command: sql,
        measured: format!(
            "{:.1} µs/row ({:.0} rows/s)",
            per(sql_time),
            f64::from(N) / sql_time.as_secs_f64()
        ),
        baseline: format!("plain Rust loop {:.1} µs/request", per(rust_time)),
        ratio,
        target: "≤ 1.5x the loop",
        pass: ratio <= 1.5,
    }
}

fn embed_throughput() -> Row {
    const N: u32 = 20_000;
    let s = standin(100, None);
    let mut c = fresh_db();
    deploy(&mut c, "emb", "text-embedding-v4", &s, "");
    table(&mut c, "docs", N);
    let sql = "CALL ai_embed_column('docs', 'body', 'emb', 'emb')".to_string();
    let start = Instant::now();
    c.batch_execute(&sql).unwrap();
    let took = start.elapsed().as_secs_f64();
    let filled: i64 = c.query_one("SELECT count(emb) FROM docs", &[]).unwrap().get(0);
    assert_eq!(filled, i64::from(N));
    let rate = f64::from(N) / took;
    let ideal = 16.0 * 10.0 / 0.1;
    Row {
        scenario: "throughput: ai_embed_column, 20,000 rows, 100 ms latency",
        command: sql,
        measured: format!("{rate:.0} rows/s ({took:.1} s)"),
        baseline: format!("ideal {ideal:.0} rows/s (16 in flight x 10 inputs / 0.1 s)"),
        ratio: rate / ideal,
        target: "≥ 0.80 of ideal",
        pass: rate / ideal >= 0.8,
    }
}

fn gen_throughput() -> Row {
    const N: u32 = 2_000;
    let s = standin(100, None);
    let mut c = fresh_db();
    deploy(&mut c, "chat", "qwen-flash", &s, "");
    table(&mut c, "docs", N);
    let sql = "CALL ai_gen_column('docs', 'body', 'answer', 'chat', 'Summarize: {0}')".to_string();
    let start = Instant::now();
    c.batch_execute(&sql).unwrap();
    let took = start.elapsed().as_secs_f64();
    let filled: i64 = c.query_one("SELECT count(answer) FROM docs", &[]).unwrap().get(0);
    assert_eq!(filled, i64::from(N));
    let rate = f64::from(N) / took;
    let ideal = 16.0 / 0.1;
    Row {
        scenario: "generation: ai_gen_column, 2,000 rows, 100 ms latency",
        command: sql,
        measured: format!("{rate:.0} rows/s ({took:.1} s)"),
        baseline: format!("ideal {ideal:.0} rows/s (16 in flight / 0.1 s)"),
        ratio: rate / ideal,
        target: "≥ 0.80 of ideal",
        pass: rate / ideal >= 0.8,
    }
}

fn rate_limited() -> Row {
    const N: u32 = 6_000;
    const RPM: u32 = 600;
    let s = standin(50, Some(RPM));
    let mut c = fresh_db();
    deploy(&mut c, "emb", "text-embedding-v4", &s, &format!(", requests_per_minute => {RPM}"));
    table(&mut c, "docs", N);
    let sql = format!(
        "CALL ai_embed_column('docs', 'body', 'emb', 'emb')  -- deployed with requests_per_minute => {RPM}, stand-in limit {RPM}/min"
    );
    let start = Instant::now();
    c.batch_execute("CALL ai_embed_column('docs', 'body', 'emb', 'emb')").unwrap();
    let minutes = start.elapsed().as_secs_f64() / 60.0;
    let stats = s.stats();
    let ok = stats.by_status.get(&200).copied().unwrap_or(0) as f64;
    let too_many = stats.by_status.get(&429).copied().unwrap_or(0) as f64;
    let share_429 = too_many / stats.requests.max(1) as f64;
    let per_minute = ok / minutes;
    let ratio = per_minute / f64::from(RPM);
    Row {
        scenario: "rate limit: 600 requests/min at client and stand-in, 6,000 rows",
        command: sql,
        measured: format!(
            "{per_minute:.0} requests/min, {:.2} % answered 429 ({too_many:.0} of {})",
            share_429 * 100.0,
            stats.requests
        ),
        baseline: format!("limit {RPM} requests/min"),
        ratio,
        target: "≥ 0.90 of limit, ≤ 1 % 429",
        pass: ratio >= 0.9 && share_429 <= 0.01,
    }
}

fn status_kb(pid: i32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn memory() -> Row {
    const N: u32 = 100_000;
    let s = standin(0, None);
    let mut c = fresh_db();
    deploy(&mut c, "emb", "text-embedding-v4", &s, "");
    table(&mut c, "docs", N);
    let mut worker = connect(DB);
    let pid: i32 = worker.query_one("SELECT pg_backend_pid()", &[]).unwrap().get(0);
    let shared_buffers: String = worker.query_one("SHOW shared_buffers", &[]).unwrap().get(0);
    let stop = Arc::new(AtomicBool::new(false));
    let peak_anon = Arc::new(AtomicU64::new(0));
    let sampler = {
        let (stop, peak_anon) = (stop.clone(), peak_anon.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                peak_anon.fetch_max(status_kb(pid, "RssAnon:"), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(100));
            }
        })
    };
    let sql = "CALL ai_embed_column('docs', 'body', 'emb', 'emb')".to_string();
    let start = Instant::now();
    worker.batch_execute(&sql).unwrap();
    let took = start.elapsed().as_secs_f64();
    let hwm_mb = status_kb(pid, "VmHWM:") as f64 / 1024.0;
    stop.store(true, Ordering::Relaxed);
    sampler.join().unwrap();
    let anon_mb = peak_anon.load(Ordering::Relaxed) as f64 / 1024.0;
    let filled: i64 = c.query_one("SELECT count(emb) FROM docs", &[]).unwrap().get(0);
    assert_eq!(filled, i64::from(N));
    Row {
        scenario: "memory: ai_embed_column, 100,000 rows x 1024 dims, 0 ms latency",
        command: sql,
        measured: format!(
            "peak RSS {hwm_mb:.0} MB (VmHWM, incl. shared_buffers = {shared_buffers} touched), private peak {anon_mb:.0} MB; {:.0} rows/s",
            f64::from(N) / took
        ),
        baseline: "300 MB".into(),
        ratio: hwm_mb / 300.0,
        target: "peak RSS < 300 MB",
        pass: hwm_mb < 300.0,
    }
}

fn main() {
    let only: Vec<String> = std::env::args().skip(1).collect();
    let wanted = |name: &str| only.is_empty() || only.iter().any(|o| o == name);
    let scenarios: [(&str, fn() -> Row); 5] = [
        ("overhead", overhead),
        ("throughput", embed_throughput),
        ("generation", gen_throughput),
        ("ratelimit", rate_limited),
        ("memory", memory),
    ];
    let mut rows = Vec::new();
    for (name, run) in scenarios {
        if wanted(name) {
            eprintln!("running {name} ...");
            let row = run();
            eprintln!("  {}: {} | {} | ratio {:.2}", row.scenario, row.measured, row.baseline, row.ratio);
            rows.push(row);
        }
    }
    let mut out = String::new();
    let _ = writeln!(out, "| scenario | command | measured | baseline | ratio | target | met |");
    let _ = writeln!(out, "| --- | --- | --- | --- | --- | --- | --- |");
    for r in &rows {
        let _ = writeln!(
            out,
            "| {} | `{}` | {} | {} | {:.2} | {} | {} |",
            r.scenario,
            r.command,
            r.measured,
            r.baseline,
            r.ratio,
            r.target,
            if r.pass { "yes" } else { "NO" }
        );
    }
    println!("\n{out}");
    if let Ok(path) = std::env::var("BENCH_RESULTS") {
        std::fs::write(&path, &out).unwrap();
    }
    if rows.iter().any(|r| !r.pass) {
        std::process::exit(1);
    }
}
