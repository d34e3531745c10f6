//! The table a job works on, read from the catalogs, and the statements the job runs on it.
//!
//! Every statement is built here in Rust and names nothing through the caller's search_path:
//! the relation by its schema, columns quoted, types schema-qualified
//! (`format_type_be_qualified`), and each comparison by the operator of the primary key's
//! own btree operator family, written `OPERATOR(schema.op)`. So no function, operator or type
//! another role creates can be picked up, whatever the search_path, and keys of any type and
//! operator class (composite, text, uuid, a domain, a non-default opclass, with INCLUDE
//! columns) page in the order the key's index defines.

use super::chunk::Analysis;
use bailian_core::AiError;
use pgrx::pg_sys;
use pgrx::prelude::*;
use std::ffi::CStr;

/// btree strategy numbers (access/stratnum.h).
const BT_LESS: i16 = 1;
const BT_EQUAL: i16 = 3;
const BT_GREATER: i16 = 5;

/// Which side of a key `keyset` bounds, and whether the key itself is in.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Bound {
    After,
    From,
    UpTo,
}

/// Where the claimed rows a locking read looks at start (see `Table::lock_claimed_sql`).
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum ClaimedFrom {
    /// After the last key of the page before (`$1`; NULL for the first page).
    AfterPage,
    /// From the first deferred row's key (`$1`) on.
    Deferred,
}

/// What the job writes into the target column.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TargetKind {
    /// `real[]`, or pgvector's `vector(n)` / `halfvec(n)` (written through their assignment
    /// cast from real[]); `dims` when the column fixes them.
    Embedding { dims: Option<i32> },
    /// `text`, `varchar(n)` (a value too long for it fails that row only).
    Text,
}

struct KeyColumn {
    name: String,
    /// The column's type, schema-qualified and with its typmod (`character(10)`, not
    /// `character`, which would be char(1) and cut every key to its first character).
    type_sql: String,
    eq: String,
    lt: String,
    gt: String,
}

/// The table, its primary key and the target column, checked.
pub struct Table {
    pub oid: pg_sys::Oid,
    /// Schema-qualified and quoted.
    pub name_sql: String,
    /// Unqualified, as users write it: for messages, and what a job's expression calls the
    /// row.
    pub shown: String,
    keys: Vec<KeyColumn>,
    pub target: String,
    pub target_attnum: i16,
    target_type: (pg_sys::Oid, i32),
    /// Which rows besides those with a NULL target the job fills: SQL over the row.
    filter: Option<String>,
    /// Key column names, for messages ("id" or "a, b").
    pub key_names: String,
}

fn spi(e: pgrx::spi::SpiError) -> AiError {
    AiError::Internal { message: format!("catalog query failed: {e}") }
}

/// `"x"`, always quoted (names come from the catalogs, so quoting never changes them).
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// A palloc'd C string from the lsyscache functions, copied.
///
/// # Safety
/// `p` must be NULL or a valid NUL-terminated string.
pub(crate) unsafe fn owned(p: *const std::ffi::c_char) -> Option<String> {
    // SAFETY: per the function's contract.
    (!p.is_null()).then(|| unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned())
}

/// `OPERATOR("schema".op)` for an operator oid.
fn operator_sql(opno: pg_sys::Oid) -> Result<String, AiError> {
    let (schema, name) = Spi::connect(|c| {
        let rows = c
            .select(
                "SELECT n.nspname::pg_catalog.text, o.oprname::pg_catalog.text
                   FROM pg_catalog.pg_operator o
                   JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) o.oprnamespace
                  WHERE o.oid OPERATOR(pg_catalog.=) $1",
                Some(1),
                &[opno.into()],
            )
            .map_err(spi)?;
        let row = rows.first();
        Ok::<_, AiError>((row.get::<String>(1).map_err(spi)?, row.get::<String>(2).map_err(spi)?))
    })?;
    let (Some(schema), Some(name)) = (schema, name) else {
        return Err(AiError::Internal { message: format!("operator {opno:?} not found") });
    };
    // Operator names are symbols (they cannot be quoted); make sure that is all this is.
    if name.is_empty() || !name.chars().all(|c| "+-*/<>=~!@#%^&|`?".contains(c)) {
        return Err(AiError::Internal { message: format!("unexpected operator name {name:?}") });
    }
    Ok(format!("OPERATOR({}.{name})", quote_ident(&schema)))
}

