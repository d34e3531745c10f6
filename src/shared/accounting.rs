//! The meter of a call: every request a deployment's call makes is counted in `ai_usage`, in
//! this backend's activity slot (`ai_activity`) and in the totals an AI Batch node shows in
//! EXPLAIN ANALYZE; its cost is charged to the budgets that cover it, and a request a spent
//! budget covers is not sent.
//!
//! An `Account` is made once per statement, model and function (its price and budgets are
//! read from the catalog then), so a query over many rows reads them once.

use super::{region, with_slot};
use bailian_core::meter::{Meter, Price, Served, Usage};
use bailian_core::shared::{BudgetKey, Name, UsageDelta, UsageKey};
use bailian_core::AiError;
use pgrx::pg_sys;
use serde_json::Value;
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// A budget that covers a call, as the catalog has it for the current period.
#[derive(Clone, Debug)]
pub struct BudgetDef {
    pub id: i64,
    pub limit: f64,
    /// 'yuan' or 'tokens'.
    pub unit: String,
    /// 'day' or 'month'.
    pub period: String,
    /// Unix seconds.
    pub period_start: i64,
    pub resets_at: String,
    /// "of role x on model 'm'".
    pub label: String,
}

impl BudgetDef {
    fn key(&self) -> BudgetKey {
        // SAFETY: MyDatabaseId is set at backend start.
        BudgetKey::new(unsafe { pg_sys::MyDatabaseId }.to_u32(), self.id, self.period_start)
    }

    fn limit_units(&self) -> u64 {
        if self.unit == "yuan" {
            (self.limit * 1e9).round() as u64
        } else {
            self.limit.round() as u64
        }
    }
}

/// Yuan from nano-yuan, as text with nine decimals (trailing zeros cut).
pub fn yuan_text(nano: u64) -> String {
    let s = format!("{}.{:09}", nano / 1_000_000_000, nano % 1_000_000_000);
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

pub struct Account {
    key: UsageKey,
    /// Where the usage row was last found (usize::MAX: not yet).
    hint: AtomicUsize,
    price: Option<Price>,
    budgets: Vec<(BudgetDef, BudgetKey, u64)>,
}

/// What this backend's calls have done since it started: an AI Batch node shows the
/// difference between its start and its end in EXPLAIN ANALYZE.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Totals {
    pub requests: u64,
    pub retries: u64,
    pub throttled: u64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub cost_nano_yuan: u64,
    /// Whether some answer had no price.
    pub cost_unknown: bool,
}

impl Totals {
    pub fn since(&self, earlier: &Totals) -> Totals {
        Totals {
            requests: self.requests - earlier.requests,
            retries: self.retries - earlier.retries,
            throttled: self.throttled - earlier.throttled,
            prompt_tokens: self.prompt_tokens - earlier.prompt_tokens,
            completion_tokens: self.completion_tokens - earlier.completion_tokens,
            cost_nano_yuan: self.cost_nano_yuan - earlier.cost_nano_yuan,
            cost_unknown: self.cost_unknown && !earlier.cost_unknown,
        }
    }
}

