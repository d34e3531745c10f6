//! Returning a set from an fmgr entry point in materialize mode: the rows are built in Rust
//! and handed to PostgreSQL in one tuplestore.

use bailian_core::AiError;
use pgrx::pg_sys;

/// Stores `rows` (one `Option<Datum>` per column of the function's declared result) as the
/// function's result set.
pub fn materialize(
    fcinfo: pg_sys::FunctionCallInfo,
    rows: impl IntoIterator<Item = Vec<Option<pg_sys::Datum>>>,
) -> Result<(), AiError> {
    // SAFETY: fcinfo is the live call info; resultinfo, when present and of the right node
    // type, is PostgreSQL's ReturnSetInfo for this call, and the tuplestore and descriptor
    // are created in the per-query context that outlives it.
    unsafe {
        let rsinfo = (*fcinfo).resultinfo as *mut pg_sys::ReturnSetInfo;
        if rsinfo.is_null()
            || (*rsinfo).type_ != pg_sys::NodeTag::T_ReturnSetInfo
            || (*rsinfo).allowedModes & pg_sys::SetFunctionReturnMode::SFRM_Materialize as i32 == 0
        {
            return Err(AiError::invalid("a set-returning function was called where no set is accepted"));
        }
        let mut tupdesc: pg_sys::TupleDesc = std::ptr::null_mut();
        if pg_sys::get_call_result_type(fcinfo, std::ptr::null_mut(), &mut tupdesc)
            != pg_sys::TypeFuncClass::TYPEFUNC_COMPOSITE
        {
            return Err(AiError::Internal { message: "the result type is not a row type".into() });
        }
        let old = pg_sys::MemoryContextSwitchTo((*(*rsinfo).econtext).ecxt_per_query_memory);
        let tupdesc = pg_sys::CreateTupleDescCopy(tupdesc);
        let store = pg_sys::tuplestore_begin_heap(true, false, pg_sys::work_mem);
        pg_sys::MemoryContextSwitchTo(old);
        (*rsinfo).returnMode = pg_sys::SetFunctionReturnMode::SFRM_Materialize;
        (*rsinfo).setResult = store;
        (*rsinfo).setDesc = tupdesc;
        for row in rows {
            let mut nulls: Vec<bool> = row.iter().map(Option::is_none).collect();
            let mut values: Vec<pg_sys::Datum> =
                row.into_iter().map(|d| d.unwrap_or(pg_sys::Datum::from(0))).collect();
            pg_sys::tuplestore_putvalues(store, tupdesc, values.as_mut_ptr(), nulls.as_mut_ptr());
        }
    }
    Ok(())
}
