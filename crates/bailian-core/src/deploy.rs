//! A deployment: `ai_deploy_model`'s arguments checked into one value, and the same value
//! rebuilt from the catalog when a function calls the model.

use crate::error::AiError;
use crate::params::{self, Phase};
use crate::policy::Policy;
use crate::providers::{compatible, multimodal, opensearch, ChatRequest, EmbeddingModel};
use crate::registry::{self, Api, ModelSpec, Provider, Task};
use crate::retry::RetryPolicy;
use crate::secret::KeySource;
use crate::tiers;
use serde_json::{Map, Value};
use std::time::Duration;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Region {
    Beijing,
    Singapore,
    Virginia,
}

impl Region {
    pub const ALL: [Region; 3] = [Region::Beijing, Region::Singapore, Region::Virginia];

    pub fn as_str(self) -> &'static str {
        match self {
            Region::Beijing => "beijing",
            Region::Singapore => "singapore",
            Region::Virginia => "virginia",
        }
    }

    /// The compatible-mode endpoint of the region.
    pub fn endpoint(self) -> &'static str {
        match self {
            Region::Beijing => "https://dashscope.aliyuncs.com/compatible-mode/v1",
            Region::Singapore => "https://dashscope-intl.aliyuncs.com/compatible-mode/v1",
            Region::Virginia => "https://dashscope-us.aliyuncs.com/compatible-mode/v1",
        }
    }

    /// The region's DashScope-native API root (Bailian's base-URL page: `/api/v1` on the same
    /// host as compatible mode).
    pub fn native_root(self) -> &'static str {
        match self {
            Region::Beijing => "https://dashscope.aliyuncs.com/api/v1",
            Region::Singapore => "https://dashscope-intl.aliyuncs.com/api/v1",
            Region::Virginia => "https://dashscope-us.aliyuncs.com/api/v1",
        }
    }

    pub fn parse(s: &str) -> Result<Region, AiError> {
        let lower = s.trim().to_ascii_lowercase();
        Region::ALL.into_iter().find(|r| r.as_str() == lower).ok_or_else(|| {
            AiError::invalid(format!(
                "invalid region \"{}\"; allowed: beijing, singapore, virginia \
                 (or pass base_url to use another endpoint)",
                s.escape_default()
            ))
        })
    }
}

/// Retry and timeout settings, in the ranges of seed 000.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RetrySettings {
    pub max_retries: u32,
    pub initial_retry_delay: f64,
    pub max_retry_delay: f64,
    pub timeout: f64,
}

impl Default for RetrySettings {
    fn default() -> Self {
        RetrySettings { max_retries: 2, initial_retry_delay: 0.5, max_retry_delay: 8.0, timeout: 600.0 }
    }
}

fn in_range(name: &str, v: f64, lo: f64, hi: f64, unit: &str) -> Result<f64, AiError> {
    if v.is_finite() && v >= lo && v <= hi {
        Ok(v)
    } else {
        Err(AiError::invalid(format!("{name} must be between {lo} and {hi}{unit}, got {v}")))
    }
}

impl RetrySettings {
    pub fn new(max_retries: i32, initial: f64, max: f64, timeout: f64) -> Result<Self, AiError> {
        Self::with_timeouts(max_retries, initial, max, timeout, (1.0, 1200.0))
    }

    /// As `new`, with `timeout` allowed in `timeouts` (Batch Chat waits longer).
    pub fn with_timeouts(
        max_retries: i32,
        initial: f64,
        max: f64,
        timeout: f64,
        timeouts: (f64, f64),
    ) -> Result<Self, AiError> {
        if !(0..=100).contains(&max_retries) {
            return Err(AiError::invalid(format!(
                "max_retries must be between 0 and 100, got {max_retries}"
            )));
        }
        let initial = in_range("initial_retry_delay", initial, 0.5, 8.0, " seconds")?;
        let max = in_range("max_retry_delay", max, 1.0, 60.0, " seconds")?;
        let timeout = in_range("timeout", timeout, timeouts.0, timeouts.1, " seconds")?;
        if initial > max {
            return Err(AiError::invalid(format!(
                "initial_retry_delay ({initial} seconds) must not exceed max_retry_delay ({max} seconds)"
            )));
        }
        Ok(RetrySettings {
            max_retries: max_retries as u32,
            initial_retry_delay: initial,
            max_retry_delay: max,
            timeout,
        })
    }

