//! `ai_chunk`: text split into pieces of at most `size` characters for embedding, cut at the
//! strongest boundary that fits (paragraph, then sentence, then word, then anywhere), with
//! consecutive pieces sharing about `overlap` characters that start at a word.
//!
//! Sizes are in characters, not bytes or tokens: what a user can count in SQL with
//! `length()`, and what stays meaningful for Chinese text, where a token is about a
//! character. Pieces are trimmed of surrounding whitespace, so they are substrings of the
//! input and never longer than `size`.

use crate::error::AiError;
use crate::limits::{self, Ticker, MAX_TEXT_BYTES};

/// How strong a cut before character `p` is: 3 paragraph, 2 sentence, 1 word, 0 none.
fn strengths<F: FnMut() -> bool>(chars: &[char], ticker: &mut Ticker<F>) -> Result<Vec<u8>, AiError> {
    let n = chars.len();
    let ends_sentence = |c: char| matches!(c, '.' | '!' | '?' | ';');
    let mut out = limits::vec_with_capacity::<u8>("ai_chunk's working copy", n + 1)?;
    out.resize(n + 1, 0);
    for p in 1..n {
        ticker.tick(1)?;
        let (before, after) = (chars[p - 1], chars[p]);
        let prev = if p >= 2 { chars[p - 2] } else { ' ' };
        let paragraph = before == '\n' && (after == '\n' || prev == '\n' || prev == '\r' && after == '\r');
        let sentence = before == '\n'
            || after == '\n'
            || matches!(before, '。' | '！' | '？' | '；' | '…')
            || ends_sentence(before) && after.is_whitespace()
            || before.is_whitespace() && ends_sentence(prev);
        let word = before.is_whitespace() || after.is_whitespace() || is_cjk(before) || is_cjk(after);
        out[p] = match (paragraph, sentence, word) {
            (true, _, _) => 3,
            (_, true, _) => 2,
            (_, _, true) => 1,
            _ => 0,
        };
    }
    out[n] = 3;
    Ok(out)
}

/// Ideographs and the CJK punctuation and full-width forms: text without spaces, where each
/// character may end a word.
fn is_cjk(c: char) -> bool {
    matches!(c as u32, 0x3000..=0x9FFF | 0xF900..=0xFAFF | 0xFF00..=0xFFEF | 0x20000..=0x2FFFF)
}

/// Longest text `ai_chunk` takes, in characters: its working copy is 5 bytes a character, so
/// the worst input (8M characters, up to 32 MB) costs 40 MB of work besides its pieces.
pub const MAX_CHARS: usize = 8 << 20;

/// Most text the pieces may hold together.
pub const MAX_OUTPUT_BYTES: usize = MAX_TEXT_BYTES;

/// The pieces of `text`; `size` ≥ 1 and `overlap` < `size` (the SQL function checks).
/// `interrupted` is asked as the work goes; when it says yes the work stops with
/// `AiError::Interrupted`. Scanning is linear in the text plus the pieces' total length.
pub fn chunks(
    text: &str,
    size: usize,
    overlap: usize,
    interrupted: impl FnMut() -> bool,
) -> Result<Vec<String>, AiError> {
    debug_assert!(size >= 1 && overlap < size);
    let mut ticker = Ticker::new(interrupted);
    // Counted before the working copy is made: a text of any length costs nothing to refuse.
    let n = if text.len() <= MAX_CHARS { text.len() } else { count_chars(text, &mut ticker)? };
    if n > MAX_CHARS {
        return Err(AiError::LimitExceeded {
            what: format!("ai_chunk's working copy of a text of {n} characters (at most {MAX_CHARS})"),
            needed: (n as u64).saturating_mul(5),
            limit_bytes: (MAX_CHARS as u64) * 5,
        });
    }
    let mut chars: Vec<char> = limits::vec_with_capacity("ai_chunk's working copy", n)?;
    chars.extend(text.chars());
    let n = chars.len();
    let cut = strengths(&chars, &mut ticker)?;
    let mut out = Vec::new();
    let mut bytes = 0usize;
    let mut start = 0;
    // The first non-space character after the piece before: the next piece must end past it,
    // or a boundary inside the overlap would make a piece that is nothing but the overlap.
    // It only moves forward, so finding it costs one pass over the text in all.
    let mut fresh = 0;
    while start < n {
        ticker.tick(size)?;
        let end = if n - start <= size {
            n
        } else {
            if fresh + 1 > start + size {
                // Nothing but the overlap and spaces fits: start again at the new text.
                start = fresh;
                continue;
            }
            let window = (start + 1).max(fresh + 1)..=start + size;
            let best = window.clone().map(|p| cut[p]).max().unwrap_or(0);
            window.rev().find(|&p| cut[p] == best).unwrap_or(start + size)
        };
        let piece: String = chars[start..end].iter().collect();
        let piece = piece.trim();
        if !piece.is_empty() {
            bytes += piece.len();
            if bytes > MAX_OUTPUT_BYTES {
                return Err(AiError::LimitExceeded {
                    what: "the pieces of ai_chunk (use a smaller overlap or a larger chunk_size)".into(),
                    needed: bytes as u64,
                    limit_bytes: MAX_OUTPUT_BYTES as u64,
                });
            }
            out.try_reserve(1).map_err(|_| AiError::OutOfMemory { what: "the pieces of ai_chunk".into() })?;
            out.push(piece.to_string());
        }
        if end == n {
            break;
        }
        fresh = fresh.max(end);
        while fresh < n && chars[fresh].is_whitespace() {
            fresh += 1;
            ticker.tick(1)?;
        }
        start = match end.checked_sub(overlap) {
            // The overlap starts at the first word boundary after `back`; when the last word
            // is longer than the overlap there is none before `end`, and no overlap.
            Some(back) if overlap > 0 && back > start => (back..end).find(|&p| cut[p] >= 1).unwrap_or(end),
            _ => end,
        };
    }
    Ok(out)
}

