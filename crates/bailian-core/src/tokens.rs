//! Token counts: exact for Qwen models, with Qwen's own BPE vocabulary, and a documented
//! approximation for the models whose tokenizer we do not have.
//!
//! The exact count is the one the official DashScope SDK's local tokenizer gives
//! (`dashscope.get_tokenizer("qwen-turbo").encode(text)`, `dashscope/tokenizers/qwen_tokenizer.py`
//! of dashscope 2.0.2, over tiktoken), reproduced step by step:
//!
//! 1. the text is put in Unicode NFC;
//! 2. a text longer than 100,000 characters is cut as the SDK's `_split_text` cuts it (at line
//!    breaks, long lines every 100,000 characters) and each chunk is encoded on its own;
//! 3. in each chunk, the special tokens written in the text (`<|endoftext|>`, `<|im_start|>`,
//!    `<|im_end|>`, `<|extra_0|>` ... `<|extra_204|>`) are one token each: the SDK encodes with
//!    `allowed_special="all"`;
//! 4. the text between them is split by the SDK's pattern (`PATTERN`), and each piece is one
//!    token when the vocabulary has it, else byte-pair merged as tiktoken merges: the adjacent
//!    pair whose concatenation has the lowest rank first, the leftmost of equal ranks.
//!
//! Rust's `regex` has no look-ahead, and the pattern has one (`\s+(?!\S)`): the splitter runs
//! the pattern without it and shortens the one kind of match that it changes (see
//! `QwenTokenizer::pieces`); a test checks the split against the full pattern run by
//! `fancy-regex`, the engine tiktoken itself uses. Merging a long piece (a line of Chinese
//! without punctuation is one piece) uses a heap instead of tiktoken's rescan, with the same
//! result, so that no piece costs quadratic time; the SDK's 100,000-character chunks bound a
//! piece, and so the merge's memory.
//!
//! What these counts are not: the tokens a request is billed for. The service adds the chat
//! template (roles, `<|im_start|>`/`<|im_end|>` per message), system prompts and tool schemas;
//! the count is of the text alone, as the SDK's is. Whether every generation of Qwen uses this
//! vocabulary is not documented (research note §4.2: the Qwen2 and Qwen3 models are believed to
//! share its 151,643 tokens); the SDK applies it to every model whose name starts with "qwen".

use crate::error::AiError;
use crate::limits::Ticker;
use hashbrown::HashTable;
use regex_automata::meta::Regex;
use regex_automata::{Anchored, Input};
use rustc_hash::FxBuildHasher;
use std::borrow::Cow;
use std::fmt;
use std::fs::{File, OpenOptions};
use std::hash::BuildHasher;
use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use unicode_normalization::{is_nfc_quick, IsNormalized, UnicodeNormalization};

/// The vocabulary's file name, as the SDK ships it (`dashscope/resources/qwen.tiktoken`).
pub const VOCABULARY_FILE: &str = "qwen.tiktoken";

/// The SDK's pre-tokenizer pattern (`PAT_STR`), verbatim.
pub const PATTERN: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// `PATTERN`'s alternatives before `\s+(?!\S)`, and its last one: the splitter's two patterns.
const WORDS: &str =
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+";
const SPACES: &str = r"\s+";

/// The id of `<|endoftext|>`; `<|im_start|>`, `<|im_end|>` and `<|extra_0|>` ... follow
/// (the SDK's `SPECIAL_START_ID`, fixed whatever the vocabulary).
pub const SPECIAL_START_ID: u32 = 151_643;

/// `<|extra_0|>` to `<|extra_204|>`.
const EXTRA_TOKENS: u32 = 205;

/// The ids the special tokens take.
const SPECIAL_IDS: std::ops::Range<u32> = SPECIAL_START_ID..SPECIAL_START_ID + 3 + EXTRA_TOKENS;

/// The SDK's `_CHUNK_SIZE`: texts longer than this many characters are encoded in chunks.
const CHUNK_CHARS: usize = 100_000;

/// Largest vocabulary file read (Qwen's is 2.5 MB).
const MAX_VOCABULARY_BYTES: u64 = 64 << 20;

/// Pieces of at most this many bytes are merged by tiktoken's own loop (a rescan per merge,
/// cheapest for short pieces); longer ones with a heap.
const SHORT_PIECE: usize = 64;

/// "Unranked": a pair that is no token (tiktoken's `Rank::MAX`).
const NONE: u32 = u32::MAX;

/// Qwen's byte-level BPE tokenizer, as the DashScope SDK runs it. Built once per process
/// (about 4 MB) and shared: encoding needs only `&self`.
pub struct QwenTokenizer {
    /// Every token's bytes, one after the other.
    bytes: Vec<u8>,
    /// Where each token's bytes are, and its rank (its id), by a hash of the token's bytes.
    /// (The entry itself in the table: a lookup costs one probe of the table and one read of
    /// the bytes, which is most of the time a merge takes.)
    table: HashTable<Entry>,
    hasher: FxBuildHasher,
    /// `WORDS` (pattern 0) and `SPACES` (pattern 1), leftmost-first as one alternation.
    splitter: Regex,
}

#[derive(Clone, Copy)]
struct Entry {
    start: u32,
    len: u32,
    rank: u32,
}

