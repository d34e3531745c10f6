//! The SQL functions that make and change syncs: `ai_sync_create`, `ai_sync_chunks`,
//! `ai_sync_pause`, `ai_sync_resume`, `ai_sync_drop` and the procedure `ai_sync_run`.
//!
//! Everything is checked before anything is made (the name, the table's primary key, the
//! target, the expression and filter, the caller's rights), and all of it happens in the
//! caller's transaction, so an error leaves nothing behind. The caller needs TRIGGER on the
//! table, as CREATE TRIGGER would. The catalog rows and a column sync's triggers are written
//! as the catalog owner (the trigger function is ours and not executable by PUBLIC, and
//! writers need no rights on the queue); a chunk sync's function and trigger are the caller's,
//! and everything that evaluates the caller's SQL runs as the caller.

use super::{check_manage, load, load_existing, spi, wake, Def};
use crate::catalog::as_catalog_owner;
use crate::entry::sql_entry;
use crate::functions::column::{self, literal, quote_ident};
use crate::functions::{arg, name_arg};
use bailian_core::AiError;
use pgrx::prelude::*;
use pgrx::{pg_sys, IntoDatum};

sql_entry!(pg_finfo_pg_bailian_sync_create, pg_bailian_sync_create, sync_create);
sql_entry!(pg_finfo_pg_bailian_sync_chunks, pg_bailian_sync_chunks, sync_chunks);
sql_entry!(pg_finfo_pg_bailian_sync_pause, pg_bailian_sync_pause, sync_pause);
sql_entry!(pg_finfo_pg_bailian_sync_resume, pg_bailian_sync_resume, sync_resume);
sql_entry!(pg_finfo_pg_bailian_sync_drop, pg_bailian_sync_drop, sync_drop);
sql_entry!(pg_finfo_pg_bailian_sync_run, pg_bailian_sync_run, sync_run);

fn check_name(procedure: &str, name: &str) -> Result<(), AiError> {
    let mut chars = name.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
    if !first_ok || name.len() > 48 || !chars.all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return Err(AiError::invalid(format!(
            "{procedure}: sync name \"{name}\" is not allowed: 1 to 48 letters, digits and underscores, not starting with a digit"
        )));
    }
    if load(name)?.is_some() {
        return Err(AiError::invalid_with_hint(
            format!("{procedure}: a sync named \"{name}\" already exists"),
            "Pick another name, or ai_sync_drop the old one first.",
        ));
    }
    Ok(())
}

/// `"schema"."table"` of a relation.
fn qualified(relid: pg_sys::Oid) -> Result<String, AiError> {
    // SAFETY: syscache lookups by oid, NULL for a missing relation.
    let (rel, nsp) = unsafe {
        (
            column::table::owned(pg_sys::get_rel_name(relid)),
            column::table::owned(pg_sys::get_namespace_name(pg_sys::get_rel_namespace(relid))),
        )
    };
    match (nsp, rel) {
        (Some(n), Some(r)) => Ok(format!("{}.{}", quote_ident(&n), quote_ident(&r))),
        _ => Err(AiError::invalid(format!("relation with OID {} does not exist", relid.to_u32()))),
    }
}

fn schema_of(relid: pg_sys::Oid) -> Option<String> {
    // SAFETY: as in qualified.
    unsafe { column::table::owned(pg_sys::get_namespace_name(pg_sys::get_rel_namespace(relid))) }
}

fn run_sql(sql: &str) -> Result<(), AiError> {
    Spi::connect_mut(|c| c.update(sql, None, &[]).map(drop)).map_err(spi)
}

fn trigger_name(name: &str, what: &str) -> String {
    quote_ident(&format!("ai_sync_{name}_{what}"))
}

