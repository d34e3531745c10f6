//! Shared pieces of the end-to-end tests: a database of its own per test in the throwaway
//! cluster that `scripts/test.sh` starts, and a stand-in per test on its own loopback port;
//! for tests that stop, crash or reconfigure a server, a cluster of their own
//! (`PrivateCluster`).
#![allow(dead_code)]

pub mod plans;

use bailian_standin::{Config, Standin};
use postgres::{Client, NoTls};
use std::time::{Duration, Instant};

/// Look-alikes of what SQL commonly resolves by name (operators, functions, aggregates,
/// domains named like types), planted in `public` by a role that may create there.
pub const PLANT: &str = include_str!("plant.sql");

/// Keys in e2e tests all contain this, so the final log check can look for any of them.
pub const KEY_MARK: &str = "e2esecret";

pub fn key(tag: &str) -> String {
    format!("sk-{KEY_MARK}-{tag}-0000")
}

fn conn_string(db: &str, user: &str) -> String {
    let host = std::env::var("PGHOST").unwrap_or_else(|_| "127.0.0.1".into());
    format!("host={host} port={} user={user} dbname={db} connect_timeout=10", port())
}

pub fn port() -> String {
    std::env::var("PGPORT").unwrap_or_else(|_| "28816".into())
}

/// The directory of the cluster's server binaries (pg_dump, initdb, ...): `PG_BAILIAN_PG_BIN`,
/// set by scripts/test.sh for the PostgreSQL it runs, or Debian's PostgreSQL 15.
pub fn pg_bin() -> String {
    std::env::var("PG_BAILIAN_PG_BIN").unwrap_or_else(|_| "/usr/lib/postgresql/15/bin".into())
}

pub fn connect(db: &str) -> Client {
    connect_as(db, "postgres")
}

/// A session of `user` (the test cluster trusts loopback connections).
pub fn connect_as(db: &str, user: &str) -> Client {
    Client::connect(&conn_string(db, user), NoTls).unwrap_or_else(|e| {
        panic!(
            "cannot connect to the test cluster ({}): {e}\n\
             These tests need the cluster that `bash scripts/test.sh` starts.",
            conn_string(db, user)
        )
    })
}

/// A session of `user` whose NOTICEs and WARNINGs are collected as "SEVERITY: message".
pub fn connect_collecting_as(
    db: &str,
    user: &str,
) -> (Client, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
    let mut cfg: postgres::Config = conn_string(db, user).parse().unwrap();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let sink = seen.clone();
    cfg.notice_callback(move |n| sink.lock().unwrap().push(format!("{}: {}", n.severity(), n.message())));
    (cfg.connect(NoTls).unwrap(), seen)
}

/// A fresh database named after the test, without the extension.
pub fn fresh_bare_db(test: &str) -> (Client, String) {
    let name = format!("e2e_{test}");
    let mut admin = connect("postgres");
    admin.batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).unwrap();
    admin.batch_execute(&format!("CREATE DATABASE {name}")).unwrap();
    (connect(&name), name)
}

/// A fresh database named after the test, with the extension created.
pub fn fresh_db(test: &str) -> (Client, String) {
    let (mut c, name) = fresh_bare_db(test);
    c.batch_execute("CREATE EXTENSION pg_bailian").unwrap();
    (c, name)
}

/// A login role of this name, made anew (roles are cluster-wide: names carry the test's).
pub fn fresh_role(c: &mut Client, name: &str, options: &str) {
    c.batch_execute(&format!("DROP ROLE IF EXISTS {name}; CREATE ROLE {name} LOGIN {options}"))
        .unwrap_or_else(|e| panic!("role {name}: {e}"));
}

pub fn standin() -> Standin {
    Standin::start(Config::default()).unwrap()
}

pub fn standin_with(config: Config) -> Standin {
    Standin::start(config).unwrap()
}

/// Deploys `name` as `model_type` against the stand-in; `extra` is appended to the
/// argument list (e.g. ", max_retries => 0").
pub fn deploy(c: &mut Client, s: &Standin, name: &str, model_type: &str, extra: &str) {
    let sql = format!(
        "SELECT ai_deploy_model('{name}', '{model_type}', '{}', base_url => '{}'{extra})",
        key(name),
        s.base_url()
    );
    c.batch_execute(&sql).unwrap_or_else(|e| panic!("{sql}: {e}"));
}

/// The SQLSTATE and message of a failed statement.
pub fn error_of(r: Result<impl Sized, postgres::Error>) -> (String, String) {
    match r {
        Ok(_) => panic!("the statement succeeded; an error was expected"),
        Err(e) => match e.as_db_error() {
            Some(db) => (db.code().code().to_string(), db.message().to_string()),
            None => panic!("not a database error: {e}"),
        },
    }
}

pub fn one_text(c: &mut Client, sql: &str) -> Option<String> {
    c.query_one(sql, &[]).unwrap_or_else(|e| panic!("{sql}: {e}")).get(0)
}

