//! API keys: how a deployment names one, how it is shown (a hint, never the key), and how text
//! from elsewhere (provider error bodies) is scrubbed of anything that looks like a key.

use crate::error::AiError;
use crate::policy::Policy;
use crate::registry::Provider;
use std::fmt;
use std::path::{Path, PathBuf};

/// Where a deployed model's key comes from, as written in the `api_key` argument.
#[derive(Clone, PartialEq, Eq)]
pub enum KeySource {
    /// `sk-...` (Bailian) or `OS-...` (OpenSearch), stored sealed with the cluster's master key.
    Literal(String),
    /// `env:NAME`: read from the server's environment at call time; only the name is stored.
    Env(String),
    /// `file:/path`: read from a file under `pg_bailian.key_directory` at call time.
    File(PathBuf),
}

const KEY_RULE: &str = "api_key must be a Bailian API key 'sk-...' (\"sk-\" and at least 8 \
letters, digits, '-' or '_'), 'env:NAME' (read from the PostgreSQL server's environment \
variable NAME at call time) or 'file:/absolute/path' (read from that file at call time)";

const OPENSEARCH_KEY_RULE: &str = "api_key must be an OpenSearch API key 'OS-...' (\"OS-\" and at \
least 8 letters, digits, '-' or '_'), 'env:NAME' (read from the PostgreSQL server's environment \
variable NAME at call time) or 'file:/absolute/path' (read from that file at call time)";

/// The prefixes of literal keys: Bailian's `sk-` and OpenSearch's `OS-` (seed 003).
const KEY_PREFIXES: [&[u8; 3]; 2] = [b"sk-", b"OS-"];

/// A key file holds one key on one line; anything larger is not a key file.
const MAX_KEY_FILE: u64 = 4096;

fn unavailable(model: &str, reason: String, hint: &str) -> AiError {
    AiError::ApiKeyUnavailable { model: model.into(), reason, hint: hint.into() }
}

impl KeySource {
    /// Parses the `api_key` argument. The error never repeats the value: it may be a real key
    /// with a typo in it.
    pub fn parse(raw: &str) -> Result<KeySource, AiError> {
        KeySource::parse_for(Provider::Bailian, raw)
    }

    /// `parse`, for a key of `provider` (whose literal keys have their own prefix).
    pub fn parse_for(provider: Provider, raw: &str) -> Result<KeySource, AiError> {
        let (prefix, rule) = match provider {
            Provider::Bailian => ("sk-", KEY_RULE),
            Provider::OpenSearch => ("OS-", OPENSEARCH_KEY_RULE),
        };
        if let Some(name) = raw.strip_prefix("env:") {
            let valid = !name.is_empty()
                && name.len() <= 255
                && !name.starts_with(|c: char| c.is_ascii_digit())
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            return if valid {
                Ok(KeySource::Env(name.to_string()))
            } else {
                Err(AiError::invalid(format!(
                    "invalid environment variable name in api_key 'env:{}': \
                     a name is letters, digits and '_', not starting with a digit",
                    name.escape_default()
                )))
            };
        }
        if let Some(path) = raw.strip_prefix("file:") {
            let valid = path.starts_with('/') && path.len() <= 1024 && !path.chars().any(char::is_control);
            return if valid {
                Ok(KeySource::File(PathBuf::from(path)))
            } else {
                Err(AiError::invalid(format!(
                    "invalid path in api_key 'file:{}': an absolute path (starting with '/') \
                     of at most 1024 characters is required",
                    path.escape_default()
                )))
            };
        }
        let body = raw.strip_prefix(prefix);
        let valid = body.is_some_and(|b| {
            b.len() >= 8
                && raw.len() <= 256
                && b.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        });
        if valid {
            Ok(KeySource::Literal(raw.to_string()))
        } else {
            let what = if raw.is_empty() {
                "an empty string".to_string()
            } else if raw.trim() != raw {
                "a value with leading or trailing whitespace".to_string()
            } else if raw.starts_with(prefix) {
                format!("a {}-character value starting with '{prefix}'", raw.chars().count())
            } else {
                format!(
                    "a {}-character value not starting with '{prefix}', 'env:' or 'file:'",
                    raw.chars().count()
                )
            };
            Err(AiError::invalid_with_hint(
                format!("{rule}; got {what}"),
                "The value is not repeated here because it may be a secret.",
            ))
        }
    }