    pub fn policy(&self) -> RetryPolicy {
        RetryPolicy {
            max_retries: self.max_retries,
            initial_delay: Duration::from_secs_f64(self.initial_retry_delay),
            max_delay: Duration::from_secs_f64(self.max_retry_delay),
        }
    }

    pub fn timeout(&self) -> Duration {
        Duration::from_secs_f64(self.timeout)
    }
}

/// Client-side rate limits of a deployment (requests and tokens per minute), as deployed:
/// None = Bailian's documented limit for the model (where there is one), Some(0) = none at
/// all, Some(n) = n.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RateLimits {
    pub requests_per_minute: Option<u32>,
    pub tokens_per_minute: Option<u32>,
}

impl RateLimits {
    pub fn new(rpm: Option<i32>, tpm: Option<i32>) -> Result<Self, AiError> {
        let check = |name: &str, v: Option<i32>| match v {
            None => Ok(None),
            Some(n) if (0..=100_000_000).contains(&n) => Ok(Some(n as u32)),
            Some(n) => Err(AiError::invalid_with_hint(
                format!("{name} must be between 0 and 100000000, got {n}"),
                "NULL takes Bailian's documented limit for the model (see ai_rate_limits); 0 means no limit.",
            )),
        };
        Ok(RateLimits {
            requests_per_minute: check("requests_per_minute", rpm)?,
            tokens_per_minute: check("tokens_per_minute", tpm)?,
        })
    }
}

/// Where a deployment's effective limit comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LimitSource {
    /// requests_per_minute/tokens_per_minute of ai_deploy_model.
    Deployment,
    /// Bailian's documentation (the citation).
    Documented(&'static str),
    /// Neither: no limit.
    None,
}

/// The limits a deployment's requests are paced by, and where each comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EffectiveLimits {
    pub requests_per_minute: Option<u32>,
    pub tokens_per_minute: Option<u32>,
    pub requests_source: LimitSource,
    pub tokens_source: LimitSource,
}

impl EffectiveLimits {
    /// "deployment", "documented: <citation>", "none", or per dimension where two sources
    /// give one each.
    pub fn describe(&self) -> String {
        let one = |s: LimitSource| match s {
            LimitSource::Deployment => "deployment".to_string(),
            LimitSource::Documented(c) => format!("documented: {c}"),
            LimitSource::None => "none".to_string(),
        };
        if self.requests_source == self.tokens_source || self.tokens_source == LimitSource::None {
            one(self.requests_source)
        } else if self.requests_source == LimitSource::None {
            one(self.tokens_source)
        } else {
            format!("requests: {}; tokens: {}", one(self.requests_source), one(self.tokens_source))
        }
    }
}

/// What one call may spend: per attempt, and attempts.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CallSettings {
    pub timeout: Duration,
    pub retry: RetryPolicy,
}

/// A checked deployment.
#[derive(Clone, Debug)]
pub struct Deployment {
    pub name: String,
    pub spec: &'static ModelSpec,
    /// OpenSearch's workspace name; None for Bailian.
    pub workspace: Option<String>,
    pub key: KeySource,
    pub params: Map<String, Value>,
    pub retry: RetrySettings,
    pub region: Region,
    pub base_url: Option<String>,
    pub limits: RateLimits,
    /// Task prompts a DBA replaced for this model (`ai_set_prompt`), by function name.
    pub prompts: std::collections::BTreeMap<String, String>,
    /// Whether answers are kept in the answer cache (`ai_deploy_model(..., cache => true)`).
    pub cache: bool,
    /// Whether chat calls go to Bailian's Batch Chat (`batch_chat => true`, `crate::tiers`).
    pub batch_chat: bool,
}

/// `ai_deploy_model`'s arguments as SQL passed them (None = SQL NULL).
#[derive(Clone, Debug, Default)]
pub struct DeployArgs {
    pub model_name: Option<String>,
    pub model_type: Option<String>,
    pub api_key: Option<String>,
    pub params: Option<Value>,
    pub max_retries: Option<i32>,
    pub initial_retry_delay: Option<f64>,
    pub max_retry_delay: Option<f64>,
    pub timeout: Option<f64>,
    pub region: Option<String>,
    pub base_url: Option<String>,
    pub requests_per_minute: Option<i32>,
    pub tokens_per_minute: Option<i32>,
    /// 'bailian' (None means the same) or 'opensearch'.
    pub provider: Option<String>,
    pub workspace: Option<String>,
    /// None: false.
    pub cache: Option<bool>,
    /// None: false.
    pub batch_chat: Option<bool>,
}

