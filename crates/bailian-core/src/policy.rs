//! What a deployment may point at, as a superuser allows it: which environment variables an
//! `env:NAME` key may read, the directory `file:` keys must live under, and the hosts a
//! non-superuser may name in `base_url`.
//!
//! These close two escalation paths of delegated deployment: a role allowed to deploy could
//! otherwise read any environment variable or file of the server by naming it as a key and
//! pointing `base_url` at a host of its own (the "key" is sent there as a bearer token). The
//! lists are checked when a model is deployed and again whenever a key is read, so narrowing a
//! list takes effect for models already deployed.

use crate::error::AiError;
use std::path::{Component, Path, PathBuf};

/// Default of `pg_bailian.allowed_env_keys`.
pub const DEFAULT_ENV_KEYS: &str = "DASHSCOPE_API_KEY, PG_BAILIAN_*";

/// Default of `pg_bailian.allowed_hosts`: Bailian's regional endpoints and OpenSearch's
/// service hosts (`<instance>.<region>.opensearch.aliyuncs.com`, seed 003).
pub const DEFAULT_HOSTS: &str =
    "dashscope.aliyuncs.com, dashscope-intl.aliyuncs.com, dashscope-us.aliyuncs.com, *.opensearch.aliyuncs.com";

/// A comma-separated list of names, each exact or a prefix ending in `*` (`*` alone: any).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NameList {
    entries: Vec<String>,
}

impl NameList {
    pub fn parse(list: &str) -> NameList {
        NameList { entries: split_list(list) }
    }

    pub fn allows(&self, name: &str) -> bool {
        self.entries.iter().any(|e| match e.strip_suffix('*') {
            Some(prefix) => name.starts_with(prefix),
            None => e == name,
        })
    }

    fn shown(&self) -> String {
        if self.entries.is_empty() {
            "(none)".into()
        } else {
            self.entries.join(", ")
        }
    }
}

/// A comma-separated list of hosts: `host`, `*.domain` (any subdomain, not the domain
/// itself), each optionally with `:port` (else any port), reached over https; written
/// `http://host`, plain http is allowed too (the API key would cross the network in clear,
/// so only where that is meant: loopback, a gateway on a private network). Host names compare
/// case-insensitively; IPv6 literals are written in brackets, as in a URL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostList {
    entries: Vec<HostEntry>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct HostEntry {
    host: String,
    port: Option<u16>,
    http: bool,
}

impl HostList {
    pub fn parse(list: &str) -> HostList {
        let entries = split_list(list).into_iter().map(|e| HostEntry::parse(&e)).collect();
        HostList { entries }
    }

    /// Whether `host` (as a URL shows it, brackets included for IPv6) at `port` over `scheme`
    /// is listed.
    pub fn allows(&self, scheme: &str, host: &str, port: u16) -> bool {
        let host = host.to_ascii_lowercase();
        self.entries.iter().any(|e| {
            let host_ok = match e.host.strip_prefix("*.") {
                Some(domain) => host.len() > domain.len() + 1 && host.ends_with(&format!(".{domain}")),
                None => e.host == host,
            };
            host_ok && e.port.is_none_or(|p| p == port) && (scheme == "https" || e.http && scheme == "http")
        })
    }

    fn shown(&self) -> String {
        if self.entries.is_empty() {
            return "(none)".into();
        }
        self.entries.iter().map(HostEntry::shown).collect::<Vec<_>>().join(", ")
    }
}

impl HostEntry {
    fn parse(entry: &str) -> HostEntry {
        let e = entry.to_ascii_lowercase();
        let (http, e) = match e.strip_prefix("http://") {
            Some(rest) => (true, rest),
            None => (false, e.strip_prefix("https://").unwrap_or(&e)),
        };
        let e = e.trim_end_matches('/');
        // "[::1]:80" or "host:80"; a bare IPv6 literal without brackets has no port.
        let (host, port) = match e.rsplit_once(':') {
            Some((host, port)) if !host.is_empty() && (host.ends_with(']') || !host.contains(':')) => {
                match port.parse::<u16>() {
                    Ok(p) => (host, Some(p)),
                    Err(_) => (e, None),
                }
            }
            _ => (e, None),
        };
        HostEntry { host: host.to_string(), port, http }
    }

