//! Prompt templates: `{name}` placeholders, `{{` and `}}` for literal braces (the syntax of
//! Python's `str.format` and Rust's `format!`, which is what most users have met). Used by
//! `ai_prompt` (placeholders `{0}`, `{1}`, ...) and by the task prompts a DBA may override
//! (`{labels}`, `{max_words}`).

use crate::limits::{self, Ticker, MAX_TEXT_BYTES};
use crate::AiError;
use std::borrow::Cow;

/// One piece of a parsed template, borrowed from it: parsing allocates nothing, however many
/// pieces a template has.
#[derive(Debug, PartialEq)]
enum Piece<'a> {
    Text(&'a str),
    Slot(&'a str),
}

/// What went wrong with a template: a mistake in it (a sentence that completes "the template
/// ..."), or an error of the work itself (a limit passed, a cancel).
#[derive(Debug, PartialEq)]
pub enum TemplateError {
    Mistake(String),
    Stopped(AiError),
}

impl From<AiError> for TemplateError {
    fn from(e: AiError) -> Self {
        TemplateError::Stopped(e)
    }
}

/// Calls `each` with the template's pieces in order; a mistake in the template stops the walk.
/// `{{` and `}}` come as one-brace text pieces. `ticker` is told of the work as it goes.
fn walk<'a, F: FnMut() -> bool>(
    template: &'a str,
    ticker: &mut Ticker<F>,
    mut each: impl FnMut(Piece<'a>) -> Result<(), TemplateError>,
) -> Result<(), TemplateError> {
    let mut rest = template;
    let mut at = 0; // characters consumed, for messages
    while let Some(i) = rest.find(['{', '}']) {
        ticker.tick(i + 1)?;
        if i > 0 {
            each(Piece::Text(&rest[..i]))?;
            at += rest[..i].chars().count();
        }
        let tail = &rest[i..];
        if tail.starts_with("{{") || tail.starts_with("}}") {
            each(Piece::Text(&tail[..1]))?;
            rest = &tail[2..];
            at += 2;
            continue;
        }
        if tail.starts_with('}') {
            return Err(TemplateError::Mistake(format!(
                "has an unmatched '}}' at character {}; write }}}} for a literal brace",
                at + 1
            )));
        }
        let close = tail.find('}');
        let name = close.map(|c| &tail[1..c]);
        match name {
            Some(name) if !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') => {
                each(Piece::Slot(name))?;
                let used = name.len() + 2;
                rest = &tail[used..];
                at += name.chars().count() + 2;
            }
            _ => {
                return Err(TemplateError::Mistake(format!(
                    "has a '{{' at character {} that does not open a placeholder such as {{0}} or {{name}}; write {{{{ for a literal brace",
                    at + 1
                )))
            }
        }
    }
    if !rest.is_empty() {
        each(Piece::Text(rest))?;
    }
    Ok(())
}

/// The names of the placeholders `template` uses, in order of first use.
pub fn placeholders(template: &str) -> Result<Vec<String>, String> {
    let mut names: Vec<String> = Vec::new();
    let mut ticker = Ticker::new(|| false);
    let walked = walk(template, &mut ticker, |piece| {
        if let Piece::Slot(name) = piece {
            if !names.iter().any(|n| n == name) {
                names.push(name.to_string());
            }
        }
        Ok(())
    });
    match walked {
        Ok(()) => Ok(names),
        Err(TemplateError::Mistake(m)) => Err(m),
        Err(TemplateError::Stopped(e)) => Err(e.to_string()),
    }
}

/// The size in bytes of `template` rendered with `value`, computed without building it (u128:
/// a count of placeholders times a value's size cannot wrap around).
fn rendered_size<'v, F: FnMut() -> bool>(
    template: &str,
    value: &impl Fn(&str) -> Option<Cow<'v, str>>,
    ticker: &mut Ticker<F>,
) -> Result<u128, TemplateError> {
    let mut size: u128 = 0;
    walk(template, ticker, |piece| {
        size += match piece {
            Piece::Text(t) => t.len() as u128,
            Piece::Slot(name) => match value(name) {
                Some(v) => v.len() as u128,
                None => return Err(TemplateError::Mistake(format!("uses {{{name}}}, which has no value"))),
            },
        };
        Ok(())
    })?;
    Ok(size)
}

