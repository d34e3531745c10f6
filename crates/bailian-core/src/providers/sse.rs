//! Server-sent events (the WHATWG EventSource format), decoded incrementally from the chunks
//! a response body arrives in: an event ends at a blank line, `data:` lines join with `\n`,
//! comments (`:`) and other fields (`event:`, `id:`, `retry:`) are ignored: both providers
//! tell an error by the data's shape, not by the event's name.

/// One event.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Event {
    pub data: String,
}

/// Bytes in, events out. Holds at most one incomplete line plus the event being built.
#[derive(Default)]
pub struct Decoder {
    line: Vec<u8>,
    event: Event,
    has_data: bool,
}

impl Decoder {
    /// Decodes `chunk`, appending every event it completes to `out`.
    pub fn feed(&mut self, chunk: &[u8], out: &mut Vec<Event>) {
        for &b in chunk {
            if b == b'\n' {
                let mut line = std::mem::take(&mut self.line);
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
                self.line_done(&line, out);
                // The buffer goes back, keeping its capacity for the next line.
                line.clear();
                self.line = line;
            } else {
                self.line.push(b);
            }
        }
    }

    /// The end of the body: a last event without its blank line still counts (the spec
    /// drops it, but a provider that closes right after its last `data:` meant it).
    pub fn finish(mut self, out: &mut Vec<Event>) {
        if !self.line.is_empty() {
            let line = std::mem::take(&mut self.line);
            self.line_done(&line, out);
        }
        self.line_done(b"", out);
    }

    fn line_done(&mut self, line: &[u8], out: &mut Vec<Event>) {
        if line.is_empty() {
            if self.has_data {
                out.push(std::mem::take(&mut self.event));
            }
            self.event = Event::default();
            self.has_data = false;
            return;
        }
        if line[0] == b':' {
            return;
        }
        let (field, value) = match line.iter().position(|b| *b == b':') {
            Some(at) => {
                let v = &line[at + 1..];
                (&line[..at], v.strip_prefix(b" ").unwrap_or(v))
            }
            None => (line, &b""[..]),
        };
        if field == b"data" {
            if self.has_data {
                self.event.data.push('\n');
            }
            self.event.data.push_str(&String::from_utf8_lossy(value));
            self.has_data = true;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(chunks: &[&[u8]]) -> Vec<Event> {
        let mut d = Decoder::default();
        let mut out = Vec::new();
        for c in chunks {
            d.feed(c, &mut out);
        }
        d.finish(&mut out);
        out
    }

    #[test]
    fn events_across_chunk_boundaries() {
        let all: &[u8] =
            b"data: {\"a\":1}\n\n: keep-alive\n\nevent: error\r\ndata: x\r\ndata: y\r\n\r\ndata:[DONE]\n\n";
        let expected = vec![
            Event { data: "{\"a\":1}".into() },
            Event { data: "x\ny".into() },
            Event { data: "[DONE]".into() },
        ];
        assert_eq!(decode(&[all]), expected);
        for split in 0..all.len() {
            assert_eq!(decode(&[&all[..split], &all[split..]]), expected, "split at {split}");
        }
        let bytewise: Vec<&[u8]> = all.chunks(1).collect();
        assert_eq!(decode(&bytewise), expected);
    }

    #[test]
    fn a_last_event_without_blank_line_counts() {
        assert_eq!(decode(&[b"data: tail"]), vec![Event { data: "tail".into() }]);
        assert!(decode(&[b"id: 3\n\n"]).is_empty());
    }
}