fn required<T>(v: Option<T>, name: &str) -> Result<T, AiError> {
    v.ok_or_else(|| AiError::invalid(format!("{name} must not be NULL")))
}

/// Model names are free text but must be printable and reasonably short, as they appear in
/// every query that calls the model.
pub fn check_model_name(name: &str) -> Result<(), AiError> {
    if name.trim().is_empty() {
        return Err(AiError::invalid("model_name must not be empty"));
    }
    if name.chars().count() > 128 {
        return Err(AiError::invalid(format!(
            "model_name must be at most 128 characters, got {}",
            name.chars().count()
        )));
    }
    if name.chars().any(char::is_control) || name.trim() != name {
        return Err(AiError::invalid(
            "model_name must not contain control characters or leading/trailing whitespace",
        ));
    }
    Ok(())
}

pub fn parse_provider(raw: Option<&str>) -> Result<Provider, AiError> {
    let Some(raw) = raw else { return Ok(Provider::Bailian) };
    Provider::parse(raw).ok_or_else(|| {
        AiError::invalid(format!(
            "invalid provider \"{}\"; allowed: bailian (Model Studio), opensearch (OpenSearch AI Search Open Platform)",
            raw.escape_default()
        ))
    })
}

pub fn find_model_type(provider: Provider, model_type: &str) -> Result<&'static ModelSpec, AiError> {
    registry::find_at(provider, model_type).ok_or_else(|| {
        let list = format!(
            "SELECT model_type FROM ai_supported_models() WHERE provider = '{provider}' lists them all."
        );
        let near = registry::similar(provider, model_type, 3);
        let hint = if near.is_empty() {
            list
        } else {
            format!(
                "Did you mean {}? {list}",
                near.iter().map(|m| format!("\"{m}\"")).collect::<Vec<_>>().join(" or ")
            )
        };
        AiError::invalid_with_hint(
            format!("unsupported model_type \"{}\" for provider {provider}", model_type.escape_default()),
            hint,
        )
    })
}

/// Batch Chat serves a few chat models, in Beijing only (`crate::tiers`).
fn check_batch_chat(spec: &ModelSpec, region: Region) -> Result<(), AiError> {
    let allowed = || tiers::BATCH_CHAT_MODELS.join(", ");
    if spec.provider != Provider::Bailian || !tiers::BATCH_CHAT_MODELS.contains(&spec.model_type) {
        return Err(AiError::invalid_with_hint(
            format!("batch_chat => true is not allowed for model \"{}\": Bailian's Batch Chat serves {}", spec.model_type, allowed()),
            "Deploy one of those models for Batch Chat, or use CALL ai_update(..., mode => 'batch') (the Batch File API) for others.",
        ));
    }
    if region != Region::Beijing {
        return Err(AiError::invalid_with_hint(
            format!(
                "batch_chat => true is not allowed in region '{}': Bailian's Batch Chat is in 'beijing' only",
                region.as_str()
            ),
            "Deploy with region => 'beijing' (and a Beijing API key).",
        ));
    }
    Ok(())
}

/// Whether a model's answers may be kept and given again: an embedding, a chat or a
/// translation answer depends only on its request (at a temperature above 0, the one answer
/// kept stands for the many the model could give: the README says so). Not an answer that
/// reads the web (OpenSearch, or `enable_search`), which changes with the web, nor a rerank
/// score (its calls are not kept).
fn check_cacheable(spec: &ModelSpec, params: &Map<String, Value>) -> Result<(), AiError> {
    let refused = if spec.provider == Provider::OpenSearch {
        Some("OpenSearch's answers read the web, which changes".to_string())
    } else if spec.task == Task::Rerank {
        Some(format!("{} is a rerank model, whose scores are not kept", spec.model_type))
    } else if params.get("enable_search") == Some(&Value::Bool(true)) {
        Some("params enable web search (enable_search), whose answers change with the web".to_string())
    } else {
        None
    };
    match refused {
        Some(why) => Err(AiError::invalid_with_hint(
            format!("cache => true is not allowed for model \"{}\": {why}", spec.model_type),
            "The answer cache is for Bailian chat, translation and embedding models without web search; deploy with cache => false (the default).",
        )),
        None => Ok(()),
    }
}