/// A sync puts triggers on the table, so its maker needs what CREATE TRIGGER needs: the
/// TRIGGER privilege (which its owner has). Without this, a role that may only update a
/// column could make code of its own run in every writer's session.
fn check_trigger_privilege(procedure: &str, relid: pg_sys::Oid, table: &str) -> Result<(), AiError> {
    // SAFETY: an ACL check by oid for the current user.
    let ok = unsafe {
        pg_sys::pg_class_aclcheck(relid, pg_sys::GetUserId(), pg_sys::ACL_TRIGGER as pg_sys::AclMode)
            == pg_sys::AclResult::ACLCHECK_OK
    };
    if ok {
        return Ok(());
    }
    Err(AiError::NotAllowed {
        message: format!("{procedure}: permission denied to create triggers on table {table}"),
        hint: "A sync keeps its column current with triggers on the table: its owner, or a role granted TRIGGER on it, may make one.".into(),
    })
}

/// Syncs keep a table current with triggers and a worker per database, which a Citus table's
/// shards (on other nodes) would not reach: refused before anything is made.
fn refuse_citus_table(procedure: &str, relid: pg_sys::Oid) -> Result<(), AiError> {
    if crate::citus::is_citus_table(relid)? {
        return Err(AiError::invalid_with_hint(
            format!(
                "{procedure}: \"{}\" is a Citus table; syncs keep plain tables current",
                qualified(relid)?
            ),
            "Fill a distributed table with CALL ai_update(...) on the coordinator (again after writes).",
        ));
    }
    Ok(())
}

/// What a chunk sync adds to the catalog row.
struct Chunks {
    source: pg_sys::Oid,
    content: String,
    chunk_size: i32,
    overlap: i32,
}

