//! API keys: how a deployment names one, how it is shown (a hint, never the key), and how text
//! from elsewhere (provider error bodies) is scrubbed of anything that looks like a key.

use crate::error::AiError;
use std::fmt;

/// Where a deployed model's key comes from, as written in the `api_key` argument.
#[derive(Clone, PartialEq, Eq)]
pub enum KeySource {
    /// `sk-...`, stored in the extension's key table.
    Literal(String),
    /// `env:NAME`: read from the server's environment at call time; only the name is stored.
    Env(String),
}

const KEY_RULE: &str = "api_key must be a Bailian API key 'sk-...' (\"sk-\" and at least 8 \
letters, digits, '-' or '_') or 'env:NAME' (the key is read from the PostgreSQL server's \
environment variable NAME at call time)";

impl KeySource {
    /// Parses the `api_key` argument. The error never repeats the value: it may be a real key
    /// with a typo in it.
    pub fn parse(raw: &str) -> Result<KeySource, AiError> {
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
        let body = raw.strip_prefix("sk-");
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
            } else if raw.starts_with("sk-") {
                format!("a {}-character value starting with 'sk-'", raw.chars().count())
            } else {
                format!("a {}-character value not starting with 'sk-' or 'env:'", raw.chars().count())
            };
            Err(AiError::invalid_with_hint(
                format!("{KEY_RULE}; got {what}"),
                "The value is not repeated here because it may be a secret.",
            ))
        }
    }

    /// Shown in `ai_models`: enough to tell keys apart, never enough to use one.
    pub fn hint(&self) -> String {
        match self {
            KeySource::Literal(k) => hint_of(k),
            KeySource::Env(name) => format!("env:{name}"),
        }
    }

    /// The text kept in the catalog's key table.
    pub fn stored(&self) -> String {
        match self {
            KeySource::Literal(k) => k.clone(),
            KeySource::Env(name) => format!("env:{name}"),
        }
    }

    /// The key to send, reading the environment for `env:` keys.
    pub fn resolve(&self, model: &str) -> Result<ApiKey, AiError> {
        match self {
            KeySource::Literal(k) => Ok(ApiKey(k.clone())),
            KeySource::Env(name) => match std::env::var(name) {
                Ok(v) if !v.is_empty() => Ok(ApiKey(v)),
                _ => Err(AiError::ApiKeyUnavailable { model: model.into(), variable: name.clone() }),
            },
        }
    }
}

impl fmt::Debug for KeySource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeySource({})", self.hint())
    }
}

fn hint_of(key: &str) -> String {
    let tail: String = key.chars().rev().take(4).collect::<Vec<_>>().into_iter().rev().collect();
    format!("sk-...{tail}")
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

/// Replaces every `sk-` token of 8 or more key characters with a hint of it. Providers echo
/// keys in 401 bodies, sometimes partially masked; either way none of it reaches SQL.
pub fn scrub_keys(text: &str) -> String {
    let is_key_char = |c: char| c.is_ascii_alphanumeric() || c == '-' || c == '_';
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(pos) = rest.find("sk-") {
        let preceded_by_key_char = rest[..pos].chars().next_back().is_some_and(is_key_char);
        out.push_str(&rest[..pos]);
        let after = &rest[pos + 3..];
        let len = after.find(|c: char| !is_key_char(c)).unwrap_or(after.len());
        if len >= 8 && !preceded_by_key_char {
            out.push_str(&hint_of(&rest[pos..pos + 3 + len]));
        } else {
            out.push_str(&rest[pos..pos + 3 + len]);
        }
        rest = &after[len..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn env_keys_resolve_at_call_time() {
        let src = KeySource::Env("PG_BAILIAN_UNIT_TEST_KEY_VAR".into());
        assert!(matches!(src.resolve("m"), Err(AiError::ApiKeyUnavailable { .. })));
        std::env::set_var("PG_BAILIAN_UNIT_TEST_KEY_VAR", "sk-fromenv12345678");
        assert_eq!(src.resolve("m").unwrap().expose(), "sk-fromenv12345678");
        std::env::remove_var("PG_BAILIAN_UNIT_TEST_KEY_VAR");
    }
}