/// An OpenSearch workspace name goes into the URL path: a plain name only.
fn check_workspace(provider: Provider, workspace: Option<String>) -> Result<Option<String>, AiError> {
    match (provider, workspace) {
        (Provider::Bailian, None) => Ok(None),
        (Provider::Bailian, Some(_)) => Err(AiError::invalid(
            "workspace applies only to provider 'opensearch'; leave it NULL for bailian",
        )),
        (Provider::OpenSearch, None) => Ok(Some("default".into())),
        (Provider::OpenSearch, Some(w)) => {
            let ok = !w.is_empty()
                && w.len() <= 64
                && w.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
            if ok {
                Ok(Some(w))
            } else {
                Err(AiError::invalid(format!(
                    "invalid workspace \"{}\"; allowed: 1 to 64 letters, digits, '_' or '-', e.g. default",
                    w.escape_default()
                )))
            }
        }
    }
}

/// `raw` as it may appear in a message: userinfo (`user:password@`) and key-shaped tokens
/// replaced, since a URL can carry credentials.
fn shown_url(raw: &str) -> String {
    let masked = match raw.find("://") {
        Some(start) => {
            let rest = &raw[start + 3..];
            let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
            match rest[..authority_end].rfind('@') {
                Some(at) => format!("{}://***@{}", &raw[..start], &rest[at + 1..]),
                None => raw.to_string(),
            }
        }
        None => raw.to_string(),
    };
    crate::secret::scrub_keys(&masked).escape_default().to_string()
}