    fn shown(&self) -> String {
        let scheme = if self.http { "http://" } else { "" };
        match self.port {
            Some(p) => format!("{scheme}{}:{p}", self.host),
            None => format!("{scheme}{}", self.host),
        }
    }
}

fn split_list(list: &str) -> Vec<String> {
    list.split(',').map(str::trim).filter(|s| !s.is_empty()).map(String::from).collect()
}

/// The settings in force for the current session (read from the GUCs by the extension).
#[derive(Clone, Debug)]
pub struct Policy {
    pub env_keys: NameList,
    /// `pg_bailian.key_directory`; None disables `file:` keys.
    pub key_directory: Option<PathBuf>,
    pub hosts: HostList,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            env_keys: NameList::parse(DEFAULT_ENV_KEYS),
            key_directory: None,
            hosts: HostList::parse(DEFAULT_HOSTS),
        }
    }
}

impl Policy {
    /// `env:NAME` may be read.
    pub fn check_env(&self, name: &str) -> Result<(), AiError> {
        if self.env_keys.allows(name) {
            return Ok(());
        }
        Err(AiError::NotAllowed {
            message: format!(
                "environment variable {name} is not allowed as an API key by pg_bailian.allowed_env_keys ({})",
                self.env_keys.shown()
            ),
            hint: "A superuser can list it in pg_bailian.allowed_env_keys (postgresql.conf or ALTER SYSTEM), \
                   or name the key's variable PG_BAILIAN_<something>."
                .into(),
        })
    }

    /// `file:PATH` may be read: PATH is inside the key directory as written (no `.` or `..`
    /// component), and still is once symbolic links are resolved. Returns the resolved path,
    /// which is what must be opened. The lexical check comes first and answers the same for
    /// any path outside, so a deployer learns nothing about the rest of the filesystem.
    pub fn check_file(&self, model: &str, path: &Path) -> Result<PathBuf, AiError> {
        let not_allowed = |why: String| AiError::NotAllowed {
            message: format!("key file {} is not allowed: {why}", path.display()),
            hint: "A superuser sets pg_bailian.key_directory; key files must be inside it.".into(),
        };
        let Some(dir) = &self.key_directory else {
            return Err(not_allowed(
                "pg_bailian.key_directory is not set, so file: keys are disabled".into(),
            ));
        };
        let outside =
            || not_allowed(format!("it is not inside pg_bailian.key_directory ({})", dir.display()));
        let plain = path.components().all(|c| matches!(c, Component::RootDir | Component::Normal(_)));
        if !plain || !path.starts_with(dir) || path == dir {
            return Err(outside());
        }
        let resolved = path.canonicalize().map_err(|e| AiError::ApiKeyUnavailable {
            model: model.into(),
            reason: format!("key file {} cannot be resolved ({e})", path.display()),
            hint: "Create the file, readable by the PostgreSQL server's operating-system user.".into(),
        })?;
        let real_dir = dir.canonicalize().map_err(|_| outside())?;
        if resolved.parent().is_some_and(|p| p.starts_with(&real_dir)) {
            Ok(resolved)
        } else {
            Err(outside())
        }
    }

