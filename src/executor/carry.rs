//! Requests a job's chunk query leaves in flight, taken up by the next chunk's query.
//!
//! A job (`functions::column`) computes its rows a chunk at a time, one cursor per chunk,
//! and no cursor outlives a commit. Each chunk's query also names the next chunk's first
//! rows, after its own, so that its node reads them ahead and keeps their requests in flight
//! while the job writes the chunk's last rows, closes the cursor and commits. Dropped with
//! the node, those requests would be paid for twice, and every request slot would stand idle
//! from the chunk's last answer to the next query's first request: the pipeline drained once
//! per chunk, and the rate fell by about half a latency per chunk.
//!
//! So a capturing node that ends (its query closed, not failed) hands what it read ahead
//! here: the requests in flight, each row's answers so far, and a print of each row (its
//! child's row, value by value, byte for byte). The next capturing node of the same plan
//! (the job plans its query once: the same node, the same calls) takes them, and a row it
//! reads whose print matches a carried row's takes that row's answers and requests instead
//! of sending its own calls: the same child row gives the same arguments, so the same calls.
//! A row that changed, went, or never comes gives nothing (its requests' answers are
//! dropped; a changed row's calls are made again, from what it holds now). What was still
//! waiting to be sent (queued, or in a pack not yet full) is dropped rather than carried: it
//! costs nothing, and the row's call is prepared again.
//!
//! Nothing here decides what a row is given: the job still compares the columns a value
//! was computed from with the row's when it writes it. A carry lives only while the job's
//! query is marked (`capture::mark`), and is dropped with the mark, or by a node that
//! fails, or when the next one ends; the memory it holds is one read-ahead window's.

use super::node::Answers;
use crate::backend::{self, Flight};
use crate::functions::calls::Answer;
use bailian_core::AiError;
use pgrx::{pg_sys, varlena};
use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

/// Marks a carried request's row numbers (those of the node that sent it, not the one that
/// takes it up), so that the taker tells its own requests' answers from carried ones.
pub(super) const CARRIED: u64 = 1 << 63;

/// One call of a carried row.
pub(super) enum Call {
    /// Its answer (or error) arrived.
    Arrived(Result<Answer, AiError>),
    /// Its request is in the carried flight.
    InFlight,
    /// Never sent: the taker makes the call itself.
    Lost,
}

/// What a capturing node read ahead and did not return.
pub(super) struct Carry {
    /// The node's calls and the shape of its child's rows: only the same node of the same
    /// plan takes a carry.
    signature: String,
    flight: Flight<Answers>,
    in_flight: usize,
    window_max: usize,
    /// Rows by print: the carrier's row number, and its calls.
    rows: HashMap<Vec<u8>, (u64, Vec<Call>)>,
}

thread_local! {
    static CARRIES: RefCell<HashMap<i32, Carry>> = RefCell::new(HashMap::new());
}

impl Carry {
    /// `flight` holds the requests of the node whose rows `rows` are, numbered by it and by
    /// the node it took a carry from (`taken`, see `Taken::retag`).
    pub(super) fn new(
        signature: String,
        flight: Flight<Answers>,
        in_flight: usize,
        window_max: usize,
        rows: HashMap<Vec<u8>, (u64, Vec<Call>)>,
        taken: Option<Taken>,
    ) -> Carry {
        let map = Rc::new(taken.map(|t| t.adopted).unwrap_or_default());
        let flight = flight
            .into_iter()
            .map(|request| {
                let map = Rc::clone(&map);
                Box::pin(async move {
                    request
                        .await
                        .into_iter()
                        .filter_map(|(seq, site, answer)| Some((retag(seq, &map)?, site, answer)))
                        .collect::<Answers>()
                }) as std::pin::Pin<Box<dyn std::future::Future<Output = Answers>>>
            })
            .collect();
        Carry { signature, flight, in_flight, window_max, rows }
    }
}

/// A carried request's row number as the taker of the carry knows it: the carrier's own
/// rows, marked; rows the carrier took from an earlier carry, by the number it gave them
/// (None: the carrier never read that row, and nothing will).
fn retag(seq: u64, taken: &HashMap<u64, u64>) -> Option<u64> {
    if seq & CARRIED == 0 {
        Some(seq | CARRIED)
    } else {
        taken.get(&(seq & !CARRIED)).map(|own| own | CARRIED)
    }
}

/// Keeps the carry of the capturing node `node` of the job's query, in place of the one it
/// had before (dropped, with its connections). Without a job collecting, it is dropped.
pub(super) fn keep(node: i32, carry: Carry) {
    if !super::capture::marked() {
        drop(carry);
        backend::settle();
        return;
    }
    let old = CARRIES.with(|c| c.borrow_mut().insert(node, carry));
    if old.is_some() {
        drop(old);
        backend::settle();
    }
}

/// Drops every carry (the job is over).
pub(super) fn clear() {
    let all = CARRIES.with(|c| std::mem::take(&mut *c.borrow_mut()));
    if !all.is_empty() {
        drop(all);
        backend::settle();
    }
}

/// A carry a node took up: its requests and rows, as the node reads its own.
#[derive(Default)]
pub(super) struct Taken {
    rows: HashMap<Vec<u8>, (u64, Vec<Call>)>,
    /// Carried rows not read yet, by the carrier's number: where a late answer waits.
    waiting: HashMap<u64, Vec<u8>>,
    /// Carried rows read, the carrier's number to the taker's.
    adopted: HashMap<u64, u64>,
}