/// What a statement's Accounts are kept under (`catalog::stamp`), and the Accounts by
/// (model_name, function).
type Stamp = (i64, i64, u64);
type Accounts = HashMap<(String, &'static str), Arc<Account>>;

thread_local! {
    static TOTALS: Cell<Totals> = const { Cell::new(Totals {
        requests: 0, retries: 0, throttled: 0, prompt_tokens: 0, completion_tokens: 0, cost_nano_yuan: 0,
        cost_unknown: false,
    }) };
    /// The Accounts of the current statement, by (model_name, function).
    static ACCOUNTS: RefCell<(Stamp, Accounts)> =
        RefCell::new(((0, 0, 0), HashMap::new()));
    /// A dry run in progress (ai_estimate): what would have been sent.
    static DRY: RefCell<Option<DryRun>> = const { RefCell::new(None) };
}

pub fn totals() -> Totals {
    TOTALS.with(Cell::get)
}

fn add_totals(f: impl FnOnce(&mut Totals)) {
    TOTALS.with(|t| {
        let mut v = t.get();
        f(&mut v);
        t.set(v);
    })
}

/// The Account for `function` calling the deployment `model_name` (of `model_type`) in the
/// current statement. `priced`: whether ai_prices applies (Bailian's price list; OpenSearch
/// bills its services separately, so its calls have no price here).
pub fn account(
    model_name: &str,
    model_type: &str,
    priced: bool,
    batch: bool,
    function: &'static str,
) -> Result<Arc<Account>, AiError> {
    let stamp = crate::catalog::stamp();
    let hit = ACCOUNTS.with(|a| {
        let mut a = a.borrow_mut();
        if a.0 != stamp {
            *a = (stamp, HashMap::new());
        }
        a.1.get(&(model_name.to_string(), function)).cloned()
    });
    if let Some(hit) = hit {
        return Ok(hit);
    }
    // SAFETY: plain reads of the session's identity and the statement's start.
    let (role, database, statement_start) =
        unsafe { (pg_sys::GetUserId(), pg_sys::MyDatabaseId, pg_sys::GetCurrentStatementStartTimestamp()) };
    let (price, budgets) =
        crate::catalog::price_and_budgets(model_name, if priced { model_type } else { "" }, role, batch)?;
    let budgets = budgets
        .into_iter()
        .map(|b| {
            let key = b.key();
            let limit = b.limit_units();
            (b, key, limit)
        })
        .collect();
    let account = Arc::new(Account {
        key: UsageKey {
            database: database.to_u32(),
            role: role.to_u32(),
            model_name: Name::new(model_name),
            model_type: Name::new(model_type),
            function: Name::new(function),
        },
        hint: AtomicUsize::new(usize::MAX),
        price,
        budgets,
    });
    with_slot(|slot| {
        if let Some(slot) = slot {
            slot.begin(database.to_u32(), role.to_u32(), statement_start);
            slot.model(model_name);
        }
    });
    ACCOUNTS.with(|a| a.borrow_mut().1.insert((model_name.to_string(), function), account.clone()));
    Ok(account)
}

impl Account {
    fn add(&self, d: &UsageDelta) {
        if !crate::guc::track_usage() {
            return;
        }
        let hint = self.hint.load(Ordering::Relaxed);
        let at = region().usage.add(&self.key, d, (hint != usize::MAX).then_some(hint));
        self.hint.store(at, Ordering::Relaxed);
    }

    fn model_name(&self) -> &str {
        self.key.model_name.as_str()
    }
}

impl Meter for Account {
    fn intercept(&self, body: &Value, inputs: u64) -> Option<AiError> {
        DRY.with(|d| {
            let mut d = d.borrow_mut();
            let dry = d.as_mut()?;
            dry.record(self.model_name(), self.key.model_type.as_str(), self.price, body, inputs);
            Some(AiError::DryRun)
        })
    }

    fn admit(&self) -> Result<(), AiError> {
        for (b, key, limit) in &self.budgets {
            let spent = region().budgets.spent(key);
            let (used, shown) = if b.unit == "yuan" {
                (spent.nano_yuan, format!("{} of {} yuan", yuan_text(spent.nano_yuan), yuan_text(*limit)))
            } else {
                (spent.tokens, format!("{} of {} tokens", spent.tokens, limit))
            };
            if used >= *limit {
                return Err(AiError::BudgetExceeded {
                    message: format!(
                        "the {} budget {} (budget {}) is spent: {} this {}; it resets at {}",
                        if b.period == "day" { "daily" } else { "monthly" },
                        b.label,
                        b.id,
                        shown,
                        b.period,
                        b.resets_at
                    ),
                    hint: "Nothing was sent. A superuser or the model's deployer can raise it with ai_set_budget; \
                           SELECT * FROM ai_budgets shows every budget and what it has spent."
                        .into(),
                });
            }
        }
        Ok(())
    }

    fn sent(&self, inputs: u64, retry: bool) {
        self.add(&UsageDelta {
            calls: u64::from(!retry),
            requests: 1,
            inputs,
            retries: u64::from(retry),
            ..UsageDelta::default()
        });
        with_slot(|s| {
            if let Some(s) = s.filter(|_| crate::guc::track_usage()) {
                s.sent(retry)
            }
        });
        add_totals(|t| {
            t.requests += 1;
            t.retries += u64::from(retry);
        });
    }

    fn failed(&self, status: Option<u16>, latency: Duration) {
        let throttled = status == Some(429);
        self.add(&UsageDelta {
            throttled: u64::from(throttled),
            latency: Some(latency),
            ..UsageDelta::default()
        });
        with_slot(|s| {
            if let Some(s) = s.filter(|_| crate::guc::track_usage()) {
                s.answered(throttled, 0, Some(0))
            }
        });
        add_totals(|t| t.throttled += u64::from(throttled));
    }

    fn answered(&self, usage: &Usage, latency: Duration) {
        let cost = self.price.map(|p| p.cost_nano_yuan(usage));
        self.add(&UsageDelta {
            prompt_tokens: usage.prompt_tokens,
            completion_tokens: usage.completion_tokens,
            cached_tokens: usage.cached_tokens,
            reasoning_tokens: usage.reasoning_tokens,
            cost_nano_yuan: cost,
            latency: Some(latency),
            ..UsageDelta::default()
        });
        let tokens = usage.prompt_tokens + usage.completion_tokens;
        for (_, key, _) in &self.budgets {
            region().budgets.charge(key, cost.unwrap_or(0), tokens);
        }
        with_slot(|s| {
            if let Some(s) = s.filter(|_| crate::guc::track_usage()) {
                s.answered(false, tokens, cost)
            }
        });
        add_totals(|t| {
            t.prompt_tokens += usage.prompt_tokens;
            t.completion_tokens += usage.completion_tokens;
            t.cost_nano_yuan += cost.unwrap_or(0);
            t.cost_unknown |= cost.is_none() && tokens > 0;
        });
    }

    fn gave_up(&self) {
        self.add(&UsageDelta { failures: 1, ..UsageDelta::default() });
    }

    fn served(&self, how: Served, usage: &Usage) {
        if how == Served::SharedFailure {
            self.add(&UsageDelta { inputs: 1, failures: 1, ..UsageDelta::default() });
            return;
        }
        let saved = self.price.map_or(0, |p| p.cost_nano_yuan(usage));
        // `calls` counts requests as asked; a call served without one is an input asked for.
        self.add(&UsageDelta {
            inputs: 1,
            shared_calls: u64::from(how == Served::Shared),
            cache_hits: u64::from(how == Served::Cache),
            saved_nano_yuan: saved,
            ..UsageDelta::default()
        });
    }

    fn waiting(&self, starts: bool) {
        with_slot(|s| {
            if let Some(s) = s.filter(|_| crate::guc::track_usage()) {
                s.waiting(starts)
            }
        });
    }
}

// ---- dry runs (ai_estimate) ------------------------------------------------------------

/// What a statement run dry would have sent, per model.
#[derive(Clone, Debug, Default)]
pub struct DryRun {
    pub models: Vec<DryModel>,
}

#[derive(Clone, Debug, Default)]
pub struct DryModel {
    pub model_name: String,
    pub model_type: String,
    pub requests: u64,
    pub inputs: u64,
    pub input_tokens: u64,
    pub input_tokens_exact: bool,
    /// None: some request had nothing bounding its output.
    pub output_tokens_max: Option<u64>,
    pub price: Option<Price>,
}

impl DryRun {
    fn record(
        &mut self,
        model_name: &str,
        model_type: &str,
        price: Option<Price>,
        body: &Value,
        inputs: u64,
    ) {
        let at = match self.models.iter().position(|m| m.model_name == model_name) {
            Some(i) => i,
            None => {
                self.models.push(DryModel {
                    model_name: model_name.into(),
                    model_type: model_type.into(),
                    input_tokens_exact: true,
                    output_tokens_max: Some(0),
                    price,
                    ..DryModel::default()
                });
                self.models.len() - 1
            }
        };
        let m = &mut self.models[at];
        m.requests += 1;
        m.inputs += inputs;
        for text in bailian_core::estimate::request_texts(body) {
            let (tokens, exact) = count_tokens(model_type, text);
            m.input_tokens += tokens;
            m.input_tokens_exact &= exact;
        }
        let spec = bailian_core::registry::find(model_type);
        match spec.and_then(|spec| bailian_core::estimate::max_output_tokens(spec, body)) {
            Some(n) if m.output_tokens_max.is_some() => {
                m.output_tokens_max = m.output_tokens_max.map(|t| t + n)
            }
            _ => m.output_tokens_max = None,
        }
    }
}

/// Whether a dry run (ai_estimate) is in progress: its calls answer NULL, never a kept answer.
pub fn dry_running() -> bool {
    DRY.with(|d| d.borrow().is_some())
}

/// Runs `f` with every AI call counted and not sent; returns what would have been sent.
pub fn dry_run<T>(f: impl FnOnce() -> T) -> (T, DryRun) {
    struct Reset;
    impl Drop for Reset {
        fn drop(&mut self) {
            DRY.with(|d| *d.borrow_mut() = None);
        }
    }
    DRY.with(|d| *d.borrow_mut() = Some(DryRun::default()));
    let _reset = Reset;
    let out = f();
    let dry = DRY.with(|d| d.borrow_mut().take()).unwrap_or_default();
    (out, dry)
}

/// Tokens of `text` for `model_type`: exact for Qwen models where the vocabulary can be read
/// (`ai_count_tokens`'s), else the documented approximation.
fn count_tokens(model_type: &str, text: &str) -> (u64, bool) {
    let qwen = bailian_core::tokens::counts_exactly(model_type)
        .then(crate::functions::tokens::qwen)
        .and_then(Result::ok);
    let count = bailian_core::tokens::count(model_type, text, qwen.as_deref());
    (count.tokens, count.exact)
}