    /// A non-superuser's `base_url` must name a listed host, over https unless the entry is
    /// written http://.
    pub fn check_host(&self, url: &str) -> Result<(), AiError> {
        let parsed =
            reqwest::Url::parse(url).map_err(|e| AiError::invalid(format!("invalid base_url: {e}")))?;
        // host_str() writes IPv6 literals in brackets, as the list does.
        let host = parsed.host_str().unwrap_or_default().to_string();
        let port = parsed.port_or_known_default().unwrap_or(0);
        let scheme = parsed.scheme();
        if self.hosts.allows(scheme, &host, port) {
            return Ok(());
        }
        Err(AiError::NotAllowed {
            message: format!(
                "base_url {scheme}://{host}:{port} is not allowed by pg_bailian.allowed_hosts ({})",
                self.hosts.shown()
            ),
            hint: "Use region => 'beijing' | 'singapore' | 'virginia', ask a superuser to deploy the model, \
                   or have a superuser add the host to pg_bailian.allowed_hosts (written http://host to \
                   allow plain http)."
                .into(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_names_exact_and_prefix() {
        let p = Policy::default();
        assert!(p.check_env("DASHSCOPE_API_KEY").is_ok());
        assert!(p.check_env("PG_BAILIAN_PROD").is_ok());
        for bad in ["HOME", "PGPASSWORD", "DASHSCOPE_API_KEY2", "PG_BAILIA", "AWS_SECRET_ACCESS_KEY"] {
            let e = p.check_env(bad).unwrap_err();
            assert_eq!(e.sqlstate(), "42501");
            assert!(e.to_string().contains("DASHSCOPE_API_KEY, PG_BAILIAN_*"), "{e}");
        }
        assert!(NameList::parse("*").allows("ANYTHING"));
        assert!(!NameList::parse("").allows("X"));
    }

    #[test]
    fn hosts_exact_wildcard_and_port() {
        let p = Policy::default();
        assert!(p.check_host("https://dashscope.aliyuncs.com/compatible-mode/v1").is_ok());
        assert!(p.check_host("https://DashScope-Intl.aliyuncs.com/compatible-mode/v1").is_ok());
        assert!(p.check_host("https://x-hangzhou.opensearch.aliyuncs.com/v3").is_ok());
        for bad in [
            "https://opensearch.aliyuncs.com/v3",
            "https://dashscope.aliyuncs.com.evil.example/v1",
            "https://evildashscope.aliyuncs.com/v1",
            "http://127.0.0.1:9/v1",
            "http://[::1]:9/v1",
            // Listed hosts are https-only: the key must not cross the network in clear.
            "http://dashscope.aliyuncs.com/compatible-mode/v1",
        ] {
            let e = p.check_host(bad).unwrap_err();
            assert_eq!(e.sqlstate(), "42501", "{bad}");
        }
        assert_eq!(
            p.check_host("http://dashscope.aliyuncs.com/compatible-mode/v1").unwrap_err().to_string(),
            format!("base_url http://dashscope.aliyuncs.com:80 is not allowed by pg_bailian.allowed_hosts ({DEFAULT_HOSTS})")
        );
        let loopback = HostList::parse("http://127.0.0.1, localhost:8080, http://[::1]");
        assert!(loopback.allows("http", "127.0.0.1", 1234) && loopback.allows("https", "127.0.0.1", 1234));
        assert!(loopback.allows("https", "localhost", 8080) && !loopback.allows("http", "localhost", 8080));
        assert!(!loopback.allows("https", "localhost", 8081));
        assert!(loopback.allows("http", "[::1]", 80));
        assert!(!HostList::parse("").allows("https", "127.0.0.1", 80));
    }

    #[test]
    fn files_must_resolve_inside_the_directory() {
        let root = std::env::temp_dir().join(format!("pg_bailian_policy_{}", std::process::id()));
        let dir = root.join("keys");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("k"), "sk-0123456789").unwrap();
        std::fs::write(root.join("outside"), "secret").unwrap();
        std::os::unix::fs::symlink(root.join("outside"), dir.join("link")).unwrap();

        let mut p = Policy::default();
        assert_eq!(p.check_file("m", &dir.join("k")).unwrap_err().sqlstate(), "42501", "disabled by default");
        p.key_directory = Some(dir.clone());
        assert!(p.check_file("m", &dir.join("k")).is_ok());
        assert_eq!(p.check_file("m", &dir.join("../outside")).unwrap_err().sqlstate(), "42501");
        assert_eq!(p.check_file("m", &dir.join("link")).unwrap_err().sqlstate(), "42501");
        assert_eq!(p.check_file("m", &root.join("outside")).unwrap_err().sqlstate(), "42501");
        assert_eq!(p.check_file("m", &dir.join("missing")).unwrap_err().sqlstate(), "ZBK01");
        // Outside the directory, existing or not, readable or not: the same answer.
        let e = |path: &str| p.check_file("m", Path::new(path)).unwrap_err().to_string();
        assert_eq!(
            e("/etc/shadow").replace("/etc/shadow", "X"),
            e("/no/such/file").replace("/no/such/file", "X")
        );
        assert_eq!(p.check_file("m", &dir).unwrap_err().sqlstate(), "42501");
        std::fs::remove_dir_all(&root).unwrap();
    }
}