/// `template` with each placeholder replaced by `value(name)`. The result's size is computed
/// first: past `MAX_TEXT_BYTES` it is refused (54000) before anything is built, and its memory
/// is reserved fallibly. `interrupted` is asked as the work goes; `what` names the result in
/// messages.
pub fn render<'v>(
    what: &str,
    template: &str,
    value: impl Fn(&str) -> Option<Cow<'v, str>>,
    interrupted: impl FnMut() -> bool,
) -> Result<String, TemplateError> {
    let mut ticker = Ticker::new(interrupted);
    let size = rendered_size(template, &value, &mut ticker)?;
    limits::check(what, size, MAX_TEXT_BYTES)?;
    let mut out = limits::string_with_capacity(what, size as usize)?;
    walk(template, &mut ticker, |piece| {
        match piece {
            Piece::Text(t) => out.push_str(t),
            Piece::Slot(name) => {
                out.push_str(&value(name).unwrap_or_default());
            }
        }
        Ok(())
    })?;
    Ok(out)
}

/// `ai_prompt(template, VARIADIC args)`: `{0}` is the first argument. A NULL argument is
/// empty text, as in `format()` and `concat()`.
pub fn positional(
    template: &str,
    args: &[Option<&str>],
    interrupted: impl FnMut() -> bool,
) -> Result<String, TemplateError> {
    let value = |name: &str| {
        let i: usize = name.parse().ok()?;
        args.get(i).map(|a| Cow::Borrowed(a.unwrap_or("")))
    };
    render("ai_prompt's result", template, value, interrupted).map_err(|e| match e {
        TemplateError::Mistake(e) if e.starts_with("uses") => {
            let given = match args.len() {
                0 => "no arguments were given".to_string(),
                1 => "1 argument was given ({0})".to_string(),
                n => format!("{n} arguments were given ({{0}} to {{{}}})", n - 1),
            };
            TemplateError::Mistake(format!("{e}: {given}"))
        }
        e => e,
    })
}