/// Makes a column sync (the whole of `ai_sync_create`, and the embedding half of
/// `ai_sync_chunks`). Answers the rows queued.
#[allow(clippy::too_many_arguments)] // the SQL function's arguments, checked one by one
fn create_column_sync(
    procedure: &str,
    name: &str,
    relid: pg_sys::Oid,
    target: &str,
    expression: &str,
    filter: Option<&str>,
    refill: bool,
    chunks: Option<&Chunks>,
) -> Result<i64, AiError> {
    if expression.trim().is_empty() {
        return Err(AiError::invalid(format!("{procedure}: expression must not be empty")));
    }
    refuse_citus_table(procedure, relid)?;
    let (read, keys) = column::analyze_for_sync(procedure, relid, target, expression, filter)?;
    let Some(read) = read else {
        return Err(AiError::invalid_with_hint(
            format!("{procedure}: the expression or filter reads the whole row"),
            "Name the columns it reads, so that the sync knows which changes make a row stale.",
        ));
    };
    if read.is_empty() {
        return Err(AiError::invalid_with_hint(
            format!(
                "{procedure}: the expression reads no column of the table, so no change could make it stale"
            ),
            "A sync keeps a column equal to a value computed from its row: use ai_update for a constant.",
        ));
    }
    if read.iter().any(|c| c == target) {
        return Err(AiError::invalid(format!(
            "{procedure}: the expression or filter reads the target column \"{target}\" itself"
        )));
    }
    let table = qualified(relid)?;
    check_trigger_privilege(procedure, relid, &table)?;
    // Executed, not only parsed: a column the caller may not read fails here, not in the worker.
    let filter_sql = filter.map(|f| format!(", ({f})")).unwrap_or_default();
    run_sql(&format!("SELECT ({expression}){filter_sql} FROM {table} LIMIT 0"))?;
    let search_path = super::current_search_path();
    let (owner_oid, owner) = crate::catalog::current_user();
    let _ = owner_oid;
    let relid_text = relid.to_u32().to_string();
    let args: Vec<String> = [name, target, relid_text.as_str()]
        .into_iter()
        .chain(keys.iter().map(String::as_str))
        .map(literal)
        .collect();
    let args = args.join(", ");
    // The columns whose change makes the value stale, and the key's: a row whose key changes
    // is queued under its new key (its old entry would name no row).
    let mut watched = read.clone();
    for k in &keys {
        if !watched.contains(k) {
            watched.push(k.clone());
        }
    }
    // Compared as text with pg_catalog's operator named (IS DISTINCT FROM would look `=` up
    // through the caller's search_path, where anyone may have put one).
    let changed: Vec<String> = watched
        .iter()
        .map(|c| {
            format!(
                "((OLD.{c} IS NULL) OPERATOR(pg_catalog.<>) (NEW.{c} IS NULL) \
                  OR OLD.{c}::pg_catalog.text OPERATOR(pg_catalog.<>) NEW.{c}::pg_catalog.text)",
                c = quote_ident(c)
            )
        })
        .collect();
    let columns: Vec<String> = watched.iter().map(|c| quote_ident(c)).collect();
    as_catalog_owner(|| {
        Spi::connect_mut(|c| {
            c.update(
                "INSERT INTO bailian.syncs (sync_name, kind, table_name, target_column, expression, filter,
                                            source_table, content, chunk_size, chunk_overlap, owner, search_path)
                 VALUES ($1, $2, $3::pg_catalog.oid::pg_catalog.regclass, $4, $5, $6, $7::pg_catalog.oid::pg_catalog.regclass,
                         $8, $9, $10, $11, $12)",
                None,
                &[
                    name.into(),
                    if chunks.is_some() { "chunks" } else { "column" }.into(),
                    relid.into(),
                    target.into(),
                    expression.into(),
                    filter.into(),
                    chunks.map(|c| c.source).into(),
                    chunks.map(|c| c.content.clone()).into(),
                    chunks.map(|c| c.chunk_size).into(),
                    chunks.map(|c| c.overlap).into(),
                    owner.as_str().into(),
                    search_path.as_str().into(),
                ],
            )?;
            c.update(
                &format!(
                    "CREATE TRIGGER {} BEFORE INSERT ON {table} FOR EACH ROW EXECUTE FUNCTION bailian.sync_mark({args})",
                    trigger_name(name, "insert")
                ),
                None,
                &[],
            )?;
            c.update(
                &format!(
                    "CREATE TRIGGER {} BEFORE UPDATE OF {} ON {table} FOR EACH ROW WHEN ({}) \
                     EXECUTE FUNCTION bailian.sync_mark({args})",
                    trigger_name(name, "update"),
                    columns.join(", "),
                    changed.join(" OR ")
                ),
                None,
                &[],
            )
            .map(drop)
        })
        .map_err(spi)
    })?;
    let target_sql = quote_ident(target);
    if refill {
        let only = filter.map(|f| format!(" AND ({f})")).unwrap_or_default();
        run_sql(&format!("UPDATE {table} SET {target_sql} = NULL WHERE {target_sql} IS NOT NULL{only}"))?;
    }
    let queued = super::fill::queue_todo(name, relid, target, filter)?;
    super::save_state(name, "running", 0, 0, None, None)?;
    super::mark_scanned(name, relid)?;
    announce(procedure, name);
    Ok(queued)
}

/// Wakes the database's worker, or says there is none.
fn announce(procedure: &str, name: &str) {
    if wake::available() {
        wake::want_at_commit();
    } else {
        notice!(
            "{procedure}: pg_bailian is not in shared_preload_libraries, so no background worker fills sync \"{name}\"; CALL ai_sync_run('{name}') fills it"
        );
    }
}

fn text_arg(fcinfo: pg_sys::FunctionCallInfo, n: usize) -> Option<String> {
    arg::<String>(fcinfo, n)
}