impl fmt::Debug for QwenTokenizer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("QwenTokenizer").field("tokens", &self.table.len()).finish_non_exhaustive()
    }
}

/// Where the tokens go: counted, or collected.
enum Out<'a> {
    Count(&'a mut usize),
    Ids(&'a mut Vec<u32>),
}

impl Out<'_> {
    fn push(&mut self, id: u32) {
        match self {
            Out::Count(n) => **n += 1,
            Out::Ids(ids) => ids.push(id),
        }
    }
}

/// Buffers of the merge, kept across pieces.
#[derive(Default)]
struct Scratch {
    parts: Vec<(usize, u32)>,
    next: Vec<u32>,
    prev: Vec<u32>,
    heap: std::collections::BinaryHeap<std::cmp::Reverse<(u32, u32, u32, u32)>>,
}

impl QwenTokenizer {
    /// Reads the vocabulary at `path` (lines `base64(token) rank`, as the SDK's file).
    pub fn load(path: &Path) -> Result<QwenTokenizer, AiError> {
        let shown = path.display().to_string();
        let content = read_vocabulary(path).map_err(|reason| unavailable(Some(&shown), reason))?;
        Self::parse(&content).map_err(|reason| unavailable(Some(&shown), reason))
    }

    /// The vocabulary in `content`, as `load` reads it from a file.
    pub fn from_bytes(content: &[u8]) -> Result<QwenTokenizer, AiError> {
        Self::parse(content).map_err(|reason| unavailable(None, reason))
    }

    fn parse(content: &[u8]) -> Result<QwenTokenizer, String> {
        use base64::Engine as _;
        let splitter =
            Regex::new_many(&[WORDS, SPACES]).map_err(|e| format!("the pattern does not compile: {e}"))?;
        let hasher = FxBuildHasher;
        let lines = content.split(|&b| b == b'\n' || b == b'\r').filter(|l| !l.is_empty());
        let mut tok = QwenTokenizer {
            bytes: Vec::with_capacity(content.len() / 2),
            table: HashTable::with_capacity(content.len() / 12),
            hasher,
            splitter,
        };
        let mut ranks =
            std::collections::HashSet::with_capacity_and_hasher(content.len() / 12, FxBuildHasher);
        for (n, line) in lines.enumerate() {
            let mut fields = line.split(|b| b.is_ascii_whitespace()).filter(|f| !f.is_empty());
            let (Some(token), Some(rank), None) = (fields.next(), fields.next(), fields.next()) else {
                return Err(format!("entry {} is not \"base64 rank\"", n + 1));
            };
            let token = base64::engine::general_purpose::STANDARD
                .decode(token)
                .ok()
                .filter(|t| !t.is_empty())
                .ok_or_else(|| format!("entry {} does not start with a token in base64", n + 1))?;
            let rank = std::str::from_utf8(rank)
                .ok()
                .filter(|r| r.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|r| r.parse::<u32>().ok())
                .filter(|&r| r != NONE)
                .ok_or_else(|| format!("entry {} does not end with a rank", n + 1))?;
            if SPECIAL_IDS.contains(&rank) {
                return Err(format!("entry {} has rank {rank}, which is a special token's id", n + 1));
            }
            if !ranks.insert(rank) {
                return Err(format!("entry {} repeats rank {rank}", n + 1));
            }
            if tok.lookup(&token).is_some() {
                return Err(format!("entry {} repeats a token", n + 1));
            }
            let too_big = || format!("entry {} makes the vocabulary too large", n + 1);
            let entry = Entry {
                start: u32::try_from(tok.bytes.len()).map_err(|_| too_big())?,
                len: u32::try_from(token.len()).map_err(|_| too_big())?,
                rank,
            };
            tok.bytes.extend_from_slice(&token);
            let (bytes, hasher) = (&tok.bytes, &tok.hasher);
            tok.table.insert_unique(hasher.hash_one(&token[..]), entry, |e| hasher.hash_one(e.bytes(bytes)));
        }
        // Any text is some sequence of bytes: every byte must be a token of its own.
        if let Some(b) = (0..=255u8).find(|&b| tok.lookup(&[b]).is_none()) {
            return Err(format!("it has no token for the byte 0x{b:02x}"));
        }
        Ok(tok)
    }

    /// How many tokens the vocabulary has, special tokens not included.
    pub fn len(&self) -> usize {
        self.table.len()
    }

    pub fn is_empty(&self) -> bool {
        self.table.is_empty()
    }

    /// The number of tokens the SDK's `encode(text)` gives.
    pub fn count(&self, text: &str) -> usize {
        let mut n = 0;
        // Never interrupted: it cannot fail.
        let _ = self.run(&nfc_plain(text), &mut Out::Count(&mut n), &mut Ticker::new(|| false));
        n
    }

    /// The ids the SDK's `encode(text)` gives.
    pub fn encode(&self, text: &str) -> Vec<u32> {
        let mut ids = Vec::with_capacity(text.len() / 3);
        let _ = self.run(&nfc_plain(text), &mut Out::Ids(&mut ids), &mut Ticker::new(|| false));
        ids
    }

