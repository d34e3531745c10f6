//! What each budget has spent in its current period, counted for the whole cluster.
//!
//! The budgets themselves (role, model, limit, unit, period) are rows of `bailian.budgets` in
//! each database, kept by pg_dump; this table holds only the spending, keyed by (database,
//! budget id, start of the period). A budget whose period has turned over starts again from
//! zero in the same row. Capacity is `pg_bailian.max_budgets`; `ai_set_budget` claims a row
//! when it sets a budget, so a full table is an error there, not a surprise at call time.

use super::Table;
use std::mem::size_of;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct BudgetKey {
    pub database: u32,
    _pad: u32,
    pub budget_id: i64,
    /// The period's start, Unix seconds.
    pub period_start: i64,
}

impl BudgetKey {
    pub fn new(database: u32, budget_id: i64, period_start: i64) -> BudgetKey {
        BudgetKey { database, _pad: 0, budget_id, period_start }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct BudgetRow {
    /// 0 free, 1 in use.
    pub state: u32,
    _pad: u32,
    pub key: BudgetKey,
    pub spent_nano_yuan: u64,
    pub spent_tokens: u64,
}

/// Spending so far in a budget's period.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Spent {
    pub nano_yuan: u64,
    pub tokens: u64,
}

pub struct Budgets(Table<BudgetRow>);

fn same_budget(r: &BudgetRow, k: &BudgetKey) -> bool {
    r.state == 1 && r.key.database == k.database && r.key.budget_id == k.budget_id
}

impl Budgets {
    pub(crate) fn bytes(len: u32) -> usize {
        Table::<BudgetRow>::bytes(len)
    }

    /// # Safety
    /// As `Table::over`.
    pub(crate) unsafe fn over(mem: *mut u8, len: u32) -> Budgets {
        Budgets(Table::over(mem, len))
    }

    /// Makes sure `key`'s budget has a row (keeping what it spent if the period is the same).
    /// False when every row belongs to another budget.
    pub fn claim(&self, key: &BudgetKey) -> bool {
        self.0.with(|rows| Self::row_of(rows, key).is_some())
    }

    fn row_of<'r>(rows: &'r mut [BudgetRow], key: &BudgetKey) -> Option<&'r mut BudgetRow> {
        let i = rows
            .iter()
            .position(|r| same_budget(r, key))
            .or_else(|| rows.iter().position(|r| r.state == 0))?;
        let r = &mut rows[i];
        if r.state == 0 || r.key.period_start != key.period_start {
            *r = BudgetRow { state: 1, key: *key, ..BudgetRow::default() };
        }
        Some(r)
    }

    /// What `key`'s budget spent in `key`'s period (zero for a new period).
    pub fn spent(&self, key: &BudgetKey) -> Spent {
        self.0.with(|rows| {
            rows.iter()
                .find(|r| same_budget(r, key) && r.key.period_start == key.period_start)
                .map_or(Spent::default(), |r| Spent { nano_yuan: r.spent_nano_yuan, tokens: r.spent_tokens })
        })
    }

    /// Adds spending to `key`'s budget; false if it has no row and none is free (then the
    /// spending is not counted: `ai_set_budget` claims rows, so this is a budget set while
    /// the table was full in another database's view, which `ai_budgets` reports).
    pub fn charge(&self, key: &BudgetKey, nano_yuan: u64, tokens: u64) -> bool {
        self.0.with(|rows| match Self::row_of(rows, key) {
            Some(r) => {
                r.spent_nano_yuan = r.spent_nano_yuan.saturating_add(nano_yuan);
                r.spent_tokens = r.spent_tokens.saturating_add(tokens);
                true
            }
            None => false,
        })
    }

    /// Frees the rows of the budgets `keep` says no to.
    pub fn retain(&self, keep: impl Fn(&BudgetKey) -> bool) {
        self.0.with(|rows| {
            for r in rows.iter_mut() {
                if r.state == 1 && !keep(&r.key) {
                    *r = BudgetRow::default();
                }
            }
        })
    }

    pub fn rows(&self) -> Vec<BudgetRow> {
        self.0.with(|rows| rows.iter().filter(|r| r.state == 1).copied().collect())
    }

    /// Puts saved rows back at startup (what does not fit is dropped: a smaller
    /// `max_budgets` than when saved).
    pub fn restore(&self, saved: &[BudgetRow]) {
        self.0.with(|rows| {
            let mut free = rows.iter_mut().filter(|r| r.state == 0);
            for s in saved.iter().filter(|s| s.state == 1) {
                match free.next() {
                    Some(r) => *r = *s,
                    None => break,
                }
            }
        })
    }
}