/// `ai_sync_create(sync_name, table_name, target_column, expression, filter, refill)`.
fn sync_create(fcinfo: pg_sys::FunctionCallInfo) -> Result<Option<pg_sys::Datum>, AiError> {
    let procedure = "ai_sync_create";
    let (name, table, target, expression) =
        (text_arg(fcinfo, 0), arg::<pg_sys::Oid>(fcinfo, 1), name_arg(fcinfo, 2), text_arg(fcinfo, 3));
    let (Some(name), Some(table), Some(target), Some(expression)) = (name, table, target, expression) else {
        return Err(AiError::NullArgument {
            message: format!(
                "{procedure}: sync_name, table_name, target_column and expression must not be NULL"
            ),
        });
    };
    let filter = text_arg(fcinfo, 4).filter(|f| !f.trim().is_empty());
    let refill = arg::<bool>(fcinfo, 5).unwrap_or(false);
    check_name(procedure, &name)?;
    let queued =
        create_column_sync(procedure, &name, table, &target, &expression, filter.as_deref(), refill, None)?;
    Ok(queued.into_datum())
}

/// The type (with typmod) of `embedding` over a text column `chunk`, as a column declares it.
fn embedding_type(procedure: &str, embedding: &str) -> Result<String, AiError> {
    let sql = format!("SELECT pg_catalog.pg_typeof(({embedding}))::pg_catalog.text FROM (SELECT NULL::pg_catalog.text AS chunk) AS c WHERE false");
    // A prepared plan gives the expression's type with its typmod (pg_typeof alone drops it).
    let probe = format!("SELECT ({embedding}) FROM (SELECT NULL::pg_catalog.text AS chunk) AS c");
    let cs = std::ffi::CString::new(probe)
        .map_err(|_| AiError::invalid(format!("{procedure}: embedding holds a NUL")))?;
    run_sql(&sql)?;
    // SAFETY: SPI is connected for the prepare and the plan freed after; the plan source's
    // result descriptor is read while the plan lives.
    unsafe {
        pg_sys::SPI_connect();
        let plan = pg_sys::SPI_prepare(cs.as_ptr(), 0, std::ptr::null_mut());
        let mut out = None;
        if !plan.is_null() {
            let sources = pg_sys::SPI_plan_get_plan_sources(plan);
            if !sources.is_null() && (*sources).length == 1 {
                let source = pg_sys::list_nth(sources, 0) as *mut pg_sys::CachedPlanSource;
                let desc = (*source).resultDesc;
                if !desc.is_null() && (*desc).natts == 1 {
                    let desc = pgrx::PgTupleDesc::from_pg_unchecked(desc);
                    if let Some(att) = desc.get(0) {
                        let typ = pg_sys::format_type_with_typemod(att.atttypid, att.atttypmod);
                        out = column::table::owned(typ);
                    }
                }
            }
            pg_sys::SPI_freeplan(plan);
        }
        pg_sys::SPI_finish();
        out.ok_or_else(|| {
            AiError::invalid(format!("{procedure}: embedding must be one expression over the column chunk"))
        })
    }
}

