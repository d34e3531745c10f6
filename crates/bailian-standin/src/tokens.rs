//! The stand-in's tokenizer: a token is four characters of text, and a text of no characters
//! is still one token. Bailian counts with each model's own vocabulary; the stand-in needs
//! only a count that is deterministic, grows with the text, and that a test can predict, and
//! every endpoint counts with this one so their numbers agree.

/// Tokens of `text`: its characters divided by four, rounded up, at least one.
pub(crate) fn approx_tokens(text: &str) -> u64 {
    (text.chars().count() as u64).div_ceil(4).max(1)
}

/// The tokens of `text` themselves, as many as [`approx_tokens`] counts: runs of four
/// characters (the last may be shorter), or one empty token for an empty text.
pub(crate) fn pieces(text: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut start = 0;
    for (n, (i, _)) in text.char_indices().enumerate() {
        if n > 0 && n % 4 == 0 {
            out.push(&text[start..i]);
            start = i;
        }
    }
    out.push(&text[start..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pieces_are_as_many_as_the_count() {
        for text in ["", "a", "abcd", "abcde", "一二三四五六七八九", "Echo from qwen-plus: hi"] {
            let p = pieces(text);
            assert_eq!(p.len() as u64, approx_tokens(text), "{text:?}");
            assert_eq!(p.concat(), text);
        }
        assert_eq!(pieces("abcdefghi"), vec!["abcd", "efgh", "i"]);
    }
}