    /// `count`, for a caller's data: `interrupted` is asked as the work goes (a cancel ends it
    /// with `AiError::Interrupted`), and the text's NFC copy, when it needs one, is allocated
    /// fallibly (53200 instead of an abort). Linear in the text, but for the merge of long
    /// pieces (n log n in a piece's length).
    pub fn count_checked(&self, text: &str, interrupted: &dyn Fn() -> bool) -> Result<usize, AiError> {
        let mut ticker = Ticker::new(interrupted);
        let text = nfc(text, &mut ticker)?;
        let mut n = 0;
        self.run(&text, &mut Out::Count(&mut n), &mut ticker)?;
        Ok(n)
    }

    /// Steps 2 to 4 of the module doc, over an NFC text.
    fn run<F: FnMut() -> bool>(
        &self,
        text: &str,
        out: &mut Out,
        ticker: &mut Ticker<F>,
    ) -> Result<(), AiError> {
        let mut scratch = Scratch::default();
        sdk_chunks(text, |chunk| self.encode_chunk(chunk, out, ticker, &mut scratch))
    }

    /// One chunk: special tokens, and the text between them.
    fn encode_chunk<F: FnMut() -> bool>(
        &self,
        chunk: &str,
        out: &mut Out,
        ticker: &mut Ticker<F>,
        scratch: &mut Scratch,
    ) -> Result<(), AiError> {
        let mut at = 0;
        loop {
            let next = next_special(chunk, at);
            let end = next.map_or(chunk.len(), |(start, _, _)| start);
            // The text between special tokens is split on its own, as tiktoken does: its end is
            // the end of the text for the look-ahead.
            self.pieces(&chunk[at..end], ticker, |piece, ticker| self.piece(piece, out, ticker, scratch))?;
            match next {
                Some((_, stop, id)) => {
                    out.push(id);
                    at = stop;
                }
                None => return Ok(()),
            }
        }
    }

    /// Calls `f` for each piece `PATTERN` splits `text` into.
    ///
    /// The splitter is `PATTERN` without `\s+(?!\S)`. Only a match of the last alternative
    /// (`\s+`, pattern 1 here) can differ: at such a place none of the alternatives before
    /// `\s+(?!\S)` matches, so the text is a run of whitespace without line breaks, and `\s+`
    /// takes all of it. `\s+(?!\S)` would have taken the run less its last character when the
    /// run has more than one and a non-space follows (that last space then starts the next
    /// piece, " word"); the whole run otherwise, as `\s+` does.
    fn pieces<F: FnMut() -> bool>(
        &self,
        text: &str,
        ticker: &mut Ticker<F>,
        mut f: impl FnMut(&[u8], &mut Ticker<F>) -> Result<(), AiError>,
    ) -> Result<(), AiError> {
        let mut at = 0;
        while at < text.len() {
            let input = Input::new(text).range(at..).anchored(Anchored::Yes);
            let mut end = match self.splitter.search(&input) {
                Some(m) if m.end() > at => {
                    let mut end = m.end();
                    if m.pattern().as_usize() == 1 && end < text.len() {
                        let last = text[at..end].chars().next_back().map_or(0, char::len_utf8);
                        if end - at > last {
                            end -= last;
                        }
                    }
                    end
                }
                // Every character starts a match; should one not, it is a piece of its own.
                _ => at + text[at..].chars().next().map_or(1, char::len_utf8),
            };
            end = end.min(text.len());
            f(&text.as_bytes()[at..end], ticker)?;
            ticker.tick(end - at)?;
            at = end;
        }
        Ok(())
    }

    /// One piece: one token if the vocabulary has it, else merged.
    fn piece<F: FnMut() -> bool>(
        &self,
        piece: &[u8],
        out: &mut Out,
        ticker: &mut Ticker<F>,
        scratch: &mut Scratch,
    ) -> Result<(), AiError> {
        if let Some(id) = self.lookup(piece) {
            out.push(id);
            return Ok(());
        }
        let bounds = if piece.len() <= SHORT_PIECE {
            self.merge_short(piece, scratch)
        } else {
            self.merge_long(piece, scratch, ticker)?
        };
        match out {
            Out::Count(n) => **n += bounds.len().saturating_sub(1),
            Out::Ids(ids) => {
                for w in bounds.windows(2) {
                    let part = &piece[w[0]..w[1]];
                    match self.lookup(part) {
                        Some(id) => ids.push(id),
                        // A merged part is a token by construction; bytes are, always.
                        None => ids.extend(part.iter().filter_map(|&b| self.lookup(&[b]))),
                    }
                }
            }
        }
        Ok(())
    }

    /// tiktoken's `_byte_pair_merge`, as written there: the starts of the parts, and the end.
    fn merge_short(&self, piece: &[u8], scratch: &mut Scratch) -> Vec<usize> {
        let parts = &mut scratch.parts;
        parts.clear();
        let rank = |a: usize, b: usize| self.lookup(&piece[a..b]).unwrap_or(NONE);
        let mut min = (NONE, usize::MAX);
        for i in 0..piece.len().saturating_sub(1) {
            let r = rank(i, i + 2);
            if r < min.0 {
                min = (r, i);
            }
            parts.push((i, r));
        }
        parts.push((piece.len().saturating_sub(1), NONE));
        parts.push((piece.len(), NONE));
        while min.0 != NONE {
            let i = min.1;
            // The pair starting at part j, once part i has absorbed part i + 1.
            let after = |parts: &[(usize, u32)], j: usize| {
                if j + 3 < parts.len() {
                    rank(parts[j].0, parts[j + 3].0)
                } else {
                    NONE
                }
            };
            if i > 0 {
                parts[i - 1].1 = after(parts, i - 1);
            }
            parts[i].1 = after(parts, i);
            parts.remove(i + 1);
            min = (NONE, usize::MAX);
            for (j, &(_, r)) in parts[..parts.len() - 1].iter().enumerate() {
                if r < min.0 {
                    min = (r, j);
                }
            }
        }
        parts.iter().map(|&(start, _)| start).collect()
    }