/// `template` as a template for `positional` that gives what `replace(template, '{0}', x)`
/// gives: every `{0}` stays a placeholder and every other brace becomes a literal one
/// (`ai_gen_column`'s templates are plain text with `{0}` where the source goes).
pub fn from_plain(template: &str) -> String {
    let mut out = String::with_capacity(template.len() + 16);
    let mut rest = template;
    while let Some(i) = rest.find(['{', '}']) {
        out.push_str(&rest[..i]);
        let tail = &rest[i..];
        if let Some(after) = tail.strip_prefix("{0}") {
            out.push_str("{0}");
            rest = after;
        } else {
            out.push_str(if tail.starts_with('{') { "{{" } else { "}}" });
            rest = &tail[1..];
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn args<'a>(v: &[&'a str]) -> Vec<Option<&'a str>> {
        v.iter().map(|s| Some(*s)).collect()
    }

    fn positional_ok(template: &str, a: &[Option<&str>]) -> Result<String, String> {
        positional(template, a, || false).map_err(|e| match e {
            TemplateError::Mistake(m) => m,
            TemplateError::Stopped(e) => e.to_string(),
        })
    }

    #[test]
    fn placeholders_and_literal_braces() {
        assert_eq!(positional_ok("{0} and {1}, {0}!", &args(&["a", "b"])).unwrap(), "a and b, a!");
        assert_eq!(positional_ok("{{0}} is {0}", &args(&["x"])).unwrap(), "{0} is x");
        assert_eq!(positional_ok("json: {{\"k\": {0}}}", &args(&["1"])).unwrap(), "json: {\"k\": 1}");
        assert_eq!(positional_ok("no slots", &[]).unwrap(), "no slots");
        assert_eq!(positional_ok("", &[]).unwrap(), "");
        assert_eq!(positional_ok("{0}|{1}", &[None, Some("b")]).unwrap(), "|b");
        assert_eq!(positional_ok("数据{0}库", &args(&["é"])).unwrap(), "数据é库");
    }

    #[test]
    fn mistakes_say_where_and_what_to_write() {
        let e = positional_ok("{2}", &args(&["a", "b"])).unwrap_err();
        assert_eq!(e, "uses {2}, which has no value: 2 arguments were given ({0} to {1})");
        let e = positional_ok("{0}", &[]).unwrap_err();
        assert!(e.ends_with("no arguments were given"), "{e}");
        let e = positional_ok("a } b", &[]).unwrap_err();
        assert_eq!(e, "has an unmatched '}' at character 3; write }} for a literal brace");
        let e = positional_ok("é { x", &[]).unwrap_err();
        assert!(e.starts_with("has a '{' at character 3"), "{e}");
        assert!(positional_ok("{0", &args(&["a"])).is_err());
        assert!(positional_ok("{ 0}", &args(&["a"])).is_err());
        assert!(positional_ok("{}", &args(&["a"])).is_err());
        assert!(positional_ok("{name}", &args(&["a"])).unwrap_err().starts_with("uses {name}"));
    }

    #[test]
    fn named_placeholders() {
        assert_eq!(placeholders("{labels} then {max_words} and {labels}").unwrap(), ["labels", "max_words"]);
        let out = render(
            "a prompt",
            "Pick one of {labels}.",
            |n| (n == "labels").then_some(Cow::Borrowed("a, b")),
            || false,
        )
        .unwrap();
        assert_eq!(out, "Pick one of a, b.");
    }

    #[test]
    fn a_result_past_the_limit_is_refused_before_it_is_built() {
        // 30 placeholders of a 100 MB argument would be 3 GB: refused from the sizes alone.
        let big = "x".repeat(100 << 20);
        let e = positional("{0}".repeat(30).as_str(), &[Some(big.as_str())], || false).unwrap_err();
        let TemplateError::Stopped(e) = e else { panic!("{e:?}") };
        assert_eq!(e.sqlstate(), "54000");
        assert_eq!(
            e.to_string(),
            "ai_prompt's result would need 3145728000 bytes, more than the limit of 64MB"
        );
        // Exactly the limit is built.
        let part = "y".repeat(MAX_TEXT_BYTES / 4);
        assert_eq!(
            positional("{0}{0}{0}{0}", &[Some(part.as_str())], || false).unwrap().len(),
            MAX_TEXT_BYTES
        );
        let e = positional("{0}{0}{0}{0}!", &[Some(part.as_str())], || false).unwrap_err();
        assert!(matches!(e, TemplateError::Stopped(AiError::LimitExceeded { .. })), "{e:?}");
    }

    #[test]
    fn a_long_template_stops_when_interrupted() {
        let template = "{0}".repeat(1 << 20);
        let mut asked = 0;
        let e = positional(&template, &args(&["x"]), || {
            asked += 1;
            asked > 3
        })
        .unwrap_err();
        assert_eq!(e, TemplateError::Stopped(AiError::Interrupted));
    }

    #[test]
    fn plain_templates_keep_their_braces() {
        for (plain, x) in
            [("a {0} b", "X"), ("{{0}", "X"), ("{0}}", "X"), ("{\"k\": {0}} {1} }{", "v"), ("", "v")]
        {
            let t = from_plain(plain);
            assert_eq!(positional_ok(&t, &args(&[x])).unwrap(), plain.replace("{0}", x), "{plain}");
        }
    }

    proptest! {
        #[test]
        fn the_result_is_exactly_the_computed_size(
            pieces in proptest::collection::vec(("[a-z{}]{0,20}", 0usize..3), 0..40),
            values in proptest::collection::vec("\\PC{0,30}", 3),
        ) {
            let plain: String = pieces.iter().map(|(t, slot)| format!("{t}{}", if *slot == 0 { "{0}" } else { "" })).collect();
            let template = from_plain(&plain);
            let a: Vec<Option<&str>> = values.iter().map(|v| Some(v.as_str())).collect();
            let value = |name: &str| name.parse::<usize>().ok().and_then(|i| a.get(i)).map(|v| Cow::Borrowed(v.unwrap_or("")));
            let size = rendered_size(&template, &value, &mut Ticker::new(|| false)).unwrap();
            let out = positional(&template, &a, || false).unwrap();
            prop_assert_eq!(out.len() as u128, size);
            prop_assert_eq!(out, plain.replace("{0}", &values[0]));
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn any_template_is_refused_or_rendered_within_the_limit(
            template in "[a-z{}0-9]{0,60}",
            value_len in 0usize..(1 << 22),
        ) {
            let value = "v".repeat(value_len);
            match positional(&template, &[Some(value.as_str())], || false) {
                Ok(out) => prop_assert!(out.len() <= MAX_TEXT_BYTES),
                Err(TemplateError::Mistake(_)) => {}
                Err(TemplateError::Stopped(e)) => prop_assert_eq!(e.sqlstate(), "54000"),
            }
        }
    }
}