/// `ai_sync_chunks(sync_name, source, content, destination, embedding, chunk_size, overlap)`.
fn sync_chunks(fcinfo: pg_sys::FunctionCallInfo) -> Result<Option<pg_sys::Datum>, AiError> {
    let procedure = "ai_sync_chunks";
    let (name, source, content, destination, embedding) = (
        text_arg(fcinfo, 0),
        arg::<pg_sys::Oid>(fcinfo, 1),
        text_arg(fcinfo, 2),
        name_arg(fcinfo, 3),
        text_arg(fcinfo, 4),
    );
    let (Some(name), Some(source), Some(content), Some(destination), Some(embedding)) =
        (name, source, content, destination, embedding)
    else {
        return Err(AiError::NullArgument {
            message: format!(
                "{procedure}: sync_name, source, content, destination and embedding must not be NULL"
            ),
        });
    };
    let chunk_size = arg::<i32>(fcinfo, 5).unwrap_or(512);
    let overlap = arg::<i32>(fcinfo, 6).unwrap_or(64);
    check_name(procedure, &name)?;
    if content.trim().is_empty() || embedding.trim().is_empty() {
        return Err(AiError::invalid(format!("{procedure}: content and embedding must not be empty")));
    }
    let source_sql = qualified(source)?;
    refuse_citus_table(procedure, source)?;
    check_trigger_privilege(procedure, source, &source_sql)?;
    // SAFETY: a syscache lookup by oid.
    let relkind = unsafe { pg_sys::get_rel_relkind(source) } as u8;
    if relkind != b'r' && relkind != b'p' {
        return Err(AiError::NotATable {
            message: format!("{procedure}: {source_sql} is not a table"),
            hint: "Chunks are kept for ordinary and partitioned tables.".into(),
        });
    }
    let keys = column::table::key_definitions(procedure, source, &source_sql)?;
    let schema = schema_of(source).unwrap_or_default();
    let ext = super::ext_schema()?;
    // ai_chunk's own checks of chunk_size and overlap, before anything is made.
    run_sql(&format!("SELECT {ext}.ai_chunk('check', {chunk_size}, {overlap})"))?;
    // SAFETY: a plain read of the relation's name.
    let alias =
        quote_ident(&unsafe { column::table::owned(pg_sys::get_rel_name(source)) }.unwrap_or_default());
    run_sql(&format!("SELECT ({content})::pg_catalog.text FROM {source_sql} AS {alias} LIMIT 0"))?;
    let vector = embedding_type(procedure, &embedding)?;
    let dest = format!("{}.{}", quote_ident(&schema), quote_ident(&destination));
    let exists = Spi::connect(|c| {
        c.select("SELECT pg_catalog.to_regclass($1) IS NOT NULL", Some(1), &[dest.as_str().into()])?
            .first()
            .get_one::<bool>()
    })
    .map_err(spi)?
    .unwrap_or(false);
    if exists {
        return Err(AiError::invalid(format!("{procedure}: destination table {dest} already exists")));
    }
    let key_cols: Vec<String> = keys.iter().map(|(n, _, _)| quote_ident(n)).collect();
    let key_list = key_cols.join(", ");
    let key_defs: Vec<String> =
        keys.iter().map(|(n, t, _)| format!("{} {t} NOT NULL", quote_ident(n))).collect();
    let new_keys: Vec<String> = key_cols.iter().map(|k| format!("NEW.{k}")).collect();
    let new_keys = new_keys.join(", ");
    // The function runs with the caller's search_path (the content is the caller's SQL), so
    // every operator of its own is named with its schema.
    let same_key: Vec<String> =
        keys.iter().map(|(n, _, eq)| format!("{k} {eq} NEW.{k}", k = quote_ident(n))).collect();
    let same_key = same_key.join(" AND ");
    run_sql(&format!(
        "CREATE TABLE {dest} ({}, chunk_no pg_catalog.int4 NOT NULL, chunk pg_catalog.text NOT NULL, embedding {vector}, \
           PRIMARY KEY ({key_list}, chunk_no), \
           FOREIGN KEY ({key_list}) REFERENCES {source_sql} ({key_list}) ON DELETE CASCADE ON UPDATE CASCADE)",
        key_defs.join(", ")
    ))?;
    let function = format!("{}.{}", quote_ident(&schema), quote_ident(&format!("ai_sync_chunks_{name}")));
    run_sql(&format!(
        "CREATE FUNCTION {function}() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER SET search_path FROM CURRENT AS $pg_bailian$
DECLARE
    new_text pg_catalog.text;
    old_text pg_catalog.text;
BEGIN
    SELECT ({content})::pg_catalog.text INTO new_text FROM (SELECT NEW.*) AS {alias};
    IF TG_OP OPERATOR(pg_catalog.=) 'UPDATE' THEN
        SELECT ({content})::pg_catalog.text INTO old_text FROM (SELECT OLD.*) AS {alias};
        IF (old_text IS NULL AND new_text IS NULL) OR old_text OPERATOR(pg_catalog.=) new_text THEN
            RETURN NULL;
        END IF;
        DELETE FROM {dest} WHERE {same_key};
    END IF;
    INSERT INTO {dest} ({key_list}, chunk_no, chunk)
    SELECT {new_keys}, c.pg_bailian_n, c.pg_bailian_piece
      FROM pg_catalog.unnest({ext}.ai_chunk(new_text, {chunk_size}, {overlap}))
           WITH ORDINALITY AS c(pg_bailian_piece, pg_bailian_n);
    RETURN NULL;
END
$pg_bailian$",
    ))?;
    run_sql(&format!("REVOKE ALL ON FUNCTION {function}() FROM PUBLIC"))?;
    run_sql(&format!(
        "COMMENT ON FUNCTION {function}() IS {}",
        literal(&format!(
            "pg_bailian: cuts the content of {source_sql} into {dest} for sync {name} (ai_sync_chunks)"
        ))
    ))?;
    // As the caller, who may create triggers on the source: the function is the caller's.
    run_sql(&format!(
        "CREATE TRIGGER {} AFTER INSERT OR UPDATE ON {source_sql} FOR EACH ROW EXECUTE FUNCTION {function}()",
        trigger_name(&name, "chunks")
    ))?;
    // SAFETY: the destination was just created, in this transaction.
    let dest_oid = Spi::connect(|c| {
        c.select("SELECT $1::pg_catalog.regclass::pg_catalog.oid", Some(1), &[dest.as_str().into()])?
            .first()
            .get_one::<pg_sys::Oid>()
    })
    .map_err(spi)?
    .ok_or_else(|| AiError::Internal { message: "destination not found".into() })?;
    let chunks = Chunks { source, content: content.clone(), chunk_size, overlap };
    create_column_sync(procedure, &name, dest_oid, "embedding", &embedding, None, false, Some(&chunks))?;
    let made = Spi::connect_mut(|c| {
        c.update(
            &format!(
                "INSERT INTO {dest} ({key_list}, chunk_no, chunk)
                 SELECT {keys}, c.pg_bailian_n, c.pg_bailian_piece
                   FROM {source_sql} AS {alias},
                        pg_catalog.unnest({ext}.ai_chunk(({content})::pg_catalog.text, {chunk_size}, {overlap}))
                        WITH ORDINALITY AS c(pg_bailian_piece, pg_bailian_n)",
                keys = key_cols.iter().map(|k| format!("{alias}.{k}")).collect::<Vec<_>>().join(", ")
            ),
            None,
            &[],
        )
        .map(|t| t.len() as i64)
    })
    .map_err(spi)?;
    Ok(made.into_datum())
}

