//! The WebSocket session meter: bytes from an upstream after an upgrade,
//! decoded into messages by tungstenite (as `proxy::session` does) and each
//! message read for usage by each provider (`Api::session_usage`,
//! `Api::session_turn_started`). It must
//! never panic, and the usage it reads is never negative or unbounded by
//! the message (counts are u64, summed saturating).
#![no_main]

use libfuzzer_sys::fuzz_target;
use tokio::io::AsyncWriteExt;
use tokio_tungstenite::{
    WebSocketStream,
    tungstenite::{Message, protocol::{Role, WebSocketConfig}},
};
use futures_util::StreamExt;
use warrant::provider::{Scheme, api};

fuzz_target!(|data: &[u8]| {
    let Ok(runtime) = tokio::runtime::Builder::new_current_thread().build() else {
        return;
    };
    runtime.block_on(async {
        let (mut upstream, injector) = tokio::io::duplex(64 * 1024);
        let _ = upstream.write_all(data).await;
        drop(upstream);
        let mut config = WebSocketConfig::default();
        config.max_message_size = Some(1 << 20);
        config.max_frame_size = Some(1 << 20);
        let mut ws = WebSocketStream::from_raw_socket(injector, Role::Client, Some(config)).await;
        while let Some(Ok(message)) = ws.next().await {
            let bytes = match &message {
                Message::Text(text) => text.as_bytes(),
                Message::Binary(data) => data,
                _ => continue,
            };
            for scheme in [Scheme::OpenAi, Scheme::Gemini, Scheme::Anthropic] {
                let _ = api(scheme).session_usage(bytes);
                let _ = api(scheme).session_turn_started(bytes);
            }
        }
    });
});