    /// The same merge with a heap of candidate pairs, ordered by (rank, start): the lowest
    /// rank, the leftmost of equal ranks, as tiktoken's rescan picks. A candidate is
    /// (rank, start, middle, end); it is stale once either of its two parts has changed.
    fn merge_long<F: FnMut() -> bool>(
        &self,
        piece: &[u8],
        scratch: &mut Scratch,
        ticker: &mut Ticker<F>,
    ) -> Result<Vec<usize>, AiError> {
        use std::cmp::Reverse;
        let n = piece.len();
        let n32 = u32::try_from(n).map_err(|_| AiError::Internal { message: "a piece of 4 GB".into() })?;
        let Scratch { next, prev, heap, .. } = scratch;
        next.clear();
        prev.clear();
        heap.clear();
        // Part i spans i..next[i]; a dead part (absorbed by its left neighbour) has next[i] = 0.
        next.extend(1..=n32);
        prev.extend((0..n32).map(|i| i.wrapping_sub(1)));
        let rank = |a: u32, b: u32| self.lookup(&piece[a as usize..b as usize]).unwrap_or(NONE);
        for i in 0..n32.saturating_sub(1) {
            let r = rank(i, i + 2);
            if r != NONE {
                heap.push(Reverse((r, i, i + 1, i + 2)));
            }
        }
        while let Some(Reverse((_, start, mid, end))) = heap.pop() {
            let (s, m) = (start as usize, mid as usize);
            if next[s] != mid || m >= n || next[m] != end {
                continue;
            }
            next[s] = end;
            next[m] = 0;
            if end < n32 {
                prev[end as usize] = start;
                let r = rank(start, next[end as usize]);
                if r != NONE {
                    heap.push(Reverse((r, start, end, next[end as usize])));
                }
            }
            if start > 0 {
                let p = prev[s];
                let r = rank(p, end);
                if r != NONE {
                    heap.push(Reverse((r, p, start, end)));
                }
            }
            ticker.tick(1)?;
        }
        let mut bounds = Vec::with_capacity(n / 2 + 1);
        let mut i = 0;
        while i < n {
            bounds.push(i);
            i = next[i] as usize;
        }
        bounds.push(n);
        Ok(bounds)
    }

    /// The rank of the token `bytes`, if the vocabulary has it.
    fn lookup(&self, bytes: &[u8]) -> Option<u32> {
        let hash = self.hasher.hash_one(bytes);
        self.table.find(hash, |e| e.bytes(&self.bytes) == bytes).map(|e| e.rank)
    }
}

impl Entry {
    /// The token's bytes in `all`, the vocabulary's.
    fn bytes(self, all: &[u8]) -> &[u8] {
        all.get(self.start as usize..(self.start as usize).saturating_add(self.len as usize))
            .unwrap_or_default()
    }
}

fn unavailable(file: Option<&str>, reason: String) -> AiError {
    AiError::TokenizerUnavailable {
        file: file.map(str::to_string),
        reason,
        hint: format!(
            "The file is {VOCABULARY_FILE} of the official dashscope Python package (dashscope/resources/{VOCABULARY_FILE})."
        ),
    }
}

/// The file's bytes, or why they cannot be had.
fn read_vocabulary(path: &Path) -> Result<Vec<u8>, String> {
    // O_NONBLOCK so that a FIFO at the path is refused below instead of hanging the backend.
    let file: File =
        OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK).open(path).map_err(|e| e.to_string())?;
    let meta = file.metadata().map_err(|e| e.to_string())?;
    if !meta.file_type().is_file() {
        return Err("it is not a regular file".into());
    }
    if meta.len() > MAX_VOCABULARY_BYTES {
        return Err(format!("it is larger than {} MB", MAX_VOCABULARY_BYTES >> 20));
    }
    let mut content = Vec::new();
    content.try_reserve_exact(meta.len() as usize + 1).map_err(|_| "out of memory".to_string())?;
    file.take(MAX_VOCABULARY_BYTES + 1).read_to_end(&mut content).map_err(|e| e.to_string())?;
    if content.len() as u64 > MAX_VOCABULARY_BYTES {
        return Err(format!("it is larger than {} MB", MAX_VOCABULARY_BYTES >> 20));
    }
    Ok(content)
}

/// `text` in NFC (the SDK's `unicodedata.normalize("NFC", text)`), borrowed when it is already.
fn nfc<'t, F: FnMut() -> bool>(text: &'t str, ticker: &mut Ticker<F>) -> Result<Cow<'t, str>, AiError> {
    if is_nfc_quick(text.chars()) == IsNormalized::Yes {
        return Ok(Cow::Borrowed(text));
    }
    let what = "the NFC form of a text to count tokens of";
    let mut out = crate::limits::string_with_capacity(what, text.len())?;
    for c in text.nfc() {
        if out.len() + 4 > out.capacity() {
            out.try_reserve(out.capacity().max(64))
                .map_err(|_| AiError::OutOfMemory { what: what.into() })?;
        }
        out.push(c);
        ticker.tick(1)?;
    }
    Ok(Cow::Owned(out))
}