fn name_of(fcinfo: pg_sys::FunctionCallInfo, procedure: &str) -> Result<Def, AiError> {
    let Some(name) = text_arg(fcinfo, 0) else {
        return Err(AiError::NullArgument { message: format!("{procedure}: sync_name must not be NULL") });
    };
    let def = load_existing(&name)?;
    check_manage(&def, procedure)?;
    Ok(def)
}

fn set_paused(def: &Def, paused: bool) -> Result<(), AiError> {
    as_catalog_owner(|| {
        Spi::connect_mut(|c| {
            c.update(
                "UPDATE bailian.syncs SET paused = $2 WHERE sync_name OPERATOR(pg_catalog.=) $1",
                None,
                &[def.name.as_str().into(), paused.into()],
            )
            .map(drop)
        })
        .map_err(spi)
    })
}

fn sync_pause(fcinfo: pg_sys::FunctionCallInfo) -> Result<Option<pg_sys::Datum>, AiError> {
    let def = name_of(fcinfo, "ai_sync_pause")?;
    set_paused(&def, true)?;
    Ok(None)
}

fn sync_resume(fcinfo: pg_sys::FunctionCallInfo) -> Result<Option<pg_sys::Datum>, AiError> {
    let procedure = "ai_sync_resume";
    let def = name_of(fcinfo, procedure)?;
    if let Some((_, message)) = super::fill::blocked(&def) {
        return Err(AiError::ObjectNotReady {
            message: format!("{procedure}: {message}"),
            hint: "Drop the sync with ai_sync_drop and create it again.".into(),
        });
    }
    set_paused(&def, false)?;
    let queue = super::queue_table()?;
    let requeued = as_catalog_owner(|| {
        Spi::connect_mut(|c| {
            let n = c
                .update(
                    &format!(
                        "INSERT INTO {queue} (sync_name, relid, key, queued_at, changed_at)
                         SELECT e.sync_name, $2, e.key, pg_catalog.now(), pg_catalog.now() FROM bailian.sync_errors e
                          WHERE e.sync_name OPERATOR(pg_catalog.=) $1
                         ON CONFLICT DO NOTHING"
                    ),
                    None,
                    &[def.name.as_str().into(), def.relid.into()],
                )?
                .len() as i64;
            c.update(
                "DELETE FROM bailian.sync_errors WHERE sync_name OPERATOR(pg_catalog.=) $1",
                None,
                &[def.name.as_str().into()],
            )?;
            c.update(
                "UPDATE bailian.sync_state SET state = 'running', retry_at = NULL, backoff = 0
                  WHERE sync_name OPERATOR(pg_catalog.=) $1",
                None,
                &[def.name.as_str().into()],
            )?;
            Ok(n)
        })
        .map_err(spi)
    })?;
    announce(procedure, &def.name);
    Ok(requeued.into_datum())
}