impl Table {
    /// Reads and checks `relid`'s primary key and the target column; `procedure` names the
    /// caller in messages.
    pub fn open(procedure: &str, relid: pg_sys::Oid, target: &str) -> Result<Table, AiError> {
        // SAFETY: lsyscache lookups by oid; each returns NULL / InvalidOid for a missing
        // relation (a regclass argument can name a table dropped since it was parsed).
        let (relname, nspname, relkind) = unsafe {
            let relname = owned(pg_sys::get_rel_name(relid));
            let nsp = owned(pg_sys::get_namespace_name(pg_sys::get_rel_namespace(relid)));
            (relname, nsp, pg_sys::get_rel_relkind(relid) as u8)
        };
        let (Some(relname), Some(nspname)) = (relname, nspname) else {
            return Err(AiError::invalid(format!(
                "{procedure}: relation with OID {} does not exist",
                relid.to_u32()
            )));
        };
        let name_sql = format!("{}.{}", quote_ident(&nspname), quote_ident(&relname));
        let shown = relname;
        if relkind != b'r' && relkind != b'p' {
            return Err(AiError::NotATable {
                message: format!("{procedure}: \"{shown}\" is not a table"),
                hint: "Column jobs fill ordinary and partitioned tables.".into(),
            });
        }
        let keys = primary_key(procedure, relid, &shown)?;
        let (target_attnum, target_type, target_typmod) = column(procedure, relid, target, "target", &shown)?;
        // SAFETY: a catalog lookup for a column that exists.
        if unsafe { pg_sys::get_attgenerated(relid, target_attnum) } != 0 {
            return Err(AiError::DatatypeMismatch {
                message: format!(
                    "{procedure}: target column \"{target}\" is a generated column, which cannot be written"
                ),
            });
        }
        let key_names = keys.iter().map(|k| k.name.clone()).collect::<Vec<_>>().join(", ");
        Ok(Table {
            oid: relid,
            name_sql,
            shown,
            keys,
            target: target.to_string(),
            target_attnum,
            target_type: (target_type, target_typmod),
            filter: None,
            key_names,
        })
    }

    /// Fills only rows where `filter` (SQL over the row) holds as well.
    pub fn with_filter(mut self, filter: String) -> Table {
        self.filter = Some(filter);
        self
    }

    /// The filter `with_filter` set.
    pub fn filter(&self) -> Option<&str> {
        self.filter.as_deref()
    }

    pub fn has_filter(&self) -> bool {
        self.filter.is_some()
    }

    /// A column the job reads, checked to exist: `role` names it in messages.
    pub fn column(&self, procedure: &str, name: &str, role: &str) -> Result<(), AiError> {
        column(procedure, self.oid, name, role, &self.shown).map(drop)
    }

    /// What the target column can hold, for a wrapper that writes embeddings or text.
    pub fn target_kind(&self, procedure: &str, embedding: bool) -> Result<TargetKind, AiError> {
        target_kind(procedure, &self.target, self.target_type.0, self.target_type.1, embedding)
    }

    /// The caller may read the key, source and target columns and update the target: checked
    /// before any request is sent, so a job without the rights costs nothing.
    pub fn check_privileges(&self, procedure: &str) -> Result<(), AiError> {
        // SAFETY: GetUserId is a plain read; the aclcheck functions read catalogs by oid.
        let ok = |attnum: i16, mode: u32| unsafe {
            let user = pg_sys::GetUserId();
            pg_sys::pg_class_aclcheck(self.oid, user, mode as pg_sys::AclMode)
                == pg_sys::AclResult::ACLCHECK_OK
                || pg_sys::pg_attribute_aclcheck(self.oid, attnum, user, mode as pg_sys::AclMode)
                    == pg_sys::AclResult::ACLCHECK_OK
        };
        if !ok(self.target_attnum, pg_sys::ACL_UPDATE) {
            return Err(AiError::NotAllowed {
                message: format!(
                    "{procedure}: permission denied to update column \"{}\" of table \"{}\"",
                    self.target, self.shown
                ),
                hint: "The job writes the target column with your rights.".into(),
            });
        }
        Ok(())
    }