/// The carry of `node` if its signature is `signature`: (its requests in flight and their
/// count, the carrier's window, its rows). Another node's or plan's is dropped.
pub(super) fn take(node: i32, signature: &str) -> Option<(Flight<Answers>, usize, usize, Taken)> {
    let carry = CARRIES.with(|c| c.borrow_mut().remove(&node))?;
    if carry.signature != signature {
        drop(carry);
        backend::settle();
        return None;
    }
    let waiting = carry.rows.iter().map(|(print, (seq, _))| (*seq, print.clone())).collect();
    let taken = Taken { rows: carry.rows, waiting, adopted: HashMap::new() };
    Some((carry.flight, carry.in_flight, carry.window_max, taken))
}

impl Taken {
    /// Whether carried rows are still to be read.
    pub(super) fn any(&self) -> bool {
        !self.rows.is_empty()
    }

    /// The calls of the carried row whose print is `print`, now the taker's row `seq`.
    pub(super) fn row(&mut self, print: &[u8], seq: u64) -> Option<Vec<Call>> {
        let (carried, calls) = self.rows.remove(print)?;
        self.waiting.remove(&carried);
        if calls.iter().any(|c| matches!(c, Call::InFlight)) {
            self.adopted.insert(carried, seq);
        }
        Some(calls)
    }

    /// A carried request's answer for the carrier's row `carried` (unmarked): the taker's
    /// row it goes to, or None when it waits with its row (not read yet) or its row is gone.
    pub(super) fn route(
        &mut self,
        carried: u64,
        site: usize,
        answer: Result<Answer, AiError>,
    ) -> Option<(u64, Result<Answer, AiError>)> {
        if let Some(own) = self.adopted.get(&carried) {
            return Some((*own, answer));
        }
        let print = self.waiting.get(&carried)?;
        if let Some(call) = self.rows.get_mut(print).and_then(|(_, calls)| calls.get_mut(site)) {
            *call = Call::Arrived(answer);
        }
        None
    }
}

/// The print of the row in `slot` (deformed: slot_getallattrs): each column's null flag and
/// bytes. Equal prints are equal rows (a toasted value by its pointer, which names one
/// value for as long as a row holds it); a value that prints differently for the same
/// contents (an expanded object, a value compressed in one row and not in the other) only
/// costs its call again.
///
/// SAFETY: `slot` holds a deformed row of its descriptor.
pub(super) unsafe fn print(slot: *mut pg_sys::TupleTableSlot) -> Vec<u8> {
    // SAFETY: see above; by-reference datums point into the slot's row.
    unsafe {
        let desc = pgrx::PgTupleDesc::from_pg_unchecked((*slot).tts_tupleDescriptor);
        let mut out = Vec::with_capacity(64);
        for i in 0..desc.len() {
            let Some(att) = desc.get(i) else { break };
            if *(*slot).tts_isnull.add(i) {
                out.push(0);
                continue;
            }
            out.push(1);
            let datum = *(*slot).tts_values.add(i);
            if att.attbyval {
                out.extend_from_slice(&datum.value().to_le_bytes());
                continue;
            }
            let ptr = datum.cast_mut_ptr::<u8>();
            let bytes: &[u8] = match att.attlen {
                -1 => {
                    let v = ptr as *const pg_sys::varlena;
                    if varlena::varatt_is_1b_e(v) || varlena::varatt_is_4b_c(v) {
                        // A TOAST pointer, or compressed: as stored.
                        out.push(b'e');
                        std::slice::from_raw_parts(ptr, varlena::varsize_any(v))
                    } else {
                        // Plain: the contents alone, since a row's copy may shorten the
                        // header of a value its child made.
                        out.push(b'p');
                        std::slice::from_raw_parts(
                            varlena::vardata_any(v).cast(),
                            varlena::varsize_any_exhdr(v),
                        )
                    }
                }
                -2 => std::ffi::CStr::from_ptr(ptr.cast()).to_bytes(),
                n => std::slice::from_raw_parts(ptr, n.max(0) as usize),
            };
            out.extend_from_slice(&(bytes.len() as u64).to_le_bytes());
            out.extend_from_slice(bytes);
        }
        out
    }
}

/// What a node's rows must match for a carry to be taken: its calls (the scan target list,
/// as the plan prints it) and the types of its child's columns.
///
/// SAFETY: `cscan` is a planned AI Batch node; `desc` its child's result descriptor.
pub(super) unsafe fn signature(cscan: *mut pg_sys::CustomScan, desc: pg_sys::TupleDesc) -> String {
    // SAFETY: see above; nodeToString allocates in the current memory context, freed here.
    unsafe {
        let text = pg_sys::nodeToString((*cscan).custom_scan_tlist.cast());
        let mut out = std::ffi::CStr::from_ptr(text).to_string_lossy().into_owned();
        pg_sys::pfree(text.cast());
        let desc = pgrx::PgTupleDesc::from_pg_unchecked(desc);
        for att in desc.iter() {
            out.push_str(&format!(" {}:{}", att.atttypid.to_u32(), att.atttypmod));
        }
        out
    }
}