/// `nfc`, allocating as any String does.
fn nfc_plain(text: &str) -> Cow<'_, str> {
    match is_nfc_quick(text.chars()) {
        IsNormalized::Yes => Cow::Borrowed(text),
        _ => Cow::Owned(text.nfc().collect()),
    }
}

/// The SDK's `_split_text`, calling `f` for each chunk in order: a text of at most 100,000
/// characters is one chunk; a longer one is cut into lines (each but the first starting with
/// its "\n"), lines longer than 100,000 characters into slices of 100,000, and consecutive
/// parts are joined into chunks of at most 100,000 characters.
fn sdk_chunks(text: &str, mut f: impl FnMut(&str) -> Result<(), AiError>) -> Result<(), AiError> {
    if text.len() <= CHUNK_CHARS || text.chars().nth(CHUNK_CHARS).is_none() {
        return f(text);
    }
    let mut chunk_start = 0;
    let mut chunk_chars = 0;
    let mut part = |start: usize, chars: usize| -> Result<(), AiError> {
        if chunk_chars + chars <= CHUNK_CHARS {
            chunk_chars += chars;
        } else {
            f(&text[chunk_start..start])?;
            chunk_start = start;
            chunk_chars = chars;
        }
        Ok(())
    };
    let mut line_start = 0;
    let mut first = true;
    loop {
        // A line runs to the next "\n" after its own first byte (its "\n", for all but the
        // first line).
        let from = if first { 0 } else { line_start + 1 };
        first = false;
        let line_end = text[from..].find('\n').map_or(text.len(), |i| from + i);
        let line = &text[line_start..line_end];
        let mut chars = 0;
        let mut slice_start = line_start;
        for (i, _) in line.char_indices() {
            if chars == CHUNK_CHARS {
                part(slice_start, chars)?;
                slice_start = line_start + i;
                chars = 0;
            }
            chars += 1;
        }
        part(slice_start, chars)?;
        if line_end == text.len() {
            break;
        }
        line_start = line_end;
    }
    f(&text[chunk_start..])
}

/// The leftmost special token in `text` at or after `from`: (start, end, id).
fn next_special(text: &str, from: usize) -> Option<(usize, usize, u32)> {
    let mut at = from;
    while let Some(i) = text.get(at..)?.find("<|") {
        let start = at + i;
        if let Some((len, id)) = special_at(&text.as_bytes()[start..]) {
            return Some((start, start + len, id));
        }
        at = start + 2;
    }
    None
}

/// The special token `bytes` starts with: (its length, its id).
fn special_at(bytes: &[u8]) -> Option<(usize, u32)> {
    for (k, token) in [&b"<|endoftext|>"[..], b"<|im_start|>", b"<|im_end|>"].into_iter().enumerate() {
        if bytes.starts_with(token) {
            return Some((token.len(), SPECIAL_START_ID + k as u32));
        }
    }
    let rest = bytes.strip_prefix(b"<|extra_")?;
    let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
    // "<|extra_7|>", never "<|extra_07|>": the SDK writes f"<|extra_{i}|>".
    if !(1..=3).contains(&digits) || (digits > 1 && rest[0] == b'0') || !rest[digits..].starts_with(b"|>") {
        return None;
    }
    let n = rest[..digits].iter().fold(0u32, |n, d| n * 10 + u32::from(d - b'0'));
    (n < EXTRA_TOKENS).then(|| (b"<|extra_".len() + digits + 2, SPECIAL_START_ID + 3 + n))
}

/// A token count, and whether it is exact.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TokenCount {
    pub tokens: u64,
    /// Counted with the model's own vocabulary; false for `approximate`'s estimate.
    pub exact: bool,
}

/// Whether `model_type` tokenizes text with Qwen's vocabulary, so that `QwenTokenizer` counts
/// its tokens exactly.
///
/// - `qwen*`: the SDK's `get_tokenizer` gives this tokenizer for every model name starting
///   with "qwen" (dashscope/tokenizers/tokenizer.py). That includes `qwen-mt-*` (Qwen-MT is
///   built on Qwen3, and the SDK takes its name), the vision, omni, embedding and rerank models
///   of the Qwen family (`qwen3-vl-*`, `qwen-vl-ocr`, `qwen3-omni-flash`, `qwen3-vl-embedding`,
///   `qwen3-rerank`): their text is Qwen's; images and audio are not text and are not counted.
/// - `qwq*`: QwQ is Qwen's reasoning model, built on Qwen2.5 and its vocabulary; only the SDK's
///   prefix check leaves it out.
/// - Everything else is approximated: DeepSeek, Kimi and GLM have vocabularies of their own;
///   `deepseek-r1-distill-qwen-*` changes the tokenizer's configuration; the tokenizer of
///   `text-embedding-v*`, `multimodal-embedding-v1` and `gte-rerank-v2` is not published, and
///   the SDK refuses their names; OpenSearch's own `ops-*` models are fine-tunes not documented.
pub fn counts_exactly(model_type: &str) -> bool {
    model_type.starts_with("qwen") || model_type.starts_with("qwq")
}