    /// Shown in `ai_models`: enough to tell keys apart, never enough to use one.
    pub fn hint(&self) -> String {
        match self {
            KeySource::Literal(k) => hint_of(k),
            KeySource::Env(name) => format!("env:{name}"),
            KeySource::File(path) => format!("file:{}", path.display()),
        }
    }

    /// The text kept in the catalog's key table: `env:` and `file:` sources as written, a
    /// literal key only through `seal` (the master key's encryption).
    pub fn stored(&self, seal: impl FnOnce(&str) -> Result<String, AiError>) -> Result<String, AiError> {
        match self {
            KeySource::Literal(k) => seal(k),
            KeySource::Env(_) | KeySource::File(_) => Ok(self.hint()),
        }
    }

    /// The source back from the catalog's text; `open` decrypts a sealed literal key.
    pub fn from_stored(
        stored: &str,
        open: impl FnOnce(&str) -> Result<String, AiError>,
    ) -> Result<KeySource, AiError> {
        if crate::keystore::is_sealed(stored) {
            return Ok(KeySource::Literal(open(stored)?));
        }
        let provider = if stored.starts_with("OS-") { Provider::OpenSearch } else { Provider::Bailian };
        match KeySource::parse_for(provider, stored)? {
            KeySource::Literal(_) => Err(AiError::MasterKey {
                message: "the stored API key is not encrypted".into(),
                hint: "It was stored by an earlier version of pg_bailian; redeploy the model \
                       (ai_deploy_model(..., replace => true)) to store it encrypted."
                    .into(),
            }),
            other => Ok(other),
        }
    }

    /// At deploy time: the source is one `policy` allows, and a `file:` key is readable now.
    /// An `env:` variable may be set later, so its absence is not an error here.
    pub fn check(&self, model: &str, policy: &Policy) -> Result<(), AiError> {
        match self {
            KeySource::Literal(_) => Ok(()),
            KeySource::Env(name) => policy.check_env(name),
            KeySource::File(_) => self.resolve(model, policy).map(drop),
        }
    }

    /// The key to send, reading the environment or the key file; the policy is checked again
    /// at every read, so a narrowed list also applies to models already deployed.
    pub fn resolve(&self, model: &str, policy: &Policy) -> Result<ApiKey, AiError> {
        self.resolve_with(model, || policy.clone())
    }

    /// `resolve`, with the policy fetched only when a key is read from the environment or a
    /// file (a literal key needs none, and the scalar path runs this for every call).
    pub fn resolve_with(&self, model: &str, policy: impl FnOnce() -> Policy) -> Result<ApiKey, AiError> {
        match self {
            KeySource::Literal(k) => Ok(ApiKey(k.clone())),
            KeySource::Env(name) => {
                policy().check_env(name)?;
                match std::env::var(name) {
                    Ok(v) if !v.is_empty() => Ok(ApiKey(v)),
                    _ => Err(unavailable(
                        model,
                        format!("environment variable {name} is not set in the PostgreSQL server"),
                        "Set the variable in the PostgreSQL server's environment and restart it, \
                         or redeploy the model with another key.",
                    )),
                }
            }
            KeySource::File(path) => {
                let resolved = policy().check_file(model, path)?;
                read_key_file(model, path, &resolved)
            }
        }
    }
}

