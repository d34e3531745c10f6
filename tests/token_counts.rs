//! ai_count_tokens against the official tokenizer: the DashScope SDK's own `encode`
//! (tests/token_referee.py, run by the Python that scripts/lib.sh's ensure_token_referee sets
//! up in PG_BAILIAN_TOKEN_REFEREE) over a set of texts (English, Chinese, mixed, digits, runs
//! of whitespace and line breaks, emoji, special tokens, texts the SDK encodes in chunks, and
//! generated ones), compared with bailian_core's ids and with `SELECT ai_count_tokens(...)`,
//! exactly. Also the setting that names the vocabulary and its errors.

mod common;

use bailian_core::tokens::{self, QwenTokenizer};
use common::*;
use postgres::Client;
use std::path::PathBuf;
use std::sync::OnceLock;

/// What the SDK said: its version, the vocabulary it ships, and the ids of each text.
struct Verdict {
    version: String,
    vocabulary: PathBuf,
    ids: Vec<Vec<u32>>,
}

fn referee() -> &'static (Vec<String>, Verdict) {
    static VERDICT: OnceLock<(Vec<String>, Verdict)> = OnceLock::new();
    VERDICT.get_or_init(|| {
        let python = std::env::var("PG_BAILIAN_TOKEN_REFEREE").unwrap_or_else(|_| {
            panic!(
                "PG_BAILIAN_TOKEN_REFEREE is not set: it names the Python that runs the DashScope SDK \
                 (scripts/test.sh sets it up with ensure_token_referee from scripts/lib.sh)"
            )
        });
        let texts = texts();
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/token_referee.py");
        let mut child = std::process::Command::new(&python)
            .arg(script)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("{python} {script}: {e}"));
        let input = serde_json::to_vec(&texts).unwrap();
        let mut stdin = child.stdin.take().unwrap();
        let writer = std::thread::spawn(move || std::io::Write::write_all(&mut stdin, &input).unwrap());
        let out = child.wait_with_output().unwrap();
        writer.join().unwrap();
        assert!(out.status.success(), "{python} {script} failed");
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let ids: Vec<Vec<u32>> = serde_json::from_value(v["ids"].clone()).unwrap();
        assert_eq!(ids.len(), texts.len());
        let verdict = Verdict {
            version: v["version"].as_str().unwrap().to_string(),
            vocabulary: PathBuf::from(v["vocabulary"].as_str().unwrap()),
            ids,
        };
        (texts, verdict)
    })
}