/// Waits until `cond` holds or `timeout` passes; returns whether it held.
pub fn wait_for(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    cond()
}

/// The cluster's server log (path from `PG_BAILIAN_LOG`, set by scripts/test.sh).
pub fn server_log() -> String {
    let path = std::env::var("PG_BAILIAN_LOG").expect("PG_BAILIAN_LOG (set by scripts/test.sh)");
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {path}: {e}"))
}

/// The jsonb (or json) a one-value query returns, as a serde value.
pub fn json_of(c: &mut Client, sql: &str) -> serde_json::Value {
    let sql = format!("{sql}::text");
    let text: String = c.query_one(&sql, &[]).unwrap_or_else(|e| panic!("{sql}: {e}")).get(0);
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{sql}: {e}: {text}"))
}

/// Whether the server offers pgvector; when it does not, prints what goes untested, and fails
/// if scripts/test.sh said it installed it.
pub fn pgvector_available(c: &mut Client, untested: &str) -> bool {
    let available: bool = c
        .query_one("SELECT EXISTS (SELECT FROM pg_available_extensions WHERE name = 'vector')", &[])
        .unwrap()
        .get(0);
    if !available {
        assert_ne!(
            std::env::var("PG_BAILIAN_PGVECTOR").as_deref(),
            Ok("installed"),
            "scripts/test.sh installed pgvector, but the server does not offer it"
        );
        eprintln!("SKIPPED: pgvector is not installed and was not vendored; {untested} untested here");
    }
    available
}

/// What a session collecting its notices has been told (see `connect_collecting_as`).
pub type Seen = std::sync::Arc<std::sync::Mutex<Vec<String>>>;

/// Everything the session was told so far, one message a line ("SEVERITY: message").
pub fn notices(seen: &Seen) -> String {
    seen.lock().unwrap().join("\n")
}

/// The body of row `id` in the tests' `docs` tables.
pub fn body_of(id: i32) -> String {
    format!("document {id} about topic {}", id % 7)
}

/// What the stand-in answers `ai_gen('chat', prompt)` with (chat is qwen-plus).
pub fn echo(prompt: &str) -> String {
    bailian_standin::chat_reply("qwen-plus", prompt, 0)
}

/// Everything the extension consists of in the database `c` is connected to (functions with
/// their full definitions, tables, views, grants, comments; see extension_objects.sql), one
/// fact a line, sorted: equal lists mean equal extensions.
pub fn extension_objects(c: &mut Client) -> Vec<String> {
    c.query(include_str!("extension_objects.sql"), &[])
        .unwrap_or_else(|e| panic!("extension_objects.sql: {e}"))
        .iter()
        .map(|r| r.get(0))
        .collect()
}