/// Reads one key from `resolved` (the checked form of `path`, which messages show). The
/// content never appears in a message: the file may hold anything.
fn read_key_file(model: &str, path: &Path, resolved: &Path) -> Result<ApiKey, AiError> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let fail = |what: String| {
        unavailable(
            model,
            format!("key file {} {what}", path.display()),
            "The file must be readable by the PostgreSQL server's operating-system user and hold \
             the key alone on one line.",
        )
    };
    // Non-blocking, so that a FIFO put there cannot hang the backend in open(); the type is
    // checked on the open file.
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(resolved)
        .map_err(|e| fail(format!("cannot be opened ({e})")))?;
    let meta = file.metadata().map_err(|e| fail(format!("cannot be read ({e})")))?;
    if !meta.is_file() {
        return Err(fail("is not a regular file".into()));
    }
    let mut content = zeroize::Zeroizing::new(String::new());
    file.take(MAX_KEY_FILE + 1)
        .read_to_string(&mut content)
        .map_err(|_| fail("is not a text file holding a key".into()))?;
    let key = content.trim();
    let shaped = content.len() as u64 <= MAX_KEY_FILE
        && (8..=256).contains(&key.len())
        && key.chars().all(|c| c.is_ascii_graphic());
    if !shaped {
        return Err(fail("does not hold a key (one line of 8 to 256 printable characters)".into()));
    }
    Ok(ApiKey(key.to_string()))
}

impl fmt::Debug for KeySource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeySource({})", self.hint())
    }
}

fn hint_of(key: &str) -> String {
    let tail: String = key.chars().rev().take(4).collect::<Vec<_>>().into_iter().rev().collect();
    let prefix = if key.starts_with("OS-") { "OS-" } else { "sk-" };
    format!("{prefix}...{tail}")
}

/// A key ready to send. Debug and Display print the hint, so a stray `{:?}` cannot leak it.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiKey(String);

impl ApiKey {
    pub fn new(key: impl Into<String>) -> Self {
        ApiKey(key.into())
    }

    /// The only way to the key's text: used to build the Authorization header.
    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn hint(&self) -> String {
        hint_of(&self.0)
    }

    /// Removes this key, and anything else shaped like a Bailian key, from `text`.
    pub fn redact(&self, text: &str) -> String {
        let text = if self.0.len() >= 8 { text.replace(&self.0, &self.hint()) } else { text.into() };
        scrub_keys(&text)
    }
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ApiKey({})", self.hint())
    }
}

impl fmt::Display for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.hint())
    }
}

/// Replaces every `sk-` or `OS-` token of 8 or more key characters with a hint of it. Providers echo
/// keys in 401 bodies, sometimes partially masked; either way none of it reaches SQL.
pub fn scrub_keys(text: &str) -> String {
    let mut bytes = text.as_bytes().to_vec();
    let len = scrub_keys_in_place(&mut bytes);
    bytes.truncate(len);
    // Only ASCII tokens were replaced, by ASCII: the rest is the input's UTF-8, untouched.
    String::from_utf8(bytes).unwrap_or_default()
}

fn is_key_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'-' || b == b'_'
}

/// Where the next key-shaped token starts at or after `from`, and its length: `sk-` and 8 or
/// more key characters, not preceded by a key character (the rule of `scrub_keys`).
fn next_key_token(bytes: &[u8], mut from: usize) -> Option<(usize, usize)> {
    while from + 3 <= bytes.len() {
        let pos = from + bytes[from..].windows(3).position(|w| KEY_PREFIXES.iter().any(|p| w == *p))?;
        let len = bytes[pos + 3..].iter().take_while(|b| is_key_byte(**b)).count();
        if len >= 8 && (pos == 0 || !is_key_byte(bytes[pos - 1])) {
            return Some((pos, 3 + len));
        }
        from = pos + 3 + len;
    }
    None
}

/// Whether `bytes` hold a key-shaped token. Allocates nothing.
pub fn has_key_token(bytes: &[u8]) -> bool {
    next_key_token(bytes, 0).is_some()
}

