//! `bailian-standin`: run the stand-in as a process, for the demo and benchmarks.
//! Control it at runtime under `/_standin/` (stats, requests, usage, config, script, reset,
//! batches).

use bailian_standin::{Config, Standin};

const USAGE: &str = "usage: bailian-standin [--listen ADDR] [--latency-ms N] [--fail-rate-500 F] \
[--fail-rate-429 F] [--retry-after SECS] [--rpm N] [--tpm N] [--no-implicit-cache] \
[--stream-chunk-delay-ms N] [--no-log-bodies] [--batch-chat] [--batch-hour-ms N] [--batch-hold] \
[--addr-file PATH]

--rpm and --tpm limit requests and tokens per minute, per key and model, and per second at
a sixtieth of that, as Bailian does.
--batch-chat plays the Batch Chat host (batch.dashscope.aliyuncs.com) instead of the normal one.
--batch-hour-ms sets how many real milliseconds an hour of the batch service's clock lasts
(3600000 is real time); --batch-hold keeps new batches in progress until released
(POST /_standin/batches/release).";

fn main() {
    let mut listen = "127.0.0.1:0".to_string();
    let mut addr_file = None;
    let mut config = Config::default();
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let mut value = || {
            args.next().unwrap_or_else(|| {
                eprintln!("{flag} needs a value\n{USAGE}");
                std::process::exit(2)
            })
        };
        fn num<T: std::str::FromStr>(flag: &str, v: String) -> T {
            v.parse().unwrap_or_else(|_| {
                eprintln!("{flag}: not a number: {v}\n{USAGE}");
                std::process::exit(2)
            })
        }
        match flag.as_str() {
            "--listen" => listen = value(),
            "--latency-ms" => config.latency_ms = num(&flag, value()),
            "--fail-rate-500" => config.fail_rate_500 = num(&flag, value()),
            "--fail-rate-429" => config.fail_rate_429 = num(&flag, value()),
            "--retry-after" => config.retry_after_secs = Some(num(&flag, value())),
            "--rpm" => config.rpm_limit = Some(num(&flag, value())),
            "--tpm" => config.tpm_limit = Some(num(&flag, value())),
            "--no-implicit-cache" => config.implicit_cache = false,
            "--stream-chunk-delay-ms" => config.stream_chunk_delay_ms = num(&flag, value()),
            "--no-log-bodies" => config.log_bodies = false,
            "--batch-chat" => config.batch_chat = true,
            "--batch-hour-ms" => config.batch_hour_ms = num(&flag, value()),
            "--batch-hold" => config.batch_hold = true,
            "--addr-file" => addr_file = Some(value()),
            "-h" | "--help" => {
                println!("{USAGE}");
                return;
            }
            other => {
                eprintln!("unknown argument {other}\n{USAGE}");
                std::process::exit(2)
            }
        }
    }
    let standin = Standin::start_on(&listen, config).unwrap_or_else(|e| {
        eprintln!("cannot listen on {listen}: {e}");
        std::process::exit(1)
    });
    if let Some(path) = addr_file {
        std::fs::write(&path, standin.addr().to_string()).expect("write --addr-file");
    }
    println!(
        "bailian stand-in listening on {} (native and OpenSearch under {})",
        standin.base_url(),
        standin.root_url()
    );
    standin.wait();
}