/// The texts compared: written ones, long ones, and generated ones.
fn texts() -> Vec<String> {
    let mut texts: Vec<String> = [
        "",
        "Hello, world!",
        "The quick brown fox jumps over the lazy dog.",
        "你好，世界！这是一个测试。",
        "数据库查询几乎是瞬间完成的",
        "我们在2024年3月15日发布了版本3.14.159。",
        "Mixed 中文 and English, 混合文本 with numbers 12345 and symbols @#$%^&*().",
        "1234567890123456789012345678901234567890",
        "   leading spaces",
        "trailing spaces   ",
        "a  b   c    d\t\te\n\nf\r\ng\r\n\r\nh",
        "line1\nline2\n\n\nline3\n",
        "\n\n\n",
        "    ",
        " ",
        "x\u{a0}\u{a0}y \u{3000}全角空格\u{3000}",
        "emoji 😀😃😄 👍🏽 👨‍👩‍👧‍👦 🇨🇳 ❤️",
        "<|im_start|>system\nYou are helpful.<|im_end|>\n<|im_start|>user\nhi<|im_end|>",
        "<|endoftext|>",
        "text<|extra_0|>more<|extra_204|>and<|extra_205|><|extra_07|>",
        "<|<|im_end|>|> <|endoftext",
        "It's they're we've I'm you'll he'd IT'S THEY'RE Iſ 'ſ 'S 'T don't  'll 're",
        "e\u{301} cafe\u{301} Å Å ñ n\u{303} 한국어 한국어",
        "ﬁ ① ½ ²³ Ⅻ ٣٤٥ ๑๒๓",
        "def f(x):\n    return x ** 2  # square\n\n\nclass A:\n\tpass\n",
        "SELECT ai_count_tokens('qwen', body) FROM reviews WHERE id <= 10;",
        "Ünïcödé naïve façade résumé Straße Ελληνικά Русский текст العربية हिन्दी ไทยภาษา 日本語のテキスト カタカナ",
        "https://example.com/path?query=1&x=y#frag  user@example.com",
        "！！！？？？。。。、、、……——",
        "\u{1}\u{2} control \u{7f} \u{200b}\u{200d}\u{feff} zero width",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();

    let en = "The checkout page crashed twice before my order went through, but support answered quickly. ";
    let zh = "这个数据库非常快，查询几乎是瞬间完成的。我们在测试中发现，它能处理数百万行数据而不会变慢。";
    texts.push(en.repeat(120)[..10_000].to_string());
    texts.push(zh.repeat(250).chars().take(10_000).collect());
    // One piece of 12,000 letters (merged with the heap).
    texts.push("中文汉字".repeat(3000));
    // Longer than the SDK's chunks of 100,000 characters: lines joined into chunks; one line
    // cut every 100,000 characters; a cut inside a word, and inside a special token.
    texts.push(format!("{}\n", "word ".repeat(30)).repeat(800));
    texts.push("x".repeat(100_005));
    texts.push(format!("{}\n{}", "ab".repeat(50_001), "cd".repeat(10)));
    texts.push("  ".repeat(60_000));
    texts.push(format!("{}\n\n{}", "段落".repeat(60_000), en.repeat(10)));
    texts.push(format!("<|im_start|>{}<|im_end|>", "y".repeat(99_990)).repeat(2));

    // Generated: characters that exercise every alternative of the pattern, and any Unicode.
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut next = move |n: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % n
    };
    let pieces = [
        " ",
        "\t",
        "\n",
        "\r",
        "\r\n",
        "  ",
        "\u{a0}",
        "\u{3000}",
        "\u{2028}",
        "\u{b}",
        "a",
        "b",
        "Z",
        "é",
        "Я",
        "中",
        "文",
        "日本",
        "1",
        "٣",
        "²",
        "Ⅻ",
        "'",
        "s",
        "S",
        "ſ",
        "'s",
        "t",
        "re",
        "ve",
        "m",
        "ll",
        "d",
        "!",
        ".",
        "-",
        "<",
        "|",
        ">",
        "😀",
        "\u{301}",
        "\u{200b}",
        "$",
        "_",
        "<|im_end|>",
        "<|endoftext|>",
        "<|extra_3|>",
    ];
    for _ in 0..400 {
        let n = next(60);
        texts.push((0..n).map(|_| pieces[next(pieces.len() as u64) as usize]).collect());
    }
    let ranges = [
        (0x20, 0x7f),
        (0xa0, 0x3000),
        (0x3000, 0xa000),
        (0xac00, 0xd7a4),
        (0x1f300, 0x1fb00),
        (0x10000, 0x110000),
    ];
    for _ in 0..200 {
        let n = next(40);
        texts.push(
            (0..n)
                .filter_map(|_| {
                    let (lo, hi) = ranges[next(ranges.len() as u64) as usize];
                    char::from_u32((lo + next(hi - lo)) as u32)
                })
                .collect(),
        );
    }
    texts
}

/// The vocabulary the server reads by default: <sharedir>/extension/pg_bailian/qwen.tiktoken.
fn installed_vocabulary(c: &mut Client) -> PathBuf {
    let share: String =
        c.query_one("SELECT setting FROM pg_catalog.pg_config WHERE name = 'SHAREDIR'", &[]).unwrap().get(0);
    PathBuf::from(share).join("extension/pg_bailian").join(tokens::VOCABULARY_FILE)
}

/// The installed file is the SDK's, and bailian_core gives the SDK's ids for every text.
#[test]
fn core_ids_equal_the_sdks() {
    let (texts, verdict) = referee();
    let mut c = connect("postgres");
    let installed = installed_vocabulary(&mut c);
    assert_eq!(verdict.version, "2.0.2", "the SDK version scripts/lib.sh pins");
    assert!(
        std::fs::read(&installed).unwrap() == std::fs::read(&verdict.vocabulary).unwrap(),
        "{} is not the SDK's {}",
        installed.display(),
        verdict.vocabulary.display()
    );
    let tokenizer = QwenTokenizer::load(&installed).unwrap();
    for (text, ids) in texts.iter().zip(&verdict.ids) {
        let shown: String = text.chars().take(60).collect();
        assert_eq!(&tokenizer.encode(text), ids, "ids of {shown:?} ({} bytes)", text.len());
        assert_eq!(tokenizer.count(text), ids.len(), "count of {shown:?}");
        assert_eq!(tokenizer.count_checked(text, &|| false).unwrap(), ids.len(), "count of {shown:?}");
    }
    eprintln!(
        "{} texts, {} tokens: the same ids as dashscope {}",
        texts.len(),
        verdict.ids.iter().map(Vec::len).sum::<usize>(),
        verdict.version
    );
}