/// The tokens of `text` for a model of `model_type`: exact when the model uses Qwen's
/// vocabulary and it is given, else `approximate`.
pub fn count(model_type: &str, text: &str, qwen: Option<&QwenTokenizer>) -> TokenCount {
    match qwen {
        Some(tokenizer) if counts_exactly(model_type) => {
            TokenCount { tokens: tokenizer.count(text) as u64, exact: true }
        }
        _ => TokenCount { tokens: approximate(text) as u64, exact: false },
    }
}

/// An estimate of the tokens of `text` for a model whose tokenizer we do not have, meant to
/// err high (it is for cost previews and budgets). Summed over the text:
///
/// - a run of letters (a word, or a run of Chinese, Japanese or Korean characters): one token
///   per 3 bytes of UTF-8, at least 1. Bailian's rule of thumb (research note §4.3, from the
///   DashScope metering documentation) is one token per Chinese character (3 bytes each) and,
///   for English, one token per 3 to 4 letters or per word: 3, the lower end, and never less
///   than a token per word;
/// - every other character but whitespace (digits, punctuation, symbols, emoji): one token per
///   2 bytes of UTF-8, at least 1. Qwen's pre-tokenizer makes every digit a token of its own
///   (`\p{N}` in `PATTERN`), ASCII punctuation is a token, and rarer symbols fall back towards
///   byte-level tokens (2 bytes a token is a guess, rounded up);
/// - whitespace: a single space before a character is free (it joins what follows, as in
///   Qwen's pattern); any other run (a line break, indentation, a space at the end) is one
///   token per 4 bytes, at least 1 (Qwen has tokens for runs of spaces).
///
/// Against Qwen's exact count it gives 1.2 to 2.3 times the tokens of English, Chinese and
/// mixed text (Qwen merges common words, Chinese ones too, into one token); it can fall short
/// on rare scripts and symbols, which Qwen spells in bytes.
pub fn approximate(text: &str) -> usize {
    let mut tokens = 0;
    // Bytes of the run of letters, and of the run of whitespace, the text is in.
    let mut word = 0usize;
    let mut space = 0usize;
    let mut lone_space = false;
    for c in text.chars() {
        if c.is_whitespace() {
            tokens += word.div_ceil(3);
            word = 0;
            lone_space = space == 0 && c == ' ';
            space += c.len_utf8();
            continue;
        }
        if !lone_space {
            tokens += space.div_ceil(4);
        }
        space = 0;
        lone_space = false;
        // A numeral letter (Ⅻ) is a number: Qwen's pattern takes \p{N} before \p{L}.
        if c.is_alphabetic() && !c.is_numeric() {
            word += c.len_utf8();
        } else {
            tokens += word.div_ceil(3) + c.len_utf8().div_ceil(2);
            word = 0;
        }
    }
    tokens + word.div_ceil(3) + space.div_ceil(4)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A vocabulary file: the 256 bytes (ranks 0..=255, in byte order), then `merged` in order.
    fn vocabulary(merged: &[&str]) -> Vec<u8> {
        use base64::Engine as _;
        let b64 = |t: &[u8]| base64::engine::general_purpose::STANDARD.encode(t);
        let mut file = String::new();
        for b in 0..=255u8 {
            file.push_str(&format!("{} {b}\n", b64(&[b])));
        }
        for (i, t) in merged.iter().enumerate() {
            file.push_str(&format!("{} {}\n", b64(t.as_bytes()), 256 + i));
        }
        file.into_bytes()
    }

    fn tiny() -> &'static QwenTokenizer {
        static TINY: once_cell::sync::Lazy<QwenTokenizer> = once_cell::sync::Lazy::new(|| {
            QwenTokenizer::from_bytes(&vocabulary(&[
                "he", "ll", "hell", "hello", " w", "or", " wor", " world", "  ", "\n\n", "中文", "ab", "abab",
            ]))
            .unwrap()
        });
        &TINY
    }

    fn id(t: &QwenTokenizer, s: &str) -> u32 {
        t.lookup(s.as_bytes()).unwrap()
    }

    #[test]
    fn the_splitters_patterns_are_the_sdks_without_its_look_ahead() {
        assert_eq!(PATTERN, format!(r"{WORDS}|\s+(?!\S)|{SPACES}"));
    }

    #[test]
    fn pieces_are_whole_tokens_or_merged_by_rank() {
        let t = tiny();
        assert_eq!(t.encode("hello world"), [id(t, "hello"), id(t, " world")]);
        // "hellos": not a token; merged "he" and "ll" first (lowest ranks), then "hell", "hello".
        assert_eq!(t.encode("hellos"), [id(t, "hello"), u32::from(b's')]);
        // Equal ranks: the leftmost pair first. "ababab" is one piece: "ab" three times, then
        // "abab" from the left, and the last "ab" alone.
        assert_eq!(t.encode("ababab"), [id(t, "abab"), id(t, "ab")]);
        assert_eq!(t.count("hello world"), 2);
        assert_eq!(t.len(), 256 + 13);
    }

    #[test]
    fn digits_are_one_token_each_and_spaces_split_as_the_look_ahead_says() {
        let t = tiny();
        assert_eq!(t.encode("2024"), [u32::from(b'2'), u32::from(b'0'), u32::from(b'2'), u32::from(b'4')]);
        // Three spaces before a word: "  " (the run less one) and " world".
        assert_eq!(t.encode("   world"), [id(t, "  "), id(t, " world")]);
        // At the end of the text the whole run is one piece.
        assert_eq!(t.encode("hello  "), [id(t, "hello"), id(t, "  ")]);
        assert_eq!(t.encode("hello\n\n"), [id(t, "hello"), id(t, "\n\n")]);
    }

    #[test]
    fn special_tokens_in_the_text_are_one_token_each() {
        let t = tiny();
        assert_eq!(
            t.encode("<|im_start|>hello<|im_end|><|endoftext|>"),
            [SPECIAL_START_ID + 1, id(t, "hello"), SPECIAL_START_ID + 2, SPECIAL_START_ID]
        );
        assert_eq!(t.encode("<|extra_0|><|extra_204|>"), [SPECIAL_START_ID + 3, SPECIAL_START_ID + 207]);
        // Not special: out of range, a leading zero, unclosed.
        for s in ["<|extra_205|>", "<|extra_07|>", "<|im_start|", "<|extra_|>", "<|extra_1000|>"] {
            assert!(t.encode(s).iter().all(|i| !SPECIAL_IDS.contains(i)), "{s}");
        }
        // The leftmost one, after a false start; the text before it ends its whitespace run.
        assert_eq!(t.encode("<|<|im_end|>"), [u32::from(b'<'), u32::from(b'|'), SPECIAL_START_ID + 2]);
        assert_eq!(t.encode("hello  <|endoftext|>"), [id(t, "hello"), id(t, "  "), SPECIAL_START_ID]);
    }

    #[test]
    fn text_is_put_in_nfc_first() {
        let t = &QwenTokenizer::from_bytes(&vocabulary(&["é"])).unwrap();
        // "e" + combining acute is "é" in NFC: one token.
        assert_eq!(t.encode("e\u{301}"), [id(t, "é")]);
        assert_eq!(t.count_checked("e\u{301}", &|| false).unwrap(), 1);
        assert_eq!(t.count("e\u{301}"), 1);
    }

    #[test]
    fn long_texts_are_chunked_as_the_sdk_chunks_them() {
        let t = tiny();
        // One line of 100,001 "a": chunks of 100,000 and 1 characters; each "a" is a token.
        let line = "a".repeat(CHUNK_CHARS + 1);
        assert_eq!(t.count(&line), CHUNK_CHARS + 1);
        // "ab" repeated across the 100,000-character cut: the cut separates an "ab" (both
        // halves ... "a" | "b" ...) only if it falls inside one; at an even offset it does not.
        let ab = "ab".repeat(CHUNK_CHARS / 2 + 1);
        assert_eq!(t.count(&ab), CHUNK_CHARS / 4 + 1);
        // An odd cut: "c" + "abab..." puts the cut between an "a" and its "b".
        let cab = format!("c{}", "ab".repeat(CHUNK_CHARS / 2));
        let mut chunks = Vec::new();
        sdk_chunks(&cab, |c| {
            chunks.push(c.len());
            Ok(())
        })
        .unwrap();
        assert_eq!(chunks, [CHUNK_CHARS, 1]);
        // Lines are joined while they fit: 3 lines of 40,000 make chunks of 2 lines and 1 line,
        // the second starting with its "\n".
        let lines = ["x".repeat(40_000), "y".repeat(39_999), "z".repeat(39_999)].join("\n");
        let mut chunks = Vec::new();
        sdk_chunks(&lines, |c| {
            chunks.push(c.to_string());
            Ok(())
        })
        .unwrap();
        assert_eq!(chunks.iter().map(String::len).collect::<Vec<_>>(), [80_000, 40_000]);
        assert!(chunks[1].starts_with("\nz"));
        assert_eq!(chunks.concat(), lines);
    }

    #[test]
    fn sdk_chunks_tile_the_text() {
        let text = format!("{}\n\n{}\n{}", "中".repeat(150_001), "b".repeat(10), "c".repeat(99_999));
        let mut chunks = Vec::new();
        sdk_chunks(&text, |c| {
            chunks.push(c.chars().count());
            Ok(())
        })
        .unwrap();
        // "中" x 100,000 | "中" x 50,001 | "\n" | "\nb..." | "\nc..." (100,000 alone).
        assert_eq!(chunks, [100_000, 50_001 + 1 + 11, 100_000]);
    }

    #[test]
    fn bad_vocabularies_are_refused_with_their_reason() {
        let refused = |content: &[u8]| match QwenTokenizer::from_bytes(content) {
            Err(e) => {
                assert_eq!(e.sqlstate(), "ZBV01");
                e.to_string()
            }
            Ok(_) => panic!("accepted"),
        };
        assert!(refused(b"").contains("no token for the byte 0x00"), "{}", refused(b""));
        // A line after the 256 bytes, and what is wrong with it.
        for (line, reason) in [
            (&b"!!! 300"[..], "entry 257 does not start with a token in base64"),
            (b"YQ== 300", "entry 257 repeats a token"),
            (b"YWE= 255", "entry 257 repeats rank 255"),
            (b"YWE= 151644", "entry 257 has rank 151644, which is a special token's id"),
            (b"YWE=", "entry 257 is not \"base64 rank\""),
        ] {
            let mut v = vocabulary(&[]);
            v.extend_from_slice(line);
            assert!(refused(&v).ends_with(reason), "{}", refused(&v));
        }
        let e = QwenTokenizer::load(Path::new("/nonexistent/qwen.tiktoken")).unwrap_err();
        assert!(e
            .to_string()
            .starts_with("Qwen's tokenizer vocabulary \"/nonexistent/qwen.tiktoken\" cannot be used: "));
        let e = QwenTokenizer::load(Path::new("/")).unwrap_err();
        assert!(e.to_string().ends_with("it is not a regular file"), "{e}");
    }

    #[test]
    fn a_cancel_stops_the_count() {
        let t = tiny();
        // Under the SDK's chunk size (a cut would split a " world").
        let text = " world".repeat(16_000);
        assert_eq!(t.count_checked(&text, &|| true).unwrap_err(), AiError::Interrupted);
        assert_eq!(t.count_checked(&text, &|| false).unwrap(), 16_000);
    }

    #[test]
    fn models_of_the_qwen_family_count_exactly() {
        for m in ["qwen-plus", "qwen3-max", "qwen-mt-plus", "qwen3-vl-plus", "qwq-plus", "qwen3-rerank"] {
            assert!(counts_exactly(m), "{m}");
        }
        for m in
            ["deepseek-v3", "text-embedding-v4", "glm-4.6", "deepseek-r1-distill-qwen-7b", "ops-qwen-turbo"]
        {
            assert!(!counts_exactly(m), "{m}");
        }
        let t = tiny();
        assert_eq!(count("qwen-plus", "hello world", Some(t)), TokenCount { tokens: 2, exact: true });
        assert_eq!(count("qwen-plus", "hello world", None), TokenCount { tokens: 4, exact: false });
        assert_eq!(count("deepseek-v3", "hello world", Some(t)), TokenCount { tokens: 4, exact: false });
    }

    #[test]
    fn the_approximation_follows_its_rules() {
        assert_eq!(approximate(""), 0);
        // Words: ceil(letters / 3); a lone space is free.
        assert_eq!(approximate("The quick brown fox"), 1 + 2 + 2 + 1);
        // Chinese: one per character.
        assert_eq!(approximate("你好，世界"), 2 + 2 + 2);
        // Digits and ASCII punctuation one each; a line break and its indentation (5 bytes) 2.
        assert_eq!(approximate("x = 2024;\n    y"), 1 + 1 + 4 + 1 + 2 + 1);
        assert_eq!(approximate("😀"), 2);
        // A space at the end is not free.
        assert_eq!(approximate("word "), 2 + 1);
    }

    /// Characters that exercise every alternative of the pattern.
    fn alphabet() -> impl Strategy<Value = String> {
        let chars = prop::sample::select(vec![
            ' ', ' ', '\t', '\n', '\r', '\u{a0}', '\u{3000}', '\u{2028}', '\u{b}', 'a', 'b', 'Z', 'é', '中',
            '文', 'я', '1', '٣', '²', 'Ⅻ', '\'', '\'', 's', 'S', 'ſ', 't', 'r', 'e', 'v', 'm', 'l', 'L', 'd',
            'D', '!', '.', '-', '<', '|', '>', '😀', '\u{301}', '\u{200b}', '$', '_',
        ]);
        prop::collection::vec(chars, 0..40).prop_map(|v| v.into_iter().collect())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(3000))]

        /// Our split is `PATTERN`'s, as fancy-regex (tiktoken's engine) finds it.
        #[test]
        fn the_split_is_the_patterns(text in alphabet()) {
            static REFERENCE: once_cell::sync::Lazy<fancy_regex::Regex> =
                once_cell::sync::Lazy::new(|| fancy_regex::Regex::new(PATTERN).unwrap());
            let t = tiny();
            let expected: Vec<&str> = REFERENCE.find_iter(&text).map(|m| m.unwrap().as_str()).collect();
            let mut ours = Vec::new();
            t.pieces(&text, &mut Ticker::new(|| false), |p, _| {
                ours.push(std::str::from_utf8(p).unwrap().to_string());
                Ok(())
            }).unwrap();
            prop_assert_eq!(ours, expected);
        }

        /// Any text, never a panic; counting and encoding agree.
        #[test]
        fn any_text_counts(text in any::<String>()) {
            let t = tiny();
            prop_assert_eq!(t.count(&text), t.encode(&text).len());
            let _ = approximate(&text);
        }
    }

    proptest! {
        // Each case builds a vocabulary.
        #![proptest_config(ProptestConfig::with_cases(300))]

        /// The heap merge gives tiktoken's merge, on vocabularies with many overlapping pairs.
        #[test]
        fn the_long_merge_is_tiktokens(piece in "[abc]{1,80}", merged in prop::collection::vec("[abc]{2,4}", 0..30)) {
            let mut seen = std::collections::HashSet::new();
            let merged: Vec<&str> = merged.iter().map(String::as_str).filter(|m| seen.insert(*m)).collect();
            let t = QwenTokenizer::from_bytes(&vocabulary(&merged)).unwrap();
            let mut scratch = Scratch::default();
            let short = t.merge_short(piece.as_bytes(), &mut scratch);
            let long = t.merge_long(piece.as_bytes(), &mut scratch, &mut Ticker::new(|| false)).unwrap();
            prop_assert_eq!(short, long);
        }
    }
}
