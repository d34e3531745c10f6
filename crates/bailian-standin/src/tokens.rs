//! The stand-in's tokenizer: a token is four characters of text, and a text of no characters
//! is still one token. Bailian counts with each model's own vocabulary; the stand-in needs
//! only a count that is deterministic, grows with the text, and that a test can predict, and
//! every endpoint counts with this one so their numbers agree.

/// Tokens of `text`: its characters divided by four, rounded up, at least one.
pub(crate) fn approx_tokens(text: &str) -> u64 {
    (text.chars().count() as u64).div_ceil(4).max(1)
}