/// The characters of `text`, counted with interrupts served (a text of 1 GB takes a while).
fn count_chars<F: FnMut() -> bool>(text: &str, ticker: &mut Ticker<F>) -> Result<usize, AiError> {
    let mut n = 0;
    for part in text.as_bytes().chunks(limits::CHECK_EVERY) {
        ticker.tick(part.len())?;
        // A character starts at every byte that is not a continuation byte (10xxxxxx).
        n += part.iter().filter(|&&b| (b as i8) >= -0x40).count();
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn never() -> bool {
        false
    }

    fn len(s: &str) -> usize {
        s.chars().count()
    }

    #[test]
    fn short_text_is_one_piece_and_blank_text_none() {
        assert_eq!(chunks("  hello world \n", 512, 64, never).unwrap(), ["hello world"]);
        assert!(chunks("", 10, 0, never).unwrap().is_empty());
        assert!(chunks(" \n\n ", 10, 2, never).unwrap().is_empty());
    }

    #[test]
    fn paragraphs_first_then_sentences_then_words() {
        let text = "First paragraph here.\n\nSecond one is a bit longer. It has two sentences.";
        assert_eq!(
            chunks(text, 40, 0, never).unwrap(),
            ["First paragraph here.", "Second one is a bit longer.", "It has two sentences."]
        );
        let words = "alpha beta gamma delta epsilon zeta eta theta";
        let pieces = chunks(words, 12, 0, never).unwrap();
        assert_eq!(pieces, ["alpha beta", "gamma delta", "epsilon zeta", "eta theta"]);
        assert_eq!(chunks("abcdefghij", 4, 0, never).unwrap(), ["abcd", "efgh", "ij"]);
    }

    #[test]
    fn overlap_starts_at_a_word_and_repeats_the_tail() {
        let words = "one two three four five six seven eight nine ten";
        let pieces = chunks(words, 20, 10, never).unwrap();
        for p in &pieces {
            assert!(len(p) <= 20, "{p}");
        }
        for pair in pieces.windows(2) {
            let first_word = pair[1].split(' ').next().unwrap();
            assert!(pair[0].split(' ').any(|w| w == first_word), "{pair:?}");
        }
        assert_eq!(pieces.first().unwrap(), "one two three four");
        assert!(pieces.last().unwrap().ends_with("ten"));
    }

    #[test]
    fn overlap_never_starts_inside_a_word() {
        assert_eq!(chunks("aaa bbbbbbbbb ccc", 13, 5, never).unwrap(), ["aaa bbbbbbbbb", "ccc"]);
        assert_eq!(chunks("aaa bbb ccc ddd", 11, 5, never).unwrap(), ["aaa bbb ccc", "ccc ddd"]);
    }

    #[test]
    fn every_piece_brings_new_text() {
        let text = "ticket 7: name: user7; city: Berlin; this is about other, it was great";
        assert_eq!(
            chunks(text, 40, 10, never).unwrap(),
            ["ticket 7: name: user7; city: Berlin;", "Berlin; this is about other, it was", "it was great"]
        );
        let text = "ticket 103: name: user103; city: Berlin; this is about other, it was great";
        assert_eq!(chunks(text, 40, 10, never).unwrap()[1], "Berlin; this is about other, it was");
        let pieces = chunks("Alpha beta. Gamma delta epsilon.", 20, 6, never).unwrap();
        for pair in pieces.windows(2) {
            assert!(!pair[0].ends_with(pair[1].as_str()), "{pieces:?}");
        }
    }

    #[test]
    fn long_runs_of_spaces_never_give_an_overlap_alone() {
        let text = format!("alpha beta gamma{}delta epsilon", " ".repeat(100));
        assert_eq!(chunks(&text, 12, 6, never).unwrap(), ["alpha beta", "beta gamma", "delta", "epsilon"]);
        // A blank text of any length is one pass, not one pass per piece.
        assert!(chunks(&" ".repeat(1_000_000), 10, 5, never).unwrap().is_empty());
    }

    #[test]
    fn work_stops_when_interrupted_and_output_is_bounded() {
        let mut asked = 0;
        let e = chunks(&"word ".repeat(100_000), 10, 0, || {
            asked += 1;
            asked > 3
        })
        .unwrap_err();
        assert_eq!(e, AiError::Interrupted);
        let e = chunks(&"a ".repeat(2_000_000), 1_000, 998, never).unwrap_err();
        assert_eq!(e.sqlstate(), "54000");
        assert!(e.to_string().contains("more than the limit of 64MB"), "{e}");
        let e = chunks(&"é".repeat(MAX_CHARS + 1), 1_000, 0, never).unwrap_err();
        assert_eq!(e.sqlstate(), "54000");
        assert!(e.to_string().starts_with("ai_chunk's working copy of a text of 8388609 characters"), "{e}");
        assert_eq!(chunks(&"é".repeat(MAX_CHARS), 1 << 20, 0, never).unwrap().len(), 8);
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]
        #[test]
        fn pieces_stay_within_their_bounds(
            words in proptest::collection::vec("[a-z]{1,12}|[.!?]|\\n\\n|数据库。", 0..400),
            size in 1usize..200,
            overlap_share in 0usize..100,
        ) {
            let text = words.join(" ");
            let overlap = size * overlap_share / 100;
            let overlap = overlap.min(size - 1);
            match chunks(&text, size, overlap, never) {
                Ok(pieces) => {
                    let total: usize = pieces.iter().map(String::len).sum();
                    proptest::prop_assert!(total <= MAX_OUTPUT_BYTES);
                    for p in &pieces {
                        proptest::prop_assert!(p.chars().count() <= size);
                        proptest::prop_assert!(!p.is_empty());
                        proptest::prop_assert!(text.contains(p.as_str()));
                    }
                }
                Err(e) => proptest::prop_assert_eq!(e.sqlstate(), "54000"),
            }
        }
    }

    #[test]
    fn chinese_is_cut_at_sentence_ends_and_counted_in_characters() {
        let text = "这个数据库非常快。查询几乎是瞬间完成的。我们很满意。";
        let pieces = chunks(text, 10, 0, never).unwrap();
        assert_eq!(pieces, ["这个数据库非常快。", "查询几乎是瞬间完成的", "。我们很满意。"]);
        for p in chunks(&text.repeat(20), 50, 10, never).unwrap() {
            assert!(len(&p) <= 50);
        }
    }

    #[test]
    fn every_character_is_kept_in_order_without_overlap() {
        let text = "Lorem ipsum dolor sit amet, consectetur adipiscing elit.\n\nSed do eiusmod tempor. \
                    Incididunt ut labore et dolore magna aliqua! Ut enim ad minim veniam?";
        for size in [1, 3, 7, 16, 50, 200] {
            let joined: String = chunks(text, size, 0, never).unwrap().concat();
            let expected: String = text.chars().filter(|c| !c.is_whitespace()).collect();
            let got: String = joined.chars().filter(|c| !c.is_whitespace()).collect();
            assert_eq!(got, expected, "size {size}");
        }
    }

    #[test]
    fn always_ends_even_with_the_largest_overlap() {
        let text = "a b c d e f g h i j k l m n o p q r s t u v w x y z".repeat(5);
        for size in 1..12 {
            let pieces = chunks(&text, size, size - 1, never).unwrap();
            assert!(!pieces.is_empty());
            assert!(pieces.iter().all(|p| len(p) <= size));
        }
    }
}