fn sync_drop(fcinfo: pg_sys::FunctionCallInfo) -> Result<Option<pg_sys::Datum>, AiError> {
    let def = name_of(fcinfo, "ai_sync_drop")?;
    let queue = super::queue_table()?;
    let table = qualified(def.relid).ok();
    let source = def.source.and_then(|s| qualified(s).ok());
    as_catalog_owner(|| {
        if let Some(table) = &table {
            for what in ["insert", "update"] {
                run_sql(&format!("DROP TRIGGER IF EXISTS {} ON {table}", trigger_name(&def.name, what)))?;
            }
        }
        if let Some(source) = &source {
            run_sql(&format!("DROP TRIGGER IF EXISTS {} ON {source}", trigger_name(&def.name, "chunks")))?;
        }
        Ok::<_, AiError>(())
    })?;
    if def.kind == "chunks" {
        // The function that cut the chunks, owned by the sync's owner, in the destination's schema.
        let functions = Spi::connect(|c| {
            c.select(
                "SELECT p.oid::pg_catalog.regprocedure::pg_catalog.text FROM pg_catalog.pg_proc p
                  WHERE p.proname OPERATOR(pg_catalog.=) $1 AND p.pronargs OPERATOR(pg_catalog.=) 0
                    AND p.prorettype OPERATOR(pg_catalog.=) 'pg_catalog.trigger'::pg_catalog.regtype
                    AND p.proowner OPERATOR(pg_catalog.=) $2
                    AND ($3::pg_catalog.oid IS NULL OR p.pronamespace OPERATOR(pg_catalog.=) $3)",
                None,
                &[
                    format!("ai_sync_chunks_{}", def.name).into(),
                    def.owner_oid.unwrap_or(pg_sys::Oid::INVALID).into(),
                    // SAFETY: a syscache lookup; InvalidOid for a dropped destination.
                    Some(unsafe { pg_sys::get_rel_namespace(def.relid) })
                        .filter(|n| *n != pg_sys::Oid::INVALID)
                        .into(),
                ],
            )?
            .map(|r| r.get::<String>(1).map(|v| v.unwrap_or_default()))
            .collect::<Result<Vec<_>, _>>()
        })
        .map_err(spi)?;
        for f in functions {
            run_sql(&format!("DROP FUNCTION IF EXISTS {f}"))?;
        }
    }
    as_catalog_owner(|| {
        Spi::connect_mut(|c| {
            c.update(
                &format!("DELETE FROM {queue} WHERE sync_name OPERATOR(pg_catalog.=) $1"),
                None,
                &[def.name.as_str().into()],
            )?;
            c.update(
                "DELETE FROM bailian.syncs WHERE sync_name OPERATOR(pg_catalog.=) $1",
                None,
                &[def.name.as_str().into()],
            )
            .map(drop)
        })
        .map_err(spi)
    })?;
    Ok(None)
}

