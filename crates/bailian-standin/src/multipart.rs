//! A small multipart/form-data reader (RFC 7578) for `POST /files`: the boundary from the
//! Content-Type, and each part's name, filename and bytes. It reads what the OpenAI SDK
//! (httpx), curl and pg_bailian send; nothing in the lock file reads multipart, and the
//! stand-in takes no new dependency for one form.
//!
//! A part's bytes are a slice of the request body, not a copy: an upload of hundreds of
//! megabytes is held once.

use bytes::Bytes;

/// One part of a form.
#[derive(Debug)]
pub(crate) struct Part {
    pub name: String,
    /// The `filename` of its Content-Disposition; a file part has one.
    pub filename: Option<String>,
    pub data: Bytes,
}

/// The boundary of a `multipart/form-data` Content-Type, unquoted; None for another type or
/// a type without a usable boundary (RFC 2046: 1 to 70 characters).
pub(crate) fn boundary(content_type: &str) -> Option<String> {
    let mut params = split_params(content_type);
    let kind = params.next()?;
    if !kind.trim().eq_ignore_ascii_case("multipart/form-data") {
        return None;
    }
    params
        .filter_map(|p| p.split_once('='))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("boundary"))
        .map(|(_, v)| unquote(v.trim()))
        .filter(|b| (1..=70).contains(&b.len()))
}

/// The parts of `body`, or what is wrong with it.
pub(crate) fn parse(body: &Bytes, boundary: &str) -> Result<Vec<Part>, String> {
    let delimiter = format!("--{boundary}");
    let delimiter = delimiter.as_bytes();
    // The first delimiter may follow a preamble; every later one follows CRLF.
    let Some(first) = find(body, delimiter, 0) else {
        return Err("the body has no multipart boundary".into());
    };
    let mut at = first + delimiter.len();
    let next_delimiter = [b"\r\n", delimiter].concat();
    let mut parts = Vec::new();
    loop {
        if body[at..].starts_with(b"--") {
            return Ok(parts);
        }
        // Transport padding (spaces, tabs) may follow a delimiter before its CRLF.
        while matches!(body.get(at), Some(b' ' | b'\t')) {
            at += 1;
        }
        if !body[at..].starts_with(b"\r\n") {
            return Err("a multipart boundary is not followed by a line break".into());
        }
        at += 2;
        let Some(headers_end) = find(body, b"\r\n\r\n", at) else {
            return Err("a multipart part has no end of headers".into());
        };
        let headers = std::str::from_utf8(&body[at..headers_end])
            .map_err(|_| "a multipart part's headers are not UTF-8".to_string())?;
        let data_start = headers_end + 4;
        let Some(data_end) = find(body, &next_delimiter, data_start) else {
            return Err("the body ends before its closing multipart boundary".into());
        };
        let (name, filename) = disposition(headers)?;
        parts.push(Part { name, filename, data: body.slice(data_start..data_end) });
        at = data_end + next_delimiter.len();
    }
}

/// `name` and `filename` from a part's Content-Disposition (`form-data; name="file";
/// filename="a.jsonl"`).
fn disposition(headers: &str) -> Result<(String, Option<String>), String> {
    let value = headers
        .split("\r\n")
        .filter_map(|line| line.split_once(':'))
        .find(|(name, _)| name.trim().eq_ignore_ascii_case("content-disposition"))
        .map(|(_, value)| value)
        .ok_or("a multipart part has no Content-Disposition")?;
    let mut name = None;
    let mut filename = None;
    for param in split_params(value).skip(1) {
        let Some((k, v)) = param.split_once('=') else { continue };
        match k.trim().to_ascii_lowercase().as_str() {
            "name" => name = Some(unquote(v.trim())),
            "filename" => filename = Some(unquote(v.trim())),
            _ => {}
        }
    }
    Ok((name.ok_or("a multipart part has no name")?, filename))
}

/// `value` split at the semicolons outside quoted strings.
fn split_params(value: &str) -> impl Iterator<Item = &str> {
    let mut pieces = Vec::new();
    let (mut start, mut quoted, mut escaped) = (0, false, false);
    for (i, c) in value.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            ';' if !quoted => {
                pieces.push(&value[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    pieces.push(&value[start..]);
    pieces.into_iter()
}

/// A quoted string's content (backslash escapes undone), or the token as it is. Browsers
/// and httpx percent-encode `"`, CR and LF in a filename instead (WHATWG); those are left
/// encoded, as a server receives them.
fn unquote(v: &str) -> String {
    let Some(inner) = v.strip_prefix('"').and_then(|v| v.strip_suffix('"')) else {
        return v.to_string();
    };
    let mut out = String::with_capacity(inner.len());
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => out.extend(chars.next()),
            c => out.push(c),
        }
    }
    out
}

/// Where `needle` first occurs in `haystack` at or after `from`.
fn find(haystack: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    let first = *needle.first()?;
    let mut at = from;
    while at + needle.len() <= haystack.len() {
        let next = haystack[at..=haystack.len() - needle.len()].iter().position(|b| *b == first)?;
        at += next;
        if haystack[at..].starts_with(needle) {
            return Some(at);
        }
        at += 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boundaries_from_content_types() {
        assert_eq!(boundary("multipart/form-data; boundary=abc").as_deref(), Some("abc"));
        assert_eq!(boundary("Multipart/Form-Data;boundary=\"a b;c\"").as_deref(), Some("a b;c"));
        assert_eq!(boundary("application/json"), None);
        assert_eq!(boundary("multipart/form-data"), None);
        assert_eq!(boundary(&format!("multipart/form-data; boundary={}", "x".repeat(71))), None);
    }

    #[test]
    fn parts_as_httpx_sends_them() {
        let body = Bytes::from_static(
            b"--b0\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\nbatch\r\n\
              --b0\r\nContent-Disposition: form-data; name=\"file\"; filename=\"in \\\"1\\\".jsonl\"\r\n\
              Content-Type: application/octet-stream\r\n\r\n{\"a\":1}--b0\r\n--b1\r\n--b0--\r\n",
        );
        let parts = parse(&body, "b0").unwrap();
        assert_eq!(parts.len(), 2);
        assert_eq!((parts[0].name.as_str(), &parts[0].data[..]), ("purpose", &b"batch"[..]));
        assert_eq!(parts[0].filename, None);
        assert_eq!(parts[1].filename.as_deref(), Some("in \"1\".jsonl"));
        assert_eq!(&parts[1].data[..], b"{\"a\":1}--b0\r\n--b1", "boundary-like bytes inside the data");
    }

    #[test]
    fn broken_bodies_are_refused() {
        for (body, why) in [
            (&b"no boundary here"[..], "no multipart boundary"),
            (b"--b\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\nx", "closing multipart boundary"),
            (b"--b\r\nContent-Disposition: form-data\r\n\r\nx\r\n--b--", "no name"),
            (b"--b\r\nX: y\r\n\r\nx\r\n--b--", "no Content-Disposition"),
            (b"--bx", "not followed by a line break"),
            (b"--b\r\nContent-Disposition: form-data; name=\"a\"", "no end of headers"),
        ] {
            let e = parse(&Bytes::copy_from_slice(body), "b").unwrap_err();
            assert!(e.contains(why), "{e}");
        }
        assert!(parse(&Bytes::from_static(b"preamble\r\n--b--"), "b").unwrap().is_empty());
    }
}