/// Runs a client program; its standard output, or a panic with its standard error.
pub fn run_program(cmd: &mut std::process::Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(out.status.success(), "{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

/// A plain-format `pg_dump` of `db` by `user`, with the server's own pg_dump.
pub fn pg_dump(db: &str, user: &str) -> String {
    run_program(std::process::Command::new(format!("{}/pg_dump", pg_bin())).args([
        "-h",
        "127.0.0.1",
        "-p",
        &port(),
        "-U",
        user,
        "-d",
        db,
    ]))
}

/// Runs a plain dump's SQL into the existing database `db` as the superuser, with the
/// server's own psql, stopping at the first error.
pub fn restore_plain(db: &str, sql: &str) {
    let file = std::env::temp_dir().join(format!("pg_bailian_{db}_{}.sql", std::process::id()));
    std::fs::write(&file, sql).unwrap();
    run_program(std::process::Command::new(format!("{}/psql", pg_bin())).args([
        "-X",
        "-q",
        "-v",
        "ON_ERROR_STOP=1",
        "-h",
        "127.0.0.1",
        "-p",
        &port(),
        "-U",
        "postgres",
        "-d",
        db,
        "-f",
        file.to_str().unwrap(),
    ]));
    std::fs::remove_file(&file).unwrap();
}

/// A cluster of a test's own, for what the shared one cannot do (stop, restart or crash it,
/// kill its postmaster, settings fixed at server start): made by `initdb` of the server under
/// test (`pg_bin`) as the `postgres` user, in a directory of its own under the temporary one,
/// on a port the system picked, small (16MB of shared buffers, 20 connections) and without
/// fsync (a throwaway cluster need not outlive a machine crash), with `conf`
/// appended to postgresql.conf, and PG_BAILIAN_DEMO_KEY in the server's environment as in the
/// scripts' cluster. Dropped, even by a failed assertion, it is stopped at once, its
/// postmaster killed by its pid if it outlived that, and its directory removed.
pub struct PrivateCluster {
    dir: std::path::PathBuf,
    port: u16,
}

/// What `PrivateCluster::start` appends for pg_bailian's shared state, and for the stand-in on
/// loopback (as scripts/lib.sh's cluster has it).
pub const PRELOAD_CONF: &str = "shared_preload_libraries = 'pg_bailian'\n\
     pg_bailian.allowed_hosts = 'http://127.0.0.1, http://localhost'\n";

impl PrivateCluster {
    /// A new cluster named `name` (unique among the tests that may run at once), started.
    pub fn start(name: &str, conf: &str) -> PrivateCluster {
        let dir = std::env::temp_dir().join(format!("pg_bailian_{name}_{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        // From here on, Drop cleans up whatever the rest manages to make.
        let cluster = PrivateCluster { dir, port };
        run_program(std::process::Command::new("chown").arg("postgres:postgres").arg(&cluster.dir));
        let data = cluster.data();
        cluster.as_postgres(
            "initdb",
            &[
                "-D",
                data.to_str().unwrap(),
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--locale=C.UTF-8",
                "--no-sync",
            ],
        );
        let settings = format!(
            "\nport = {port}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{}'\n\
             shared_buffers = 16MB\nmax_connections = 20\nfsync = off\n\
             log_line_prefix = '%m [%p] %q%u@%d '\n{conf}",
            cluster.dir.display()
        );
        let conf_path = data.join("postgresql.conf");
        let mut text = std::fs::read_to_string(&conf_path).unwrap();
        text.push_str(&settings);
        std::fs::write(&conf_path, text).unwrap();
        cluster.pg_ctl(&["start"]);
        cluster
    }

    pub fn data(&self) -> std::path::PathBuf {
        self.dir.join("data")
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn conn_string(&self, db: &str, user: &str) -> String {
        format!("host=127.0.0.1 port={} user={user} dbname={db} connect_timeout=10", self.port)
    }

    pub fn connect(&self, db: &str) -> Client {
        self.connect_as(db, "postgres")
    }

    pub fn connect_as(&self, db: &str, user: &str) -> Client {
        let conn = self.conn_string(db, user);
        Client::connect(&conn, NoTls).unwrap_or_else(|e| panic!("{conn}: {e}"))
    }

    /// A session whose NOTICEs and WARNINGs are collected (see `connect_collecting_as`).
    pub fn connect_collecting(&self, db: &str) -> (Client, Seen) {
        self.connect_collecting_as(db, "postgres")
    }

    /// A session of `user` whose NOTICEs and WARNINGs are collected.
    pub fn connect_collecting_as(&self, db: &str, user: &str) -> (Client, Seen) {
        let mut cfg: postgres::Config = self.conn_string(db, user).parse().unwrap();
        let seen = Seen::default();
        let sink = seen.clone();
        cfg.notice_callback(move |n| sink.lock().unwrap().push(format!("{}: {}", n.severity(), n.message())));
        (cfg.connect(NoTls).unwrap(), seen)
    }

    /// Runs a program of the server under test as the postgres user; panics if it fails.
    fn as_postgres(&self, program: &str, args: &[&str]) -> String {
        let mut cmd = std::process::Command::new("sudo");
        cmd.args(["-u", "postgres", "env"]);
        if let Ok(key) = std::env::var("PG_BAILIAN_DEMO_KEY") {
            cmd.arg(format!("PG_BAILIAN_DEMO_KEY={key}"));
        }
        run_program(cmd.arg(format!("{}/{program}", pg_bin())).args(args))
    }

    /// `pg_ctl <args>` on this cluster, waiting for it (its log file is always given: a
    /// postmaster started without one would hold our pipe open).
    pub fn pg_ctl(&self, args: &[&str]) {
        let data = self.data();
        let log = self.dir.join("log");
        let mut all = vec!["-D", data.to_str().unwrap(), "-l", log.to_str().unwrap(), "-w", "-t", "60"];
        all.extend_from_slice(args);
        self.as_postgres("pg_ctl", &all);
    }

    /// The postmaster's pid, from postmaster.pid (None when it is not running).
    pub fn postmaster_pid(&self) -> Option<u32> {
        let text = std::fs::read_to_string(self.data().join("postmaster.pid")).ok()?;
        let pid: u32 = text.lines().next()?.trim().parse().ok()?;
        // Only a live postmaster of this data directory (not a pid since reused).
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
        let data = self.data();
        String::from_utf8_lossy(&cmdline).contains(data.to_str().unwrap()).then_some(pid)
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("log")).unwrap_or_default()
    }
}

impl Drop for PrivateCluster {
    fn drop(&mut self) {
        if self.postmaster_pid().is_some() {
            let data = self.data();
            let _ = std::process::Command::new("sudo")
                .args(["-u", "postgres", &format!("{}/pg_ctl", pg_bin()), "-D", data.to_str().unwrap()])
                .args(["-m", "immediate", "-w", "-t", "30", "stop"])
                .output();
        }
        if let Some(pid) = self.postmaster_pid() {
            let _ = std::process::Command::new("kill").args(["-9", &pid.to_string()]).status();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
