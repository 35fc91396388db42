//! The ClientHello/SNI peek of every intercepted connection
//! (`proxy::peek_sni`): arbitrary bytes from an agent, as the first flight
//! of a TLS connection. It must end (an SNI, none, or an error), never
//! panic, and record exactly the bytes it consumed so the handshake can be
//! replayed.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tokio::io::AsyncWriteExt;

fuzz_target!(|data: &[u8]| {
    let Ok(runtime) = tokio::runtime::Builder::new_current_thread().build() else {
        return;
    };
    runtime.block_on(async {
        let (mut agent, mut injector) = tokio::io::duplex(64 * 1024);
        // The agent sends its bytes and closes: a hello cut short is an
        // error, not a hang.
        let _ = agent.write_all(data).await;
        drop(agent);
        let mut recorded = Vec::new();
        let peeked = warrant::proxy::peek_sni(&mut injector, &mut recorded).await;
        assert!(data.starts_with(&recorded), "recorded bytes the agent did not send");
        if let Ok(Some(sni)) = peeked {
            assert_eq!(sni, sni.to_ascii_lowercase());
        }
    });
});