    fn target_sql(&self) -> String {
        quote_ident(&self.target)
    }

    /// Rows the job fills: target NULL, and the filter holds. The filter is the caller's own
    /// SQL, run with the caller's rights; the line breaks end a trailing `--` comment.
    fn todo_condition(&self) -> String {
        match &self.filter {
            Some(filter) => format!("{} IS NULL AND (\n{filter}\n)", self.target_sql()),
            None => format!("{} IS NULL", self.target_sql()),
        }
    }

    fn key_value(&self, i: usize, param: usize) -> String {
        format!("CAST(${param}[{}] AS {})", i + 1, self.keys[i].type_sql)
    }

    /// `(keys) > ($param)` in key order, `>=` for `From`, or `(keys) <= ($param)` for `UpTo`,
    /// expanded per column so that each comparison uses its own column's operator; the
    /// leading column's bound comes first so the planner can use the key's index.
    fn keyset(&self, param: usize, bound: Bound) -> String {
        let up_to = bound == Bound::UpTo;
        let n = self.keys.len();
        let mut alternatives = Vec::with_capacity(n + 1);
        for i in 0..n {
            let mut terms: Vec<String> = (0..i)
                .map(|j| {
                    format!(
                        "{} {} {}",
                        quote_ident(&self.keys[j].name),
                        self.keys[j].eq,
                        self.key_value(j, param)
                    )
                })
                .collect();
            let k = &self.keys[i];
            let op = if up_to { &k.lt } else { &k.gt };
            terms.push(format!("{} {op} {}", quote_ident(&k.name), self.key_value(i, param)));
            alternatives.push(format!("({})", terms.join(" AND ")));
        }
        if bound != Bound::After {
            alternatives.push(format!("({})", self.key_equals(param)));
        }
        let first = &self.keys[0];
        let lead_op = if up_to { &first.lt } else { &first.gt };
        format!(
            "({} {lead_op} {v} OR {} {} {v}) AND ({})",
            quote_ident(&first.name),
            quote_ident(&first.name),
            first.eq,
            alternatives.join(" OR "),
            v = self.key_value(0, param)
        )
    }

    /// Every key column equal to `$param`'s elements.
    fn key_equals(&self, param: usize) -> String {
        (0..self.keys.len())
            .map(|i| {
                format!(
                    "{} {} {}",
                    quote_ident(&self.keys[i].name),
                    self.keys[i].eq,
                    self.key_value(i, param)
                )
            })
            .collect::<Vec<_>>()
            .join(" AND ")
    }

    /// The row's identity: its key as the text of a record of texts, e.g. `(north,7)`.
    /// record_out quotes what needs quoting, so two keys never give the same text.
    fn identity(&self) -> String {
        let keys: Vec<String> =
            self.keys.iter().map(|k| format!("{}::pg_catalog.text", quote_ident(&k.name))).collect();
        format!("ROW({})::pg_catalog.text", keys.join(", "))
    }

    /// Identity and keys as text. The outputs are renamed: ORDER BY "id" would otherwise
    /// bind to an output column named "id" (the text), not to the key column.
    fn select_list(&self) -> String {
        let mut cols = vec![format!("{} AS pg_bailian_row", self.identity())];
        cols.extend(
            self.keys.iter().enumerate().map(|(i, k)| {
                format!("{}::pg_catalog.text AS pg_bailian_key_{}", quote_ident(&k.name), i + 1)
            }),
        );
        cols.join(", ")
    }