/// `scrub_keys` on bytes, in place: returns the new length (never longer: a hint is 10 bytes,
/// a token at least 11). Allocates nothing, so it is safe while PostgreSQL reports an error,
/// and works on text in any server encoding (the tokens are ASCII, and every byte of a
/// multibyte character is outside ASCII in the encodings PostgreSQL allows on the server).
pub fn scrub_keys_in_place(buf: &mut [u8]) -> usize {
    let (mut read, mut write) = (0, 0);
    while let Some((start, len)) = next_key_token(buf, read) {
        buf.copy_within(read..start, write);
        write += start - read;
        let mut hint = [0u8; 10];
        hint[..3].copy_from_slice(&buf[start..start + 3]);
        hint[3..6].copy_from_slice(b"...");
        hint[6..].copy_from_slice(&buf[start + len - 4..start + len]);
        buf[write..write + 10].copy_from_slice(&hint);
        write += 10;
        read = start + len;
    }
    buf.copy_within(read.., write);
    write + (buf.len() - read)
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        /// Scrubbing leaves no key-shaped token, never grows the text, and changes only text
        /// that held one.
        #[test]
        fn scrubbing_leaves_no_key(parts in proptest::collection::vec(
            proptest::prop_oneof![
                "sk-[A-Za-z0-9_-]{0,20}", "[a-z -]{0,6}", "\\PC{0,4}", proptest::strategy::Just("sk-".to_string())
            ],
            0..12,
        )) {
            let text: String = parts.concat();
            let scrubbed = scrub_keys(&text);
            proptest::prop_assert!(scrubbed.len() <= text.len());
            proptest::prop_assert!(!has_key_token(scrubbed.as_bytes()), "{} -> {}", text, scrubbed);
            proptest::prop_assert_eq!(has_key_token(text.as_bytes()), scrubbed != text);
        }
    }

    #[test]
    fn in_place_scrubbing_works_on_any_bytes() {
        let mut latin1 = b"mod\xe8le 'sk-e2esecret-0000' \xff sk-short".to_vec();
        let n = scrub_keys_in_place(&mut latin1);
        assert_eq!(&latin1[..n], b"mod\xe8le 'sk-...0000' \xff sk-short");
        assert!(!has_key_token(b"risk-management sk-abc"));
    }

    #[test]
    fn parses_literal_and_env_keys() {
        assert_eq!(
            KeySource::parse("sk-0123456789abcdef").unwrap(),
            KeySource::Literal("sk-0123456789abcdef".into())
        );
        assert_eq!(
            KeySource::parse("env:DASHSCOPE_API_KEY").unwrap(),
            KeySource::Env("DASHSCOPE_API_KEY".into())
        );
        for bad in [
            "",
            "sk-",
            "sk-short",
            "0123456789abcdef",
            " sk-0123456789abcdef",
            "sk-0123 456789",
            "env:",
            "env:1ABC",
            "env:A-B",
        ] {
            assert!(KeySource::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn errors_never_repeat_the_value() {
        for bad in ["sk-abc!defghijkl", "xk-secretsecretsecret", "sk-secret secret"] {
            let e = KeySource::parse(bad).unwrap_err().to_string();
            assert!(!e.contains("secret") && !e.contains("abc!"), "{e}");
            assert!(e.contains("'sk-...'") && e.contains("env:NAME"), "{e}");
        }
    }

    #[test]
    fn hints_show_only_the_tail() {
        let k = KeySource::parse("sk-0123456789abcdef3f9a").unwrap();
        assert_eq!(k.hint(), "sk-...3f9a");
        assert_eq!(KeySource::Env("X".into()).hint(), "env:X");
        assert_eq!(format!("{:?}", ApiKey::new("sk-0123456789abcdef3f9a")), "ApiKey(sk-...3f9a)");
    }

    #[test]
    fn redaction_removes_exact_and_lookalike_keys() {
        let key = ApiKey::new("sk-live0123456789");
        let text = "Incorrect API key provided: sk-live0123456789. Other: sk-other99999999; short sk-abc; hint sk-...6789";
        let r = key.redact(text);
        assert!(!r.contains("live0123456789"), "{r}");
        assert!(!r.contains("other99999999"), "{r}");
        assert!(r.contains("sk-...6789") && r.contains("sk-...9999") && r.contains("sk-abc"), "{r}");
        assert_eq!(scrub_keys("task-12345678 risk-free"), "task-12345678 risk-free");
    }

    #[test]
    fn env_keys_resolve_at_call_time_within_the_allowed_names() {
        let policy = Policy::default();
        let src = KeySource::Env("PG_BAILIAN_UNIT_TEST_KEY_VAR".into());
        assert!(matches!(src.resolve("m", &policy), Err(AiError::ApiKeyUnavailable { .. })));
        std::env::set_var("PG_BAILIAN_UNIT_TEST_KEY_VAR", "sk-fromenv12345678");
        assert_eq!(src.resolve("m", &policy).unwrap().expose(), "sk-fromenv12345678");
        // Narrowing the list applies at the next read.
        let narrowed = Policy { env_keys: crate::policy::NameList::parse("DASHSCOPE_API_KEY"), ..policy };
        assert_eq!(src.resolve("m", &narrowed).unwrap_err().sqlstate(), "42501");
        std::env::remove_var("PG_BAILIAN_UNIT_TEST_KEY_VAR");
        let home = KeySource::parse("env:HOME").unwrap();
        assert_eq!(home.check("m", &Policy::default()).unwrap_err().sqlstate(), "42501");
    }

    #[test]
    fn file_keys_are_read_from_the_key_directory_only() {
        let dir = std::env::temp_dir().join(format!("pg_bailian_secret_{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("good"), "sk-fromfile12345678\n").unwrap();
        std::fs::write(dir.join("not-a-key"), "line one\nline two with secret words\n").unwrap();
        std::fs::write(dir.join("big"), "x".repeat(10_000)).unwrap();
        let policy = Policy { key_directory: Some(dir.clone()), ..Policy::default() };
        let src = |name: &str| KeySource::parse(&format!("file:{}", dir.join(name).display())).unwrap();
        assert_eq!(src("good").resolve("m", &policy).unwrap().expose(), "sk-fromfile12345678");
        assert_eq!(src("good").hint(), format!("file:{}/good", dir.display()));
        for bad in ["not-a-key", "big", "missing"] {
            let e = src(bad).resolve("m", &policy).unwrap_err();
            assert_eq!(e.sqlstate(), "ZBK01", "{bad}: {e}");
            assert!(!e.to_string().contains("secret words") && !e.to_string().contains("xxxx"), "{e}");
        }
        assert_eq!(src("good").resolve("m", &Policy::default()).unwrap_err().sqlstate(), "42501");
        assert!(KeySource::parse("file:relative/path").is_err());
        assert!(KeySource::parse("file:").is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn only_sealed_literals_come_back_from_the_catalog() {
        let open = |s: &str| Ok(s.trim_start_matches("sealed:").to_string());
        assert_eq!(
            KeySource::from_stored("sealed:sk-0123456789abcdef", open).unwrap(),
            KeySource::Literal("sk-0123456789abcdef".into())
        );
        assert_eq!(KeySource::from_stored("env:X", open).unwrap(), KeySource::Env("X".into()));
        let e = KeySource::from_stored("sk-0123456789abcdef", open).unwrap_err();
        assert_eq!(e.sqlstate(), "ZBK02");
        let k = KeySource::parse("sk-0123456789abcdef").unwrap();
        assert_eq!(k.stored(|p| Ok(format!("sealed:{}", p.len()))).unwrap(), "sealed:19");
    }
}