/// Checks an http(s) URL and returns it without a trailing slash.
pub fn check_base_url(raw: &str) -> Result<String, AiError> {
    let bad = |why: &str| {
        AiError::invalid(format!(
            "invalid base_url \"{}\": {why}; allowed: an http:// or https:// URL such as \
             https://dashscope.aliyuncs.com/compatible-mode/v1",
            shown_url(raw)
        ))
    };
    let url = reqwest::Url::parse(raw.trim()).map_err(|e| bad(&e.to_string()))?;
    if url.scheme() != "http" && url.scheme() != "https" {
        return Err(bad("the scheme must be http or https"));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(bad("it has no host"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(bad("credentials do not belong in the URL (use api_key)"));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(bad("a query string or fragment is not allowed"));
    }
    Ok(url.as_str().trim_end_matches('/').to_string())
}

impl Deployment {
    /// Checks every argument, in the order of the signature, and stops at the first problem.
    pub fn from_args(a: DeployArgs) -> Result<Deployment, AiError> {
        let name = required(a.model_name.clone(), "model_name")?;
        check_model_name(&name)?;
        let provider = parse_provider(a.provider.as_deref())?;
        let spec = find_model_type(provider, &required(a.model_type.clone(), "model_type")?)?;
        let key = KeySource::parse_for(provider, &required(a.api_key.clone(), "api_key")?)?;
        Deployment::finish(name, spec, key, a)
    }

    /// A deployment read back from the catalog, whose key was stored sealed (so it is passed
    /// decoded rather than through `api_key`). The row is checked again like a new deployment:
    /// this guards against hand-edited rows and models an upgrade no longer supports.
    pub fn from_catalog(a: DeployArgs, key: KeySource) -> Result<Deployment, AiError> {
        let name = required(a.model_name.clone(), "model_name")?;
        check_model_name(&name)?;
        let provider = parse_provider(a.provider.as_deref())?;
        let spec = find_model_type(provider, &required(a.model_type.clone(), "model_type")?)?;
        Deployment::finish(name, spec, key, a)
    }

    fn finish(
        name: String,
        spec: &'static ModelSpec,
        key: KeySource,
        a: DeployArgs,
    ) -> Result<Deployment, AiError> {
        let params = params::validate(spec, &a.params.unwrap_or(Value::Null), Phase::Deploy)?;
        let region = Region::parse(&required(a.region, "region")?)?;
        let batch_chat = a.batch_chat.unwrap_or(false);
        if batch_chat {
            check_batch_chat(spec, region)?;
        }
        let retry = RetrySettings::with_timeouts(
            required(a.max_retries, "max_retries")?,
            required(a.initial_retry_delay, "initial_retry_delay")?,
            required(a.max_retry_delay, "max_retry_delay")?,
            required(a.timeout, "timeout")?,
            if batch_chat { tiers::BATCH_CHAT_TIMEOUT } else { (1.0, 1200.0) },
        )
        .map_err(|e| match e {
            AiError::InvalidArgument { message, .. } if batch_chat && message.starts_with("timeout") => {
                AiError::invalid_with_hint(
                    message,
                    "Batch Chat holds the connection while the request queues: a deployment with batch_chat => true takes a timeout of 60 to 3600 seconds (Bailian's default is 3600).",
                )
            }
            other => other,
        })?;
        let base_url = a.base_url.as_deref().map(check_base_url).transpose()?;
        let limits = RateLimits::new(a.requests_per_minute, a.tokens_per_minute)?;
        let workspace = check_workspace(spec.provider, a.workspace)?;
        let cache = a.cache.unwrap_or(false);
        if cache {
            check_cacheable(spec, &params)?;
        }
        match (spec.provider, spec.api, &base_url) {
            (Provider::OpenSearch, _, None) => {
                return Err(AiError::invalid_with_hint(
                    "provider 'opensearch' needs base_url: the host of your OpenSearch AI Search Open Platform instance",
                    "Pass base_url => 'https://<instance>.<region>.opensearch.aliyuncs.com' (the console's API endpoint).",
                ))
            }
            (_, Api::MultimodalEmbedding | Api::Rerank, Some(url)) if multimodal::native_root(url).is_none() => {
                return Err(AiError::invalid(format!(
                    "model {} is served by the DashScope native API, whose root pg_bailian derives from \
                     base_url: base_url must end with /compatible-mode/v1 (or be the native root, ending \
                     with /api/v1); got \"{}\"",
                    spec.model_type,
                    shown_url(url)
                )))
            }
            _ => {}
        }
        Ok(Deployment {
            name,
            spec,
            workspace,
            key,
            params,
            retry,
            region,
            base_url,
            limits,
            prompts: Default::default(),
            cache,
            batch_chat,
        })
    }

    /// Deploy-time checks that depend on the settings and on who deploys: the key source must
    /// be one the superuser's lists allow, and a non-superuser's `base_url` must name an
    /// allowed host (the region endpoints always are).
    pub fn check_policy(&self, policy: &Policy, superuser: bool) -> Result<(), AiError> {
        self.key.check(&self.name, policy)?;
        match &self.base_url {
            Some(url) if !superuser => policy.check_host(url),
            _ => Ok(()),
        }
    }

    /// The retry and timeout settings of one call: the deployed ones, lowered by per-call
    /// `timeout` / `max_retries` (already range-checked by `params::validate`). Raising them
    /// is refused: the deployer chose the most one call may cost, and any caller passes params.
    pub fn call_settings(&self, params: &Map<String, Value>) -> Result<CallSettings, AiError> {
        let raised = |what: &str, asked: String, deployed: String| {
            AiError::invalid_with_hint(
                format!(
                    "per-call {what} {asked} is above the {what} model \"{}\" is deployed with ({deployed}); \
                     a call may lower it, not raise it",
                    self.name
                ),
                "A role that may deploy the model can redeploy it with a higher value.",
            )
        };
        let mut timeout = self.retry.timeout;
        if let Some(t) = params.get("timeout").and_then(Value::as_f64) {
            if t > self.retry.timeout {
                return Err(raised("timeout", format!("{t} s"), format!("{} s", self.retry.timeout)));
            }
            timeout = t;
        }
        let mut retry = self.retry.policy();
        if let Some(n) = params.get("max_retries").and_then(Value::as_u64) {
            if n > u64::from(self.retry.max_retries) {
                return Err(raised("max_retries", n.to_string(), self.retry.max_retries.to_string()));
            }
            retry.max_retries = n as u32;
        }
        Ok(CallSettings { timeout: Duration::from_secs_f64(timeout), retry })
    }

    /// The limits this deployment's requests are paced by: each dimension as deployed, or,
    /// where the deployment left it NULL and `documented` is on, Bailian's documented limit
    /// for the model and region. Documented limits belong to Bailian's own hosts (a region's
    /// endpoint, a workspace domain, OpenSearch: `*.aliyuncs.com`); a `base_url` elsewhere (a
    /// gateway, a proxy) has limits of its own that only the DBA knows.
    pub fn effective_limits(&self, documented: bool) -> EffectiveLimits {
        let on_bailian = self.base_url.as_deref().is_none_or(|u| {
            reqwest::Url::parse(u)
                .ok()
                .and_then(|u| u.host_str().map(|h| h.to_ascii_lowercase()))
                .is_some_and(|h| h == "aliyuncs.com" || h.ends_with(".aliyuncs.com"))
        });
        let provider =
            if self.spec.api == crate::registry::Api::OpenSearch { "opensearch" } else { "bailian" };
        // Bailian documents no rate limits for its batch tiers (the Batch File API is "not
        // subject to the real-time limits"; Batch Chat queues), so a batch_chat deployment
        // takes none by default.
        let quota = (documented && on_bailian && !self.batch_chat)
            .then(|| crate::quotas::documented(provider, self.spec.model_type, self.region.as_str()))
            .flatten();
        let source = quota.map_or(LimitSource::None, |q| LimitSource::Documented(q.source));
        let pick = |deployed: Option<u32>, doc: Option<u32>| match deployed {
            Some(0) => (None, LimitSource::None),
            Some(n) => (Some(n), LimitSource::Deployment),
            None if doc.is_some() => (doc, source),
            None => (None, LimitSource::None),
        };
        let (rpm, requests_source) =
            pick(self.limits.requests_per_minute, quota.and_then(|q| q.requests_per_minute));
        let (tpm, tokens_source) =
            pick(self.limits.tokens_per_minute, quota.and_then(|q| q.tokens_per_minute));
        EffectiveLimits { requests_per_minute: rpm, tokens_per_minute: tpm, requests_source, tokens_source }
    }

    /// The host requests go to (for the rate-limit bucket).
    pub fn host(&self) -> String {
        reqwest::Url::parse(self.endpoint())
            .ok()
            .and_then(|u| u.host_str().map(|h| format!("{h}:{}", u.port_or_known_default().unwrap_or(0))))
            .unwrap_or_else(|| self.endpoint().to_string())
    }

    /// Where requests go: `base_url` when given (a gateway, or the stand-in of the host the
    /// deployment uses), else Batch Chat's host for a `batch_chat` deployment, else the
    /// region's endpoint.
    pub fn endpoint(&self) -> &str {
        match &self.base_url {
            Some(url) => url,
            None if self.batch_chat => tiers::BATCH_CHAT_ENDPOINT,
            None => self.region.endpoint(),
        }
    }

    /// The DashScope native API root (`.../api/v1`) of this deployment's host.
    fn native_root(&self) -> String {
        match &self.base_url {
            Some(base) => multimodal::native_root(base).unwrap_or_else(|| base.clone()),
            None => self.region.native_root().to_string(),
        }
    }

    /// Where a rerank model's requests go.
    pub fn rerank_url(&self) -> String {
        format!("{}{}", self.native_root(), crate::providers::rerank::PATH)
    }

    /// How embedding requests to this model are made.
    pub fn embedding_model(&self) -> EmbeddingModel {
        let url = match self.spec.api {
            Api::MultimodalEmbedding => format!("{}{}", self.native_root(), multimodal::PATH),
            _ => format!("{}/embeddings", self.endpoint()),
        };
        EmbeddingModel {
            model_type: self.spec.model_type,
            api: self.spec.api,
            url,
            dimension: self.dimension(),
            choosable: self.spec.dimensions.len() > 1,
            per_request: self.spec.max_inputs_per_request.unwrap_or(1).max(1) as usize,
        }
    }

    /// A chat request with `messages` and (merged, validated) `params`, to wherever this
    /// model's provider serves it.
    pub fn chat_request(
        &self,
        messages: Vec<Value>,
        params: &Map<String, Value>,
    ) -> Result<ChatRequest, AiError> {
        match self.spec.api {
            Api::OpenSearch => {
                let url = opensearch::url(
                    self.endpoint(),
                    self.workspace.as_deref().unwrap_or("default"),
                    self.spec.model_type,
                );
                Ok(opensearch::chat_request(self.spec, &url, messages, params))
            }
            _ => compatible::chat_request(self.spec, self.endpoint(), messages, params),
        }
    }

    /// The embedding dimension requests ask for.
    pub fn dimension(&self) -> Option<u32> {
        self.params.get("dimension").and_then(Value::as_u64).map(|d| d as u32).or(self.spec.default_dimension)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn args() -> DeployArgs {
        DeployArgs {
            provider: None,
            workspace: None,
            cache: None,
            batch_chat: None,
            model_name: Some("m".into()),
            model_type: Some("qwen-plus".into()),
            api_key: Some("sk-0123456789abcdef".into()),
            params: Some(json!({})),
            max_retries: Some(2),
            initial_retry_delay: Some(0.5),
            max_retry_delay: Some(8.0),
            timeout: Some(600.0),
            region: Some("beijing".into()),
            base_url: None,
            requests_per_minute: None,
            tokens_per_minute: None,
        }
    }

    fn err(f: impl FnOnce(&mut DeployArgs)) -> String {
        let mut a = args();
        f(&mut a);
        Deployment::from_args(a).unwrap_err().to_string()
    }

    #[test]
    fn batch_chat_goes_to_the_batch_host_for_the_models_it_serves() {
        let mut a = args();
        a.batch_chat = Some(true);
        a.timeout = Some(3600.0);
        let d = Deployment::from_args(a).unwrap();
        assert_eq!(d.endpoint(), tiers::BATCH_CHAT_ENDPOINT);
        assert!(d.effective_limits(true).requests_per_minute.is_none(), "no documented limit");
        let mut a = args();
        a.batch_chat = Some(true);
        a.base_url = Some("http://127.0.0.1:9/compatible-mode/v1".into());
        assert_eq!(Deployment::from_args(a).unwrap().endpoint(), "http://127.0.0.1:9/compatible-mode/v1");

        let e = err(|a| {
            a.batch_chat = Some(true);
            a.model_type = Some("qwen-max".into());
        });
        assert!(
            e.contains("not allowed for model \"qwen-max\"") && e.contains("qwen3-max, qwen-plus"),
            "{e}"
        );
        let e = err(|a| {
            a.batch_chat = Some(true);
            a.region = Some("singapore".into());
        });
        assert!(e.contains("'beijing' only"), "{e}");
        let e = err(|a| {
            a.batch_chat = Some(true);
            a.timeout = Some(30.0);
        });
        assert!(e.contains("timeout must be between 60 and 3600"), "{e}");
        assert!(err(|a| a.timeout = Some(3600.0)).contains("between 1 and 1200"));
    }

    #[test]
    fn cache_is_for_answers_that_can_be_given_again() {
        let mut a = args();
        a.cache = Some(true);
        assert!(Deployment::from_args(a).unwrap().cache);
        let e = err(|a| {
            a.cache = Some(true);
            a.model_type = Some("gte-rerank-v2".into());
        });
        assert!(e.contains("cache => true is not allowed") && e.contains("rerank"), "{e}");
        let e = err(|a| {
            a.cache = Some(true);
            a.params = Some(json!({"enable_search": true}));
        });
        assert!(e.contains("web search"), "{e}");
    }

    #[test]
    fn defaults_deploy() {
        let d = Deployment::from_args(args()).unwrap();
        assert_eq!(d.endpoint(), "https://dashscope.aliyuncs.com/compatible-mode/v1");
        assert_eq!(d.retry, RetrySettings::default());
    }

    #[test]
    fn retry_ranges_are_inclusive() {
        assert!(RetrySettings::new(0, 0.5, 1.0, 1.0).is_ok());
        assert!(RetrySettings::new(100, 8.0, 60.0, 1200.0).is_ok());
        assert_eq!(err(|a| a.max_retries = Some(101)), "max_retries must be between 0 and 100, got 101");
        assert_eq!(err(|a| a.max_retries = Some(-1)), "max_retries must be between 0 and 100, got -1");
        assert_eq!(
            err(|a| a.initial_retry_delay = Some(0.4)),
            "initial_retry_delay must be between 0.5 and 8 seconds, got 0.4"
        );
        assert!(
            err(|a| a.max_retry_delay = Some(61.0)).starts_with("max_retry_delay must be between 1 and 60")
        );
        assert!(err(|a| a.timeout = Some(0.0)).starts_with("timeout must be between 1 and 1200"));
        assert!(err(|a| a.timeout = Some(f64::NAN)).contains("got NaN"));
        assert!(err(|a| {
            a.initial_retry_delay = Some(8.0);
            a.max_retry_delay = Some(2.0)
        })
        .contains("must not exceed max_retry_delay"));
    }

    #[test]
    fn names_regions_urls() {
        assert_eq!(err(|a| a.model_name = Some(" ".into())), "model_name must not be empty");
        assert_eq!(err(|a| a.model_name = None), "model_name must not be NULL");
        assert!(err(|a| a.model_type = Some("gpt-4".into())).starts_with("unsupported model_type \"gpt-4\""));
        assert!(err(|a| a.region = Some("hangzhou".into())).contains("allowed: beijing, singapore, virginia"));
        let mut a = args();
        a.region = Some("Singapore".into());
        assert_eq!(Deployment::from_args(a).unwrap().region, Region::Singapore);
        assert!(err(|a| a.base_url = Some("ftp://x".into())).contains("scheme must be http or https"));
        assert!(err(|a| a.base_url = Some("not a url".into())).starts_with("invalid base_url"));
        let e = err(|a| a.base_url = Some("http://user:s3cret@h/v1".into()));
        assert!(e.contains("credentials") && e.contains("http://***@h/v1") && !e.contains("s3cret"), "{e}");
        let mut a = args();
        a.base_url = Some("http://127.0.0.1:9999/compatible-mode/v1/".into());
        assert_eq!(Deployment::from_args(a).unwrap().endpoint(), "http://127.0.0.1:9999/compatible-mode/v1");
        assert!(err(|a| a.requests_per_minute = Some(-1)).contains("requests_per_minute must be between 0"));
    }

    #[test]
    fn per_call_settings_lower_but_never_raise() {
        let mut a = args();
        a.max_retries = Some(3);
        a.timeout = Some(30.0);
        let d = Deployment::from_args(a).unwrap();
        let s = d.call_settings(&Map::new()).unwrap();
        assert_eq!((s.timeout, s.retry.max_retries), (Duration::from_secs(30), 3));
        let lower = json!({"timeout": 5, "max_retries": 0});
        let s = d.call_settings(lower.as_object().unwrap()).unwrap();
        assert_eq!((s.timeout, s.retry.max_retries), (Duration::from_secs(5), 0));
        let e = d.call_settings(json!({"timeout": 1200}).as_object().unwrap()).unwrap_err();
        assert_eq!(e.sqlstate(), "22023");
        assert_eq!(
            e.to_string(),
            "per-call timeout 1200 s is above the timeout model \"m\" is deployed with (30 s); a call may lower it, not raise it"
        );
        let e = d.call_settings(json!({"max_retries": 100}).as_object().unwrap()).unwrap_err();
        assert!(e.to_string().starts_with("per-call max_retries 100 is above"), "{e}");
    }

    #[test]
    fn policy_applies_to_keys_and_non_superuser_hosts() {
        let mut a = args();
        a.base_url = Some("http://127.0.0.1:9/compatible-mode/v1".into());
        let d = Deployment::from_args(a.clone()).unwrap();
        assert!(d.check_policy(&Policy::default(), true).is_ok(), "superusers may use any host");
        assert_eq!(d.check_policy(&Policy::default(), false).unwrap_err().sqlstate(), "42501");
        let loopback =
            Policy { hosts: crate::policy::HostList::parse("http://127.0.0.1"), ..Policy::default() };
        assert!(d.check_policy(&loopback, false).is_ok());
        a.base_url = None;
        a.api_key = Some("env:HOME".into());
        let d = Deployment::from_args(a).unwrap();
        assert_eq!(d.check_policy(&Policy::default(), true).unwrap_err().sqlstate(), "42501");
    }

    #[test]
    fn embedding_dimension_defaults_from_registry() {
        let mut a = args();
        a.model_type = Some("text-embedding-v4".into());
        assert_eq!(Deployment::from_args(a.clone()).unwrap().dimension(), Some(1024));
        a.params = Some(json!({"dimension": 256}));
        assert_eq!(Deployment::from_args(a).unwrap().dimension(), Some(256));
    }
}
