//! Relaying an upgraded connection: a WebSocket message by message (so
//! that its usage is metered and its budget can end it), anything else
//! byte for byte.
//!
//! A WebSocket is terminated on both sides with tokio-tungstenite (no
//! hand-written frame parser): the agent's side as a server, the upstream's
//! as a client, and each message is passed on as it came (text, binary,
//! ping, pong, close). Messages from the upstream are shown to the
//! session's meter first (`usage::SessionMeter`); when it says the budget
//! ran out, the message is still delivered (its tokens are spent) and the
//! session is closed on both sides, the agent told why (close code 1008,
//! policy violation). The request asked the upstream for no extensions
//! (`rewrite`), so frames are never compressed and every message can be
//! read. A quarantine closes the session like any live connection. When
//! the session closes, its meter charges a response it saw start and not
//! end (`SessionObserver::closing`).

use std::{sync::Arc, time::Duration};

use futures_util::{SinkExt, StreamExt};
use hyper::upgrade::{OnUpgrade, Upgraded};
use hyper_util::rt::TokioIo;
use tokio_tungstenite::{
    WebSocketStream,
    tungstenite::{
        Message,
        protocol::{CloseFrame, Role, frame::coding::CloseCode},
    },
};

use crate::{response::live::LiveConnection, usage::SessionObserver};

/// How long closing a session may take before its sockets are dropped.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// Relays an upgraded connection until either side closes (or a
/// quarantine, or the budget, ends it). The upgraded streams outlive the
/// HTTP connection's task. `websocket`: the upgrade was to a WebSocket, to
/// be relayed message by message, metered by `meter` if given.
pub(super) fn relay(
    agent_side: OnUpgrade,
    upstream_side: OnUpgrade,
    live: Arc<LiveConnection>,
    websocket: bool,
    meter: Option<Box<dyn SessionObserver>>,
) {
    tokio::spawn(async move {
        let (agent, remote) = match tokio::try_join!(agent_side, upstream_side) {
            Ok(both) => both,
            Err(error) => {
                tracing::debug!(%error, "upgrade failed");
                if let Some(meter) = meter {
                    meter.end();
                }
                return;
            }
        };
        if websocket {
            relay_websocket(agent, remote, &live, meter).await;
            return;
        }
        let mut agent = TokioIo::new(agent);
        let mut remote = TokioIo::new(remote);
        tokio::select! {
            _ = tokio::io::copy_bidirectional(&mut agent, &mut remote) => {}
            () = live.closed() => {}
        }
    });
}

async fn relay_websocket(
    agent: Upgraded,
    upstream: Upgraded,
    live: &LiveConnection,
    mut meter: Option<Box<dyn SessionObserver>>,
) {
    let agent = WebSocketStream::from_raw_socket(TokioIo::new(agent), Role::Server, None).await;
    let upstream =
        WebSocketStream::from_raw_socket(TokioIo::new(upstream), Role::Client, None).await;
    let (mut to_agent, mut from_agent) = agent.split();
    let (mut to_upstream, mut from_upstream) = upstream.split();
    let mut budget_close = None;
    loop {
        tokio::select! {
            message = from_agent.next() => {
                let Some(Ok(message)) = message else { break };
                let close = message.is_close();
                if to_upstream.send(message).await.is_err() || close {
                    break;
                }
            }
            message = from_upstream.next() => {
                let Some(Ok(message)) = message else { break };
                let verdict = match (meter.as_mut(), &message) {
                    (Some(meter), Message::Text(text)) => meter.message(text.as_bytes()).await,
                    (Some(meter), Message::Binary(data)) => meter.message(data).await,
                    _ => Ok(()),
                };
                let close = message.is_close();
                if to_agent.send(message).await.is_err() || close {
                    break;
                }
                if let Err(exhausted) = verdict {
                    tracing::info!(reason = %exhausted, "websocket session closed: budget exhausted");
                    budget_close = Some(close_frame(&format!("warrant: {exhausted}")));
                    break;
                }
            }
            () = live.closed() => break,
        }
    }
    let closing = async {
        if let Some(frame) = budget_close {
            let _ = to_agent.send(Message::Close(Some(frame))).await;
        }
        let _ = to_agent.close().await;
        let _ = to_upstream.close().await;
    };
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, closing).await;
    if let Some(mut meter) = meter {
        // A response cut by the close is charged (its budget may already
        // be exhausted: the session is over either way).
        if let Err(exhausted) = meter.closing().await {
            tracing::debug!(reason = %exhausted, "budget exhausted at the session's close");
        }
        meter.end();
    }
}

/// A close frame with code 1008 (policy violation) and `reason`, cut to
/// what a control frame holds (123 bytes of text).
fn close_frame(reason: &str) -> CloseFrame {
    let mut end = reason.len().min(123);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    CloseFrame {
        code: CloseCode::Policy,
        reason: reason[..end].to_owned().into(),
    }
}