/// How long `CALL ai_sync_run` waits at most for queued rows another session holds.
const RUN_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// True when called by CALL outside an explicit transaction block, not in a subtransaction.
fn may_commit(fcinfo: pg_sys::FunctionCallInfo) -> bool {
    // SAFETY: fcinfo is live; context, when set, is a Node whose tag says what it is.
    unsafe {
        let ctx = (*fcinfo).context;
        !ctx.is_null()
            && (*ctx).type_ == pg_sys::NodeTag::T_CallContext
            && !(*(ctx as *mut pg_sys::CallContext)).atomic
            && !pg_sys::IsSubTransaction()
    }
}

/// `CALL ai_sync_run(sync_name)`: fills the sync's queued rows now, in this session, a run at
/// a time, committing after each.
fn sync_run(fcinfo: pg_sys::FunctionCallInfo) -> Result<Option<pg_sys::Datum>, AiError> {
    let procedure = "ai_sync_run";
    if !may_commit(fcinfo) {
        return Err(AiError::TransactionControl {
            message: format!(
                "{procedure} commits after every run, so it cannot run inside a transaction block"
            ),
            hint: format!("Run CALL {procedure}(...) on its own."),
        });
    }
    let def = name_of(fcinfo, procedure)?;
    if let Some((_, message)) = super::fill::blocked(&def) {
        return Err(AiError::ObjectNotReady {
            message: format!("{procedure}: {message}"),
            hint: "Drop the sync with ai_sync_drop and create it again.".into(),
        });
    }
    let connection = crate::spi::NonAtomicSpi::connect()?;
    if def.scanned_relid != Some(def.relid) {
        super::fill::scan(&def)?;
        connection.commit();
    }
    let (mut filled, mut failed) = (0i64, 0i64);
    let waited = std::time::Instant::now();
    loop {
        let (run, taken) = super::fill::mark(&def)?;
        connection.commit();
        if taken == 0 {
            // Entries another session holds (the worker filling, marking or recording them, a
            // writer changing their row) are waited for, up to RUN_WAIT, so that the CALL
            // returns with them filled.
            if super::fill::held(&def)? == 0 || waited.elapsed() >= RUN_WAIT {
                break;
            }
            // SAFETY: a plain sleep; interrupts are serviced right after.
            unsafe { pg_sys::pg_usleep(100_000) };
            pgrx::check_for_interrupts!();
            continue;
        }
        let outcome = super::fill::fill(&def, run, false);
        if let Ok(p) = &outcome {
            filled += p.filled;
            failed += p.failed;
        }
        let job_error = outcome.as_ref().err().map(|e| (e.sqlstate(), e.to_string()));
        let state = super::fill::record(&def, run, outcome.map_err(|e| (e.sqlstate(), e.to_string())))?;
        connection.commit();
        if let Some((code, message)) = job_error {
            return Err(AiError::ObjectNotReady {
                message: format!("{procedure}: sync \"{}\" is {state}: {code} {message}", def.name),
                hint: "ai_syncs shows its state; ai_sync_resume retries it.".into(),
            });
        }
        if state == "failing" || taken < super::RUN_ROWS {
            break;
        }
    }
    drop(connection);
    notice!("{procedure}: sync \"{}\": {filled} rows filled, {failed} failed", def.name);
    Ok(None)
}