/// ai_count_tokens of a Qwen model is the SDK's count, in a plain and in a parallel query; of
/// another model, the approximation.
#[test]
fn sql_counts_equal_the_sdks() {
    let (texts, verdict) = referee();
    let (mut c, _) = fresh_db("token_counts");
    let s = standin();
    deploy(&mut c, &s, "qwen", "qwen-plus", "");
    deploy(&mut c, &s, "mt", "qwen-mt-plus", "");
    deploy(&mut c, &s, "ds", "deepseek-v3", "");
    deploy(&mut c, &s, "emb", "text-embedding-v4", "");
    // A text holds no NUL byte in PostgreSQL.
    let (texts, counts): (Vec<&String>, Vec<usize>) = texts
        .iter()
        .zip(&verdict.ids)
        .filter(|(t, _)| !t.contains('\0'))
        .map(|(t, ids)| (t, ids.len()))
        .unzip();
    let texts: Vec<String> = texts.into_iter().cloned().collect();
    c.execute(
        "CREATE TABLE texts AS SELECT i, t FROM unnest($1::text[]) WITH ORDINALITY AS u(t, i)",
        &[&texts],
    )
    .unwrap();
    for model in ["qwen", "mt"] {
        let rows =
            c.query(&format!("SELECT i, ai_count_tokens('{model}', t) FROM texts ORDER BY i"), &[]).unwrap();
        assert_eq!(rows.len(), texts.len());
        for (row, (text, expected)) in rows.iter().zip(texts.iter().zip(&counts)) {
            let got: i32 = row.get(1);
            let shown: String = text.chars().take(60).collect();
            assert_eq!(got as usize, *expected, "ai_count_tokens('{model}', {shown:?})");
        }
    }
    for model in ["ds", "emb"] {
        let rows =
            c.query(&format!("SELECT i, ai_count_tokens('{model}', t) FROM texts ORDER BY i"), &[]).unwrap();
        for (row, text) in rows.iter().zip(&texts) {
            let got: i32 = row.get(1);
            assert_eq!(got as usize, tokens::approximate(text), "ai_count_tokens('{model}', {text:?})");
        }
    }
    // The approximation errs high on the written prose (the first texts), English and Chinese.
    for (text, exact) in texts.iter().zip(&counts).skip(1).take(7) {
        assert!(tokens::approximate(text) >= *exact, "{text:?}: {} < {exact}", tokens::approximate(text));
    }

    // Parallel workers read the vocabulary too, and count the same.
    c.batch_execute(
        "SET parallel_setup_cost = 0; SET parallel_tuple_cost = 0; SET min_parallel_table_scan_size = 0;
         SET max_parallel_workers_per_gather = 2",
    )
    .unwrap();
    let plan: Vec<String> = c
        .query("EXPLAIN (COSTS OFF) SELECT sum(ai_count_tokens('qwen', t)) FROM texts", &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(plan.iter().any(|l| l.contains("Parallel Seq Scan")), "{plan:?}");
    let sum: i64 = c.query_one("SELECT sum(ai_count_tokens('qwen', t)) FROM texts", &[]).unwrap().get(0);
    assert_eq!(sum as usize, counts.iter().sum::<usize>());
}

/// NULLs, unknown models, a non-superuser, the size limit and a cancel.
#[test]
fn arguments_roles_and_cancel() {
    let (mut c, db) = fresh_db("token_counts_args");
    let s = standin();
    deploy(&mut c, &s, "qwen", "qwen-plus", "");
    let n: i32 = c.query_one("SELECT ai_count_tokens('qwen', 'Hello, world!')", &[]).unwrap().get(0);
    assert_eq!(n, 4);
    let none: Option<i32> = c.query_one("SELECT ai_count_tokens('qwen', NULL)", &[]).unwrap().get(0);
    assert_eq!(none, None);
    let none: Option<i32> = c.query_one("SELECT ai_count_tokens(NULL, 'x')", &[]).unwrap().get(0);
    assert_eq!(none, None);
    let (code, message) = error_of(c.query_one("SELECT ai_count_tokens('nope', 'x')", &[]));
    assert_eq!((code.as_str(), message.as_str()), ("42704", "model \"nope\" is not deployed"));

    // A role that is not a superuser may count (granted to PUBLIC), not move the vocabulary.
    fresh_role(&mut c, "tok_user", "");
    let mut u = connect_as(&db, "tok_user");
    let n: i32 = u.query_one("SELECT ai_count_tokens('qwen', '你好，世界')", &[]).unwrap().get(0);
    assert_eq!(n, 3);
    let (code, _) = error_of(u.batch_execute("SET pg_bailian.tokenizer_file = '/tmp/x'"));
    assert_eq!(code, "42501");
    drop(u);

    // Larger than any AI call takes: refused before it is read.
    let (code, message) =
        error_of(c.query_one("SELECT ai_count_tokens('qwen', repeat('a', 33 * 1024 * 1024))", &[]));
    assert_eq!(code, "54000", "{message}");
    assert!(message.starts_with("argument 2 of ai_count_tokens would need 3460301"), "{message}");

    // A long count (27 MB of Chinese without a break: pieces of 100,000 characters to merge)
    // stops at a cancel.
    c.batch_execute("SET statement_timeout = '200ms'").unwrap();
    let started = std::time::Instant::now();
    let (code, _) = error_of(c.query_one("SELECT ai_count_tokens('qwen', repeat('数据库', 3000000))", &[]));
    assert_eq!(code, "57014");
    assert!(started.elapsed() < std::time::Duration::from_secs(5), "{:?}", started.elapsed());
}

/// pg_bailian.tokenizer_file: a file that is missing or is no vocabulary is an error that
/// names the file and the setting; a copy elsewhere is read once the setting names it.
#[test]
fn the_vocabulary_setting() {
    let (mut c, _) = fresh_db("token_counts_setting");
    let s = standin();
    deploy(&mut c, &s, "qwen", "qwen-plus", "");
    deploy(&mut c, &s, "ds", "deepseek-v3", "");
    let installed = installed_vocabulary(&mut c);
    let count = |c: &mut Client, model: &str| -> Result<i32, postgres::Error> {
        c.query_one(&format!("SELECT ai_count_tokens('{model}', 'The quick brown fox')"), &[])
            .map(|r| r.get(0))
    };
    assert_eq!(count(&mut c, "qwen").unwrap(), 4);

    c.batch_execute("SET pg_bailian.tokenizer_file = '/nonexistent/qwen.tiktoken'").unwrap();
    let e = count(&mut c, "qwen").unwrap_err();
    let db = e.as_db_error().unwrap();
    assert_eq!(db.code().code(), "ZBV01");
    assert_eq!(
        db.message(),
        "Qwen's tokenizer vocabulary \"/nonexistent/qwen.tiktoken\" cannot be used: No such file or directory (os error 2)"
    );
    let hint = db.hint().unwrap();
    assert!(
        hint.contains("pg_bailian.tokenizer_file") && hint.contains(&installed.display().to_string()),
        "{hint}"
    );
    // Models counted by the approximation need no file.
    assert_eq!(count(&mut c, "ds").unwrap(), tokens::approximate("The quick brown fox") as i32);

    // A file that is not a vocabulary.
    let dir = std::env::temp_dir().join(format!("pg_bailian_tokens_{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bad = dir.join("bad.tiktoken");
    std::fs::write(&bad, "hello\n").unwrap();
    let copy = dir.join("qwen.tiktoken");
    std::fs::copy(&installed, &copy).unwrap();
    for path in [&dir, &bad, &copy] {
        // The server reads them as its own OS user.
        use std::os::unix::fs::PermissionsExt;
        let mode = if path.is_dir() { 0o755 } else { 0o644 };
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    }
    c.batch_execute(&format!("SET pg_bailian.tokenizer_file = '{}'", bad.display())).unwrap();
    let e = count(&mut c, "qwen").unwrap_err();
    let db = e.as_db_error().unwrap();
    assert_eq!(db.code().code(), "ZBV01");
    assert!(db.message().ends_with("cannot be used: entry 1 is not \"base64 rank\""), "{}", db.message());

    // A copy: read once the setting names it; back to the default with RESET.
    c.batch_execute(&format!("SET pg_bailian.tokenizer_file = '{}'", copy.display())).unwrap();
    assert_eq!(count(&mut c, "qwen").unwrap(), 4);
    c.batch_execute("RESET pg_bailian.tokenizer_file").unwrap();
    assert_eq!(count(&mut c, "qwen").unwrap(), 4);
    std::fs::remove_dir_all(&dir).unwrap();
}
