//! `ai_chunk`: text split into pieces of at most `size` characters for embedding, cut at the
//! strongest boundary that fits (paragraph, then sentence, then word, then anywhere), with
//! consecutive pieces sharing about `overlap` characters that start at a word.
//!
//! Sizes are in characters, not bytes or tokens: what a user can count in SQL with
//! `length()`, and what stays meaningful for Chinese text, where a token is about a
//! character. Pieces are trimmed of surrounding whitespace, so they are substrings of the
//! input and never longer than `size`.

/// How strong a cut before character `p` is: 3 paragraph, 2 sentence, 1 word, 0 none.
fn strengths(chars: &[char]) -> Vec<u8> {
    let n = chars.len();
    let ends_sentence = |c: char| matches!(c, '.' | '!' | '?' | ';');
    let mut out = vec![0u8; n + 1];
    for p in 1..n {
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
    out
}

/// Ideographs and the CJK punctuation and full-width forms: text without spaces, where each
/// character may end a word.
fn is_cjk(c: char) -> bool {
    matches!(c as u32, 0x3000..=0x9FFF | 0xF900..=0xFAFF | 0xFF00..=0xFFEF | 0x20000..=0x2FFFF)
}

/// The pieces of `text`; `size` ≥ 1 and `overlap` < `size` (the SQL function checks).
pub fn chunks(text: &str, size: usize, overlap: usize) -> Vec<String> {
    debug_assert!(size >= 1 && overlap < size);
    let chars: Vec<char> = text.chars().collect();
    let n = chars.len();
    let cut = strengths(&chars);
    let mut out = Vec::new();
    let mut start = 0;
    // Where the piece before ended: the next one must end past the first character after it,
    // or a boundary inside the overlap would make a piece that is nothing but the overlap.
    let mut done = 0;
    while start < n {
        let end = if n - start <= size {
            n
        } else {
            let fresh = (done..n).find(|&p| !chars[p].is_whitespace()).unwrap_or(n);
            let window = (start + 1).max(fresh + 1)..=start + size;
            let best = window.clone().map(|p| cut[p]).max().unwrap_or(0);
            window.rev().find(|&p| cut[p] == best).unwrap_or(start + size)
        };
        let piece: String = chars[start..end].iter().collect();
        let piece = piece.trim();
        if !piece.is_empty() {
            out.push(piece.to_string());
        }
        if end == n {
            break;
        }
        done = end;
        start = match end.checked_sub(overlap) {
            // The overlap starts at the first word boundary after `back`; when the last word
            // is longer than the overlap there is none before `end`, and no overlap.
            Some(back) if overlap > 0 && back > start => (back..end).find(|&p| cut[p] >= 1).unwrap_or(end),
            _ => end,
        };
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn len(s: &str) -> usize {
        s.chars().count()
    }

    #[test]
    fn short_text_is_one_piece_and_blank_text_none() {
        assert_eq!(chunks("  hello world \n", 512, 64), ["hello world"]);
        assert!(chunks("", 10, 0).is_empty());
        assert!(chunks(" \n\n ", 10, 2).is_empty());
    }

    #[test]
    fn paragraphs_first_then_sentences_then_words() {
        let text = "First paragraph here.\n\nSecond one is a bit longer. It has two sentences.";
        assert_eq!(
            chunks(text, 40, 0),
            ["First paragraph here.", "Second one is a bit longer.", "It has two sentences."]
        );
        let words = "alpha beta gamma delta epsilon zeta eta theta";
        let pieces = chunks(words, 12, 0);
        assert_eq!(pieces, ["alpha beta", "gamma delta", "epsilon zeta", "eta theta"]);
        assert_eq!(chunks("abcdefghij", 4, 0), ["abcd", "efgh", "ij"]);
    }

    #[test]
    fn overlap_starts_at_a_word_and_repeats_the_tail() {
        let words = "one two three four five six seven eight nine ten";
        let pieces = chunks(words, 20, 10);
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
        assert_eq!(chunks("aaa bbbbbbbbb ccc", 13, 5), ["aaa bbbbbbbbb", "ccc"]);
        assert_eq!(chunks("aaa bbb ccc ddd", 11, 5), ["aaa bbb ccc", "ccc ddd"]);
    }

    #[test]
    fn every_piece_brings_new_text() {
        let text = "ticket 7: name: user7; city: Berlin; this is about other, it was great";
        assert_eq!(
            chunks(text, 40, 10),
            ["ticket 7: name: user7; city: Berlin;", "Berlin; this is about other, it was", "it was great"]
        );
        let text = "ticket 103: name: user103; city: Berlin; this is about other, it was great";
        assert_eq!(chunks(text, 40, 10)[1], "Berlin; this is about other, it was");
        let pieces = chunks("Alpha beta. Gamma delta epsilon.", 20, 6);
        for pair in pieces.windows(2) {
            assert!(!pair[0].ends_with(pair[1].as_str()), "{pieces:?}");
        }
    }

    #[test]
    fn chinese_is_cut_at_sentence_ends_and_counted_in_characters() {
        let text = "这个数据库非常快。查询几乎是瞬间完成的。我们很满意。";
        let pieces = chunks(text, 10, 0);
        assert_eq!(pieces, ["这个数据库非常快。", "查询几乎是瞬间完成的", "。我们很满意。"]);
        for p in chunks(&text.repeat(20), 50, 10) {
            assert!(len(&p) <= 50);
        }
    }

    #[test]
    fn every_character_is_kept_in_order_without_overlap() {
        let text = "Lorem ipsum dolor sit amet, consectetur adipiscing elit.\n\nSed do eiusmod tempor. \
                    Incididunt ut labore et dolore magna aliqua! Ut enim ad minim veniam?";
        for size in [1, 3, 7, 16, 50, 200] {
            let joined: String = chunks(text, size, 0).concat();
            let expected: String = text.chars().filter(|c| !c.is_whitespace()).collect();
            let got: String = joined.chars().filter(|c| !c.is_whitespace()).collect();
            assert_eq!(got, expected, "size {size}");
        }
    }

    #[test]
    fn always_ends_even_with_the_largest_overlap() {
        let text = "a b c d e f g h i j k l m n o p q r s t u v w x y z".repeat(5);
        for size in 1..12 {
            let pieces = chunks(&text, size, size - 1);
            assert!(!pieces.is_empty());
            assert!(pieces.iter().all(|p| len(p) <= size));
        }
    }
}
