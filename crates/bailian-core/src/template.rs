//! Prompt templates: `{name}` placeholders, `{{` and `}}` for literal braces (the syntax of
//! Python's `str.format` and Rust's `format!`, which is what most users have met). Used by
//! `ai_prompt` (placeholders `{0}`, `{1}`, ...) and by the task prompts a DBA may override
//! (`{labels}`, `{max_words}`).

use std::borrow::Cow;

/// One piece of a parsed template.
#[derive(Debug, PartialEq)]
enum Piece<'a> {
    Text(Cow<'a, str>),
    Slot(&'a str),
}

/// The template's pieces, or what is wrong with it (a sentence that completes "the template
/// ...").
fn parse(template: &str) -> Result<Vec<Piece<'_>>, String> {
    let mut pieces = Vec::new();
    let mut text = String::new();
    let mut rest = template;
    let mut at = 0; // characters consumed, for messages
    while let Some(i) = rest.find(['{', '}']) {
        text.push_str(&rest[..i]);
        at += rest[..i].chars().count();
        let tail = &rest[i..];
        if tail.starts_with("{{") || tail.starts_with("}}") {
            text.push_str(&tail[..1]);
            rest = &tail[2..];
            at += 2;
            continue;
        }
        if tail.starts_with('}') {
            return Err(format!(
                "has an unmatched '}}' at character {}; write }}}} for a literal brace",
                at + 1
            ));
        }
        let close = tail.find('}');
        let name = close.map(|c| &tail[1..c]);
        match name {
            Some(name) if !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') => {
                if !text.is_empty() {
                    pieces.push(Piece::Text(Cow::Owned(std::mem::take(&mut text))));
                }
                pieces.push(Piece::Slot(name));
                let used = name.len() + 2;
                rest = &tail[used..];
                at += name.chars().count() + 2;
            }
            _ => {
                return Err(format!(
                    "has a '{{' at character {} that does not open a placeholder such as {{0}} or {{name}}; write {{{{ for a literal brace",
                    at + 1
                ))
            }
        }
    }
    text.push_str(rest);
    if !text.is_empty() {
        pieces.push(Piece::Text(Cow::Owned(text)));
    }
    Ok(pieces)
}

/// The names of the placeholders `template` uses, in order of first use.
pub fn placeholders(template: &str) -> Result<Vec<String>, String> {
    let mut names: Vec<String> = Vec::new();
    for piece in parse(template)? {
        if let Piece::Slot(name) = piece {
            if !names.iter().any(|n| n == name) {
                names.push(name.to_string());
            }
        }
    }
    Ok(names)
}

/// `template` with each placeholder replaced by `value(name)`; an error names the first
/// placeholder `value` does not know.
pub fn render<'v>(template: &str, value: impl Fn(&str) -> Option<Cow<'v, str>>) -> Result<String, String> {
    let mut out = String::with_capacity(template.len());
    for piece in parse(template)? {
        match piece {
            Piece::Text(t) => out.push_str(&t),
            Piece::Slot(name) => match value(name) {
                Some(v) => out.push_str(&v),
                None => return Err(format!("uses {{{name}}}, which has no value")),
            },
        }
    }
    Ok(out)
}

/// `ai_prompt(template, VARIADIC args)`: `{0}` is the first argument. A NULL argument is
/// empty text, as in `format()` and `concat()`.
pub fn positional(template: &str, args: &[Option<String>]) -> Result<String, String> {
    render(template, |name| {
        let i: usize = name.parse().ok()?;
        args.get(i).map(|a| Cow::Borrowed(a.as_deref().unwrap_or("")))
    })
    .map_err(|e| {
        let given = match args.len() {
            0 => "no arguments were given".to_string(),
            1 => "1 argument was given ({0})".to_string(),
            n => format!("{n} arguments were given ({{0}} to {{{}}})", n - 1),
        };
        if e.starts_with("uses") {
            format!("{e}: {given}")
        } else {
            e
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(v: &[&str]) -> Vec<Option<String>> {
        v.iter().map(|s| Some(s.to_string())).collect()
    }

    #[test]
    fn placeholders_and_literal_braces() {
        assert_eq!(positional("{0} and {1}, {0}!", &args(&["a", "b"])).unwrap(), "a and b, a!");
        assert_eq!(positional("{{0}} is {0}", &args(&["x"])).unwrap(), "{0} is x");
        assert_eq!(positional("json: {{\"k\": {0}}}", &args(&["1"])).unwrap(), "json: {\"k\": 1}");
        assert_eq!(positional("no slots", &[]).unwrap(), "no slots");
        assert_eq!(positional("", &[]).unwrap(), "");
        assert_eq!(positional("{0}|{1}", &[None, Some("b".into())]).unwrap(), "|b");
        assert_eq!(positional("数据{0}库", &args(&["é"])).unwrap(), "数据é库");
    }

    #[test]
    fn mistakes_say_where_and_what_to_write() {
        let e = positional("{2}", &args(&["a", "b"])).unwrap_err();
        assert_eq!(e, "uses {2}, which has no value: 2 arguments were given ({0} to {1})");
        let e = positional("{0}", &[]).unwrap_err();
        assert!(e.ends_with("no arguments were given"), "{e}");
        let e = positional("a } b", &[]).unwrap_err();
        assert_eq!(e, "has an unmatched '}' at character 3; write }} for a literal brace");
        let e = positional("é { x", &[]).unwrap_err();
        assert!(e.starts_with("has a '{' at character 3"), "{e}");
        assert!(positional("{0", &args(&["a"])).is_err());
        assert!(positional("{ 0}", &args(&["a"])).is_err());
        assert!(positional("{}", &args(&["a"])).is_err());
        assert!(positional("{name}", &args(&["a"])).unwrap_err().starts_with("uses {name}"));
    }

    #[test]
    fn named_placeholders() {
        assert_eq!(placeholders("{labels} then {max_words} and {labels}").unwrap(), ["labels", "max_words"]);
        let out =
            render("Pick one of {labels}.", |n| (n == "labels").then_some(Cow::Borrowed("a, b"))).unwrap();
        assert_eq!(out, "Pick one of a, b.");
    }
}