const FILE_MAGIC: &[u8; 8] = b"PGBBUD01";

pub fn encode(rows: &[BudgetRow]) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 + std::mem::size_of_val(rows));
    out.extend_from_slice(FILE_MAGIC);
    out.extend_from_slice(&(size_of::<BudgetRow>() as u32).to_le_bytes());
    out.extend_from_slice(&(rows.len() as u32).to_le_bytes());
    for r in rows {
        for v in
            [r.state as u64, u64::from(r.key.database), r.key.budget_id as u64, r.key.period_start as u64]
        {
            out.extend_from_slice(&v.to_le_bytes());
        }
        out.extend_from_slice(&r.spent_nano_yuan.to_le_bytes());
        out.extend_from_slice(&r.spent_tokens.to_le_bytes());
    }
    out
}

pub fn decode(data: &[u8]) -> Option<Vec<BudgetRow>> {
    if data.len() < 16 || &data[..8] != FILE_MAGIC {
        return None;
    }
    let count = u32::from_le_bytes(data[12..16].try_into().ok()?) as usize;
    if data.len() != 16 + count.checked_mul(48)? {
        return None;
    }
    let word = |c: &[u8], i: usize| u64::from_le_bytes(c[i * 8..i * 8 + 8].try_into().unwrap_or([0; 8]));
    Some(
        data[16..]
            .chunks_exact(48)
            .map(|c| BudgetRow {
                state: (word(c, 0) == 1) as u32,
                _pad: 0,
                key: BudgetKey::new(word(c, 1) as u32, word(c, 2) as i64, word(c, 3) as i64),
                spent_nano_yuan: word(c, 4),
                spent_tokens: word(c, 5),
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::super::{test_caps, Region};
    use super::*;

    #[test]
    fn spending_adds_up_and_a_new_period_starts_from_zero() {
        let r = Region::private(test_caps());
        let day1 = BudgetKey::new(5, 1, 1000);
        assert!(r.budgets.charge(&day1, 10, 3));
        assert!(r.budgets.charge(&day1, 5, 2));
        assert_eq!(r.budgets.spent(&day1), Spent { nano_yuan: 15, tokens: 5 });
        let day2 = BudgetKey::new(5, 1, 2000);
        assert_eq!(r.budgets.spent(&day2), Spent::default());
        r.budgets.charge(&day2, 1, 1);
        assert_eq!(r.budgets.spent(&day2), Spent { nano_yuan: 1, tokens: 1 });
        assert_eq!(r.budgets.rows().len(), 1, "the same row, turned over");
    }

    #[test]
    fn a_full_table_refuses_new_budgets_only() {
        let r = Region::private(test_caps());
        let n = r.capacities().budgets as i64;
        for id in 0..n {
            assert!(r.budgets.claim(&BudgetKey::new(5, id, 0)));
        }
        assert!(!r.budgets.claim(&BudgetKey::new(5, n, 0)));
        assert!(r.budgets.charge(&BudgetKey::new(5, 0, 0), 1, 1));
        r.budgets.retain(|k| k.database != 5 || k.budget_id == 0);
        assert!(r.budgets.claim(&BudgetKey::new(5, n, 0)));
    }

    #[test]
    fn saved_spending_comes_back() {
        let r = Region::private(test_caps());
        r.budgets.charge(&BudgetKey::new(5, 1, 1000), 10, 3);
        r.budgets.charge(&BudgetKey::new(6, 2, -5), 1, 0);
        let back = decode(&encode(&r.budgets.rows())).unwrap();
        let r2 = Region::private(test_caps());
        r2.budgets.restore(&back);
        assert_eq!(r2.budgets.rows(), r.budgets.rows());
        assert!(decode(b"PGBBUD01xxxx").is_none());
    }
}
