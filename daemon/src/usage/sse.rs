//! A streaming splitter for server-sent events (the WHATWG `text/event-stream`
//! framing): bytes go in as they arrive, in chunks cut anywhere, and whole
//! events come out. Only `event:` and `data:` fields matter for metering;
//! comments (`:`), `id:` and `retry:` are skipped.

/// One dispatched event: its `event:` name (empty when none was given) and
/// its `data:` lines joined with '\n'.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Event {
    pub name: String,
    pub data: Vec<u8>,
}

#[derive(Debug)]
pub struct SseSplitter {
    /// The bytes of the current line not yet ended by a newline.
    line: Vec<u8>,
    event: Event,
    /// The last byte fed was '\r': a '\n' right after it ends no new line.
    after_cr: bool,
    /// Lines longer than this are dropped (and counted), so a hostile or
    /// broken stream cannot grow memory without bound.
    max_event: usize,
    oversized: bool,
    /// Events dropped because they exceeded `max_event`.
    pub dropped: u64,
}

impl SseSplitter {
    pub fn new(max_event: usize) -> SseSplitter {
        SseSplitter {
            line: Vec::new(),
            event: Event::default(),
            after_cr: false,
            max_event,
            oversized: false,
            dropped: 0,
        }
    }

    /// Feeds `chunk`, calling `on_event` for every event it completes.
    pub fn feed(&mut self, mut chunk: &[u8], on_event: &mut dyn FnMut(Event)) {
        if chunk.is_empty() {
            return;
        }
        if self.after_cr && chunk.first() == Some(&b'\n') {
            chunk = &chunk[1..];
        }
        self.after_cr = false;
        while let Some(at) = memchr::memchr2(b'\n', b'\r', chunk) {
            self.push(&chunk[..at]);
            self.end_line(on_event);
            let crlf = chunk[at] == b'\r' && chunk.get(at + 1) == Some(&b'\n');
            if chunk[at] == b'\r' && at + 1 == chunk.len() {
                self.after_cr = true;
            }
            chunk = &chunk[at + if crlf { 2 } else { 1 }..];
        }
        self.push(chunk);
    }

    /// The stream ended: an event not closed by a blank line is still
    /// dispatched (some servers end the last event with a single newline).
    pub fn finish(&mut self, on_event: &mut dyn FnMut(Event)) {
        if !self.line.is_empty() {
            self.end_line(on_event);
        }
        self.end_line(on_event);
    }

    fn push(&mut self, bytes: &[u8]) {
        if self.oversized {
            return;
        }
        if self.line.len() + self.event.data.len() + bytes.len() > self.max_event {
            self.oversized = true;
            self.line.clear();
            return;
        }
        self.line.extend_from_slice(bytes);
    }

    fn end_line(&mut self, on_event: &mut dyn FnMut(Event)) {
        if self.line.is_empty() && !self.oversized {
            // A blank line dispatches the event, if it has data.
            let event = std::mem::take(&mut self.event);
            if !event.data.is_empty() || !event.name.is_empty() {
                on_event(event);
            }
            return;
        }
        if self.oversized {
            if self.line.is_empty() {
                // The blank line ending the oversized event.
                self.oversized = false;
                self.event = Event::default();
                self.dropped += 1;
            }
            self.line.clear();
            return;
        }
        let line = std::mem::take(&mut self.line);
        let (field, value) = match memchr::memchr(b':', &line) {
            Some(0) => return, // a comment
            Some(at) => {
                let value = &line[at + 1..];
                (&line[..at], value.strip_prefix(b" ").unwrap_or(value))
            }
            None => (&line[..], &[][..]),
        };
        match field {
            b"data" => {
                if !self.event.data.is_empty() {
                    self.event.data.push(b'\n');
                }
                self.event.data.extend_from_slice(value);
            }
            b"event" => self.event.name = String::from_utf8_lossy(value).into_owned(),
            _ => {}
        }
        self.line = line;
        self.line.clear();
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn split(stream: &[u8], cuts: &[usize]) -> Vec<Event> {
        let mut out = Vec::new();
        let mut s = SseSplitter::new(1 << 20);
        let mut from = 0;
        for &cut in cuts.iter().chain(std::iter::once(&stream.len())) {
            s.feed(&stream[from..cut], &mut |e| out.push(e));
            from = cut;
        }
        s.finish(&mut |e| out.push(e));
        out
    }

    #[test]
    fn events_are_the_same_wherever_the_stream_is_cut() {
        let stream = b": hi\r\nevent: a\r\ndata: {\"x\":1}\r\n\r\ndata: one\ndata: two\n\nid: 3\ndata:[DONE]\n\n";
        let whole = split(stream, &[]);
        assert_eq!(
            whole,
            vec![
                Event {
                    name: "a".into(),
                    data: b"{\"x\":1}".to_vec()
                },
                Event {
                    name: String::new(),
                    data: b"one\ntwo".to_vec()
                },
                Event {
                    name: String::new(),
                    data: b"[DONE]".to_vec()
                },
            ]
        );
        for a in 0..stream.len() {
            for b in a..stream.len() {
                assert_eq!(split(stream, &[a, b]), whole, "cut at {a} and {b}");
            }
        }
    }

    #[test]
    fn an_oversized_event_is_dropped_and_counted_and_the_next_one_parsed() {
        let mut s = SseSplitter::new(16);
        let mut out = Vec::new();
        s.feed(b"data: 0123456789abcdefghij\n\ndata: ok\n\n", &mut |e| {
            out.push(e)
        });
        assert_eq!(
            out,
            vec![Event {
                name: String::new(),
                data: b"ok".to_vec()
            }]
        );
        assert_eq!(s.dropped, 1);
    }
}