    fn order_by(&self) -> String {
        self.keys
            .iter()
            .map(|k| format!("{} USING {}", quote_ident(&k.name), k.lt))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// The table's columns (not dropped ones), by attnum.
    pub fn columns(&self) -> Result<Vec<(i16, String)>, AiError> {
        Spi::connect(|c| {
            c.select(
                "SELECT a.attnum, a.attname::pg_catalog.text FROM pg_catalog.pg_attribute a
                  WHERE a.attrelid OPERATOR(pg_catalog.=) $1 AND a.attnum OPERATOR(pg_catalog.>) 0
                    AND NOT a.attisdropped ORDER BY a.attnum",
                None,
                &[self.oid.into()],
            )?
            .map(|r| Ok((r.get::<i16>(1)?.unwrap_or(0), r.get::<String>(2)?.unwrap_or_default())))
            .collect::<Result<Vec<_>, pgrx::spi::SpiError>>()
        })
        .map_err(spi)
    }

    pub fn key_count(&self) -> usize {
        self.keys.len()
    }

    /// `SELECT count(*)` of the rows to fill.
    pub fn count_sql(&self) -> String {
        format!("SELECT pg_catalog.count(*) FROM {} WHERE {}", self.name_sql, self.todo_condition())
    }

    /// The next rows to fill in key order, unlocked: `$1` the last key read (text[]) or NULL
    /// for the first page, `$2` the page size. Columns: identity, then the keys as text.
    pub fn page_sql(&self) -> String {
        format!(
            "SELECT {} FROM {} WHERE {} AND ($1 IS NULL OR {}) ORDER BY {} LIMIT $2",
            self.select_list(),
            self.name_sql,
            self.todo_condition(),
            self.keyset(1, Bound::After),
            self.order_by()
        )
    }

    /// Claimed rows (identities `$3`, keys up to and including `$2`) still to fill and not
    /// locked by another transaction: a page's, after `$1` (NULL: from the first key), or
    /// deferred rows', from `$1` on (`ClaimedFrom`). Only claimed rows: locking others would
    /// keep them from the session that claimed them.
    pub fn lock_claimed_sql(&self, from: ClaimedFrom) -> String {
        format!("{} FOR NO KEY UPDATE SKIP LOCKED", self.probe_claimed_sql(from))
    }

    /// The same rows without locking: those here but not in `lock_claimed_sql`'s answer are
    /// held by another transaction.
    pub fn probe_claimed_sql(&self, from: ClaimedFrom) -> String {
        let bound = match from {
            ClaimedFrom::AfterPage => Bound::After,
            ClaimedFrom::Deferred => Bound::From,
        };
        format!(
            "SELECT {} FROM {} WHERE {} AND ($1 IS NULL OR {}) AND {} \
               AND {} OPERATOR(pg_catalog.=) ANY ($3)",
            self.select_list(),
            self.name_sql,
            self.todo_condition(),
            self.keyset(1, bound),
            self.keyset(2, Bound::UpTo),
            self.identity()
        )
    }

    /// A filter that keeps the rows whose keys a sync's fill took from `queue` (run `run`):
    /// the key columns compared with the queued text cast back to their types, so the key's
    /// index finds them.
    pub fn queued_sql(&self, queue: &str, sync: &str, relid: pg_sys::Oid, run: i64) -> String {
        // EXISTS with each key's own equality operator, named: an IN of a row would look `=`
        // up through the search_path. The key columns are qualified with the table's name,
        // which every statement of the job reads it under, so that none of the queue's
        // columns can shadow them.
        let table = quote_ident(&self.shown);
        let matches: Vec<String> = self
            .keys
            .iter()
            .enumerate()
            .map(|(i, k)| {
                format!(
                    "{table}.{} {} CAST(pg_bailian_q.key[{}] AS {})",
                    quote_ident(&k.name),
                    k.eq,
                    i + 1,
                    k.type_sql
                )
            })
            .collect();
        format!(
            "EXISTS (SELECT FROM {queue} pg_bailian_q WHERE pg_bailian_q.sync_name OPERATOR(pg_catalog.=) {} \
               AND pg_bailian_q.relid OPERATOR(pg_catalog.=) {}::pg_catalog.oid \
               AND pg_bailian_q.run OPERATOR(pg_catalog.=) {run}::pg_catalog.int8 AND {})",
            super::literal(sync),
            relid.to_u32(),
            matches.join(" AND "),
        )
    }

    /// The key columns' names, in key order.
    pub fn key_columns(&self) -> Vec<String> {
        self.keys.iter().map(|k| k.name.clone()).collect()
    }

    /// Whether the row with key `$1` is still to fill (no lock taken).
    pub fn still_todo_sql(&self) -> String {
        format!("SELECT 1 FROM {} WHERE {} AND {}", self.name_sql, self.key_equals(1), self.todo_condition())
    }

    /// `SELECT (expression), (filter)` over the table: what `chunk::analyze` parses.
    pub fn analysis_sql(&self, expression: &str) -> String {
        let filter = self.filter.as_deref().map(|f| format!(", (\n{f}\n)")).unwrap_or_default();
        format!("SELECT (\n{expression}\n){filter} FROM {} AS {}", self.name_sql, quote_ident(&self.shown))
    }

    /// One chunk's values: `$1` the rows' identities (text[]), `$2` and `$3` the first and
    /// last of their keys (the range lets the key's index find them); then `$4` to `$6` the
    /// same of the next chunk's rows, read after all of this chunk's (UNION ALL returns its
    /// branches in order), so that their requests are in flight while the job writes this
    /// chunk's last rows and commits (see `executor::carry`). Columns: identity, the checked
    /// columns' text (see `write_sql`), the expression's value.
    ///
    /// The rows come from a subquery the planner cannot flatten (OFFSET 0) of the columns the
    /// expression reads, the key and the target, under the relation's own name, so that one
    /// node evaluates the expression over every row, also for a partitioned table: that
    /// node's AI Batch nodes return rows one for one, in order, which capture mode needs (see
    /// `executor::capture`).
    pub fn chunk_sql(&self, expression: &str, analysis: &Analysis) -> String {
        let columns = if analysis.whole_row {
            "*".to_string()
        } else {
            let mut names: Vec<&str> = self.keys.iter().map(|k| k.name.as_str()).collect();
            names.push(&self.target);
            names.extend(analysis.checked.iter().map(String::as_str));
            let mut seen = std::collections::HashSet::new();
            names.retain(|n| seen.insert(*n));
            names.iter().map(|n| quote_ident(n)).collect::<Vec<_>>().join(", ")
        };
        let rows = |first: usize| {
            format!(
                "(SELECT {columns} FROM {t} WHERE {from} AND {up_to} AND {identity} OPERATOR(pg_catalog.=) ANY (${first}))",
                t = self.name_sql,
                from = self.keyset(first + 1, Bound::From),
                up_to = self.keyset(first + 2, Bound::UpTo),
                identity = self.identity(),
            )
        };
        format!(
            "SELECT {identity} AS pg_bailian_row, {inputs} AS pg_bailian_inputs, (\n{expression}\n) AS pg_bailian_value \
               FROM ({this} UNION ALL {next} OFFSET 0) AS {alias}",
            identity = self.identity(),
            inputs = inputs_sql(&analysis.checked),
            this = rows(1),
            next = rows(4),
            alias = quote_ident(&self.shown),
        )
    }

    /// Writes `$1` into the row with key `$2` if its target is still NULL and the columns the
    /// expression and filter read still have the text `$3` they had when it was computed
    /// (so a row changed meanwhile is skipped, not given a stale value), without waiting for
    /// a row lock another transaction holds. Answers (row exists and could be locked, row
    /// written).
    pub fn write_sql(&self, checked: &[String]) -> String {
        let row = format!(
            "{} AND {} IS NULL AND {} OPERATOR(pg_catalog.=) $3",
            self.key_equals(2),
            self.target_sql(),
            inputs_sql(checked)
        );
        format!(
            "WITH locked AS MATERIALIZED (SELECT 1 FROM {t} WHERE {keys} FOR NO KEY UPDATE SKIP LOCKED), \
                  written AS (UPDATE {t} SET {target} = $1 WHERE {row} AND EXISTS (SELECT FROM locked) RETURNING 1) \
             SELECT EXISTS (SELECT FROM locked), EXISTS (SELECT FROM written)",
            t = self.name_sql,
            keys = self.key_equals(2),
            target = self.target_sql(),
        )
    }
}

/// The checked columns as one record's text (`ROW("a", "b")::text`: record_out quotes what
/// needs quoting, so different values never give the same text), hashed with SHA-256: the
/// job holds 64 characters per row in flight, not the columns' values, which may be large.
fn inputs_sql(checked: &[String]) -> String {
    let cols: Vec<String> = checked.iter().map(|c| quote_ident(c)).collect();
    format!(
        "pg_catalog.encode(pg_catalog.sha256(pg_catalog.convert_to(ROW({})::pg_catalog.text, 'UTF8')), 'hex')",
        cols.join(", ")
    )
}

/// The primary key of `relid` as (column, type with typmod, its equality operator as
/// `OPERATOR(schema.=)`) triples, in key order: what a table of chunks keyed like it declares
/// and compares with.
pub fn key_definitions(
    procedure: &str,
    relid: pg_sys::Oid,
    shown: &str,
) -> Result<Vec<(String, String, String)>, AiError> {
    Ok(primary_key(procedure, relid, shown)?.into_iter().map(|k| (k.name, k.type_sql, k.eq)).collect())
}

/// The primary key's key columns (not its INCLUDE columns), with their types and operators.
fn primary_key(procedure: &str, relid: pg_sys::Oid, shown: &str) -> Result<Vec<KeyColumn>, AiError> {
    let index = Spi::connect(|c| {
        let rows = c
            .select(
                "SELECT i.indnkeyatts::pg_catalog.int4, i.indkey::pg_catalog.int2[],
                        i.indclass::pg_catalog.oid[]::pg_catalog.int8[]
                   FROM pg_catalog.pg_index i
                  WHERE i.indrelid OPERATOR(pg_catalog.=) $1 AND i.indisprimary",
                Some(1),
                &[relid.into()],
            )
            .map_err(spi)?;
        if rows.is_empty() {
            return Ok(None);
        }
        let row = rows.first();
        Ok::<_, AiError>(Some((
            row.get::<i32>(1).map_err(spi)?.unwrap_or(0),
            row.get::<Vec<i16>>(2).map_err(spi)?.unwrap_or_default(),
            row.get::<Vec<i64>>(3).map_err(spi)?.unwrap_or_default(),
        )))
    })?;
    let Some((nkeys, attnums, opclasses)) = index else {
        return Err(AiError::ObjectNotReady {
            message: format!("{procedure}: table {shown} has no primary key"),
            hint: "Rows are filled in primary-key order, so that each batch can commit and a later CALL \
                   resumes; add a PRIMARY KEY."
                .into(),
        });
    };
    let nkeys = usize::try_from(nkeys).unwrap_or(0).min(attnums.len()).min(opclasses.len());
    (0..nkeys)
        .map(|i| {
            let opclass = pg_sys::Oid::from(opclasses[i] as u32);
            // SAFETY: lsyscache lookups by the oids the catalog just gave; get_attname with
            // missing_ok=false raises for a column that vanished meanwhile.
            let (name, family, input) = unsafe {
                (
                    owned(pg_sys::get_attname(relid, attnums[i], false)).unwrap_or_default(),
                    pg_sys::get_opclass_family(opclass),
                    pg_sys::get_opclass_input_type(opclass),
                )
            };
            let member = |strategy: i16| {
                // SAFETY: a catalog lookup; InvalidOid when the family lacks the member.
                let op = unsafe { pg_sys::get_opfamily_member(family, input, input, strategy) };
                if op == pg_sys::Oid::INVALID {
                    Err(AiError::Internal {
                        message: format!("no btree operator {strategy} for key column {name}"),
                    })
                } else {
                    operator_sql(op)
                }
            };
            // SAFETY: catalog lookups for a column that exists; format_type_extended returns
            // a palloc'd, schema-qualified name (SQL keywords such as `character(10)` stand
            // for pg_catalog's types whatever the search_path).
            let type_sql = unsafe {
                let (mut typid, mut typmod, mut coll) = (pg_sys::Oid::INVALID, -1, pg_sys::Oid::INVALID);
                pg_sys::get_atttypetypmodcoll(relid, attnums[i], &mut typid, &mut typmod, &mut coll);
                owned(pg_sys::format_type_extended(
                    typid,
                    typmod,
                    (pg_sys::FORMAT_TYPE_FORCE_QUALIFY | pg_sys::FORMAT_TYPE_TYPEMOD_GIVEN) as u16,
                ))
            }
            .unwrap_or_default();
            Ok(KeyColumn {
                eq: member(BT_EQUAL)?,
                lt: member(BT_LESS)?,
                gt: member(BT_GREATER)?,
                type_sql,
                name,
            })
        })
        .collect()
}

/// A column of `relid` by name: (attnum, type, typmod).
fn column(
    procedure: &str,
    relid: pg_sys::Oid,
    name: &str,
    role: &str,
    shown: &str,
) -> Result<(i16, pg_sys::Oid, i32), AiError> {
    let missing = || AiError::UndefinedColumn {
        message: format!("{procedure}: {role} column \"{name}\" does not exist in {shown}"),
    };
    let cname = std::ffi::CString::new(name).map_err(|_| missing())?;
    // SAFETY: catalog lookups by relation oid and a NUL-terminated name; get_attnum answers
    // InvalidAttrNumber for a missing or dropped column.
    let attnum = unsafe { pg_sys::get_attnum(relid, cname.as_ptr()) };
    if attnum <= 0 {
        return Err(missing());
    }
    let (mut typid, mut typmod, mut coll) = (pg_sys::Oid::INVALID, -1, pg_sys::Oid::INVALID);
    // SAFETY: as above, for a column that exists.
    unsafe { pg_sys::get_atttypetypmodcoll(relid, attnum, &mut typid, &mut typmod, &mut coll) };
    Ok((attnum, typid, typmod))
}

/// What the target column can hold, for an embedding or a text job.
fn target_kind(
    procedure: &str,
    target: &str,
    typid: pg_sys::Oid,
    typmod: i32,
    embedding: bool,
) -> Result<TargetKind, AiError> {
    // SAFETY: catalog lookups by type oid. A domain is judged by its base type, whose typmod
    // (a domain over vector(64)) getBaseTypeAndTypmod reports; the domain's own constraints
    // are checked per row when written.
    let (base, typmod, shown) = unsafe {
        let mut base_typmod = typmod;
        let base = pg_sys::getBaseTypeAndTypmod(typid, &mut base_typmod);
        (base, base_typmod, owned(pg_sys::format_type_with_typemod(typid, typmod)).unwrap_or_default())
    };
    let wrong = |allowed: &str| AiError::DatatypeMismatch {
        message: format!("{procedure}: target column \"{target}\" is {shown}; allowed: {allowed}"),
    };
    if !embedding {
        let text_like = base == pg_sys::TEXTOID || base == pg_sys::VARCHAROID;
        return if text_like { Ok(TargetKind::Text) } else { Err(wrong("text or varchar")) };
    }
    if base == pg_sys::FLOAT4ARRAYOID {
        return Ok(TargetKind::Embedding { dims: None });
    }
    let pgvector = Spi::connect(|c| {
        let rows = c.select(
            "SELECT t.typname::pg_catalog.text
               FROM pg_catalog.pg_type t, pg_catalog.pg_extension e
              WHERE t.oid OPERATOR(pg_catalog.=) $1 AND e.extname OPERATOR(pg_catalog.=) 'vector'
                AND t.typnamespace OPERATOR(pg_catalog.=) e.extnamespace",
            Some(1),
            &[base.into()],
        )?;
        if rows.is_empty() {
            Ok(None)
        } else {
            rows.first().get::<String>(1)
        }
    })
    .map_err(spi)?;
    match pgvector.as_deref() {
        // pgvector keeps the dimension as the typmod (-1 when the column leaves it open); a
        // domain over vector(n) carries it on the domain, which format and typmod show.
        Some("vector" | "halfvec") => Ok(TargetKind::Embedding { dims: (typmod > 0).then_some(typmod) }),
        _ => Err(wrong("real[], or pgvector's vector or halfvec")),
    }
}
