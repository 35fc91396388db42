//! The usage meters (`usage::Meter`): SSE streams, Gemini's JSON-array
//! streams and JSON documents, from an upstream (or anything on the path
//! to it), cut into frames anywhere. They must never panic, keep memory
//! bounded, and read the same usage whatever the frame boundaries.
#![no_main]

use libfuzzer_sys::fuzz_target;
use warrant::{
    provider::{Scheme, api},
    usage::Meter,
};

fuzz_target!(|data: &[u8]| {
    let Some((&which, body)) = data.split_first() else {
        return;
    };
    let scheme = [Scheme::OpenAi, Scheme::Anthropic, Scheme::Gemini, Scheme::Generic]
        [usize::from(which) % 4];
    let (content_type, path) = match (which >> 2) % 3 {
        0 => ("text/event-stream", "/v1/chat/completions"),
        1 => ("application/json", "/v1beta/models/m:streamGenerateContent"),
        _ => ("application/json", "/v1/messages"),
    };
    let meter = || Meter::new(api(scheme).usage(), 200, Some(content_type), path, 4096);
    let mut whole = meter();
    whole.feed(body);
    let whole = whole.finish();
    // The same bytes in frames cut at points the input chooses.
    let step = usize::from(which >> 4).max(1);
    let mut framed = meter();
    for chunk in body.chunks(step) {
        framed.feed(chunk);
    }
    let framed = framed.finish();
    // A JSON document is copied whole (or its tail) and parsed at the end:
    // framing changes nothing. Streams (SSE, Gemini's arrays) are searched
    // as they come; with corrupt events in them (which only the upstream
    // can send) the frames may decide which event is read, and a stream
    // whose usage cannot be read is charged as reserved, never as zero:
    // there only the absence of panics, and memory within the RSS limit,
    // is checked.
    if (which >> 2) % 3 == 2 {
        assert_eq!(whole.usage, framed.usage, "frames of {step}");
    }
});
