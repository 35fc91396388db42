//! Metering a WebSocket session (OpenAI Realtime, Gemini Live) as it runs.
//!
//! A session is one HTTP request whose tokens come after it, message by
//! message, for as long as it lasts: a reservation made at the upgrade
//! cannot bound it. So the upgrade is admitted as one request with no
//! tokens (`UsageObserver::into_session`), and from then on every message
//! from the provider goes through [`SessionMeter::message`] before it is
//! passed on: the usage it reports (`provider::Api::session_usage`:
//! Realtime's `response.done`, Live's `usageMetadata`) is charged to the
//! workload's budget at once, unconditionally (the tokens are spent), and
//! then the budget is asked whether one more token (and micro-dollar) fits.
//! When it does not, the relay delivers that message and closes the session
//! (`proxy::session`). The overshoot is bounded by what one response
//! spends, as for concurrent requests.
//!
//! A response the provider started (Realtime's `response.created`, Live's
//! model content) whose usage message had not come when the session closed
//! (the agent hung up mid-response) spent tokens no message reports: the
//! session is then charged `[usage] default_max_output_tokens` for it, as
//! an HTTP response cut off before its usage is charged its reservation.
//! Otherwise an agent could open sessions and hang up before each
//! response's end, unmetered.
//!
//! A provider whose sessions report no usage this way is not metered here:
//! its upgrades are `provider::Unmetered::WebSocket`, refused under a token
//! or cost budget by policy.

use std::sync::Arc;

use super::{
    budget::{Budgets, Reservation, UsageRecord, UsageSink},
    meter::{Outcome, Usage},
    observer::{Exhausted, SessionFuture, SessionObserver},
    price::Price,
    window::Amounts,
};
use crate::provider::{self, Scheme};

/// What a session meter is made of (from the upgrade's admission).
pub(super) struct SessionParts {
    /// The budget key (workload, or workload/upstream).
    pub key: String,
    pub limits: [Option<u64>; 3],
    pub scheme: Scheme,
    pub price: Option<Price>,
    pub workload: String,
    pub upstream: String,
    pub path: String,
    pub model: Option<String>,
    /// Told the session's usage when it ends.
    pub sink: Option<Arc<dyn UsageSink>>,
}

/// Meters one session: see the module comment.
pub struct SessionMeter {
    budgets: Budgets,
    parts: SessionParts,
    /// What the session spent so far.
    used: Usage,
    cost_micro_usd: u64,
    /// Messages that reported usage.
    reports: u64,
    /// A response started and its usage not yet reported.
    open_turn: bool,
    /// Responses charged a guess because the session closed during them.
    guessed: u64,
}

impl SessionMeter {
    pub(super) fn new(budgets: Budgets, parts: SessionParts) -> SessionMeter {
        SessionMeter {
            budgets,
            parts,
            used: Usage::default(),
            cost_micro_usd: 0,
            reports: 0,
            open_turn: false,
            guessed: 0,
        }
    }

    async fn charge(&mut self, message: &[u8]) -> Result<(), Exhausted> {
        let api = provider::api(self.parts.scheme);
        let Some(usage) = api.session_usage(message) else {
            self.open_turn |= api.session_turn_started(message);
            return Ok(());
        };
        self.open_turn = false;
        self.reports += 1;
        self.spend(usage).await
    }

    /// The session closes during a response: charged the output guess a
    /// request without a cap reserves (see the module comment).
    async fn close_open_turn(&mut self) -> Result<(), Exhausted> {
        if !std::mem::take(&mut self.open_turn) {
            return Ok(());
        }
        self.guessed += 1;
        let usage = Usage {
            output_tokens: self.budgets.settings().default_max_output_tokens,
            ..Usage::default()
        };
        self.spend(usage).await
    }

    /// Adds `usage` to the session's and charges it to the budget; Err
    /// when the budget has no room left after it.
    async fn spend(&mut self, usage: Usage) -> Result<(), Exhausted> {
        self.used.input_tokens = self.used.input_tokens.saturating_add(usage.input_tokens);
        self.used.cached_input_tokens = self
            .used
            .cached_input_tokens
            .saturating_add(usage.cached_input_tokens);
        self.used.output_tokens = self.used.output_tokens.saturating_add(usage.output_tokens);
        let cost = self.parts.price.map_or(0, |p| p.micro_usd(&usage));
        self.cost_micro_usd = self.cost_micro_usd.saturating_add(cost);
        let limits = self.parts.limits;
        if limits.iter().all(Option::is_none) {
            return Ok(());
        }
        let key = self.parts.key.clone();
        // Spent, whatever the limits say: charged without them.
        let spent: Amounts = [0, usage.total(), cost];
        match self.budgets.reserve(&key, spent, [None; 3]).await {
            Ok(placement) => Reservation::new(&self.budgets, &key, placement, spent).settle(spent),
            Err(refusal) => {
                // The ledger could not be reached: fail closed.
                return Err(Exhausted(refusal.message()));
            }
        }
        // Is there room for one more token (and micro-dollar)?
        let probe: Amounts = [
            0,
            u64::from(limits[1].is_some()),
            u64::from(limits[2].is_some()),
        ];
        match self.budgets.reserve(&key, probe, limits).await {
            Ok(placement) => {
                Reservation::new(&self.budgets, &key, placement, probe).settle([0, 0, 0]);
                Ok(())
            }
            Err(refusal) => Err(Exhausted(refusal.message())),
        }
    }
}

impl SessionObserver for SessionMeter {
    fn message<'a>(&'a mut self, message: &'a [u8]) -> SessionFuture<'a> {
        Box::pin(self.charge(message))
    }

    fn closing(&mut self) -> SessionFuture<'_> {
        Box::pin(self.close_open_turn())
    }

    fn end(self: Box<Self>) {
        let outcome = if self.guessed > 0 {
            Outcome::Unknown {
                reason: "the session closed during a response; charged as reserved".to_owned(),
            }
        } else if self.reports > 0 {
            Outcome::Counted
        } else {
            Outcome::Unknown {
                reason: "the session reported no usage".to_owned(),
            }
        };
        let parts = self.parts;
        let record = UsageRecord {
            workload: parts.workload,
            upstream: parts.upstream,
            provider: parts.scheme,
            path: parts.path,
            model: parts.model,
            usage: self.used,
            cost_micro_usd: self.cost_micro_usd,
            reserved: Usage::default(),
            outcome,
            cut_off: false,
            unpriced: parts.price.is_none(),
        };
        tracing::info!(
            workload = %record.workload, upstream = %record.upstream, path = %record.path,
            input = self.used.input_tokens, output = self.used.output_tokens,
            cost_micro_usd = self.cost_micro_usd, reports = self.reports,
            guessed = self.guessed,
            "websocket session ended"
        );
        self.budgets.record(&record, parts.sink.as_ref());
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::{
        clock::ManualClock,
        config::UsageConfig,
        policy::RuleLimits,
        provider::RequestHead,
        usage::{AdmitRequest, LocalLedger, PriceTable, ResponseObserver},
    };

    fn budgets() -> Budgets {
        Budgets::new(
            UsageConfig::default(),
            PriceTable::new(&[], true).unwrap(),
            LocalLedger::in_memory(),
            false,
            None,
            Arc::new(ManualClock::new(
                jiff::Timestamp::from_second(1_800_000_000).unwrap(),
            )),
        )
    }

    const DONE: &[u8] = br#"{"type":"response.done","response":{"id":"r","status":"completed","usage":{"total_tokens":19,"input_tokens":12,"output_tokens":7,"input_token_details":{"cached_tokens":0}}}}"#;

    #[tokio::test]
    async fn a_session_is_charged_as_it_runs_and_exhausted_past_its_budget() {
        let b = budgets();
        let uri: http::Uri = "/v1/realtime?model=gpt-realtime".parse().unwrap();
        let mut headers = http::HeaderMap::new();
        headers.insert("connection", "Upgrade".parse().unwrap());
        headers.insert("upgrade", "websocket".parse().unwrap());
        let head = RequestHead {
            method: &http::Method::GET,
            uri: &uri,
            headers: &headers,
        };
        let request = provider::api(Scheme::OpenAi).parse(&head, b"").unwrap();
        assert_eq!(request.unmetered, None, "a Realtime session is metered");
        assert_eq!(request.model.as_deref(), Some("gpt-realtime"));
        let observer = b
            .admit(AdmitRequest {
                workload: "w",
                upstream: "api.openai.com",
                scheme: Scheme::OpenAi,
                request: &request,
                limits: RuleLimits {
                    tokens_per_hour: Some(50),
                    ..RuleLimits::default()
                },
            })
            .await
            .unwrap();
        let mut session = Box::new(observer).into_session().unwrap();
        // Messages without usage cost nothing.
        session
            .message(br#"{"type":"response.created"}"#)
            .await
            .unwrap();
        session.message(b"\x00binary audio").await.unwrap();
        session.message(DONE).await.unwrap();
        session.message(DONE).await.unwrap();
        // 57 tokens of 50: the third response spent past the budget.
        let exhausted = session.message(DONE).await.unwrap_err();
        assert!(exhausted.0.contains("tokens_per_hour"), "{exhausted}");
        session.end();
        assert_eq!(b.status().windows, vec![("w".to_owned(), [1, 57, 0])]);
    }

    #[tokio::test]
    async fn a_session_closed_during_a_response_is_charged_the_guess_for_it() {
        let b = budgets();
        let uri: http::Uri = "/v1/realtime?model=gpt-realtime".parse().unwrap();
        let mut headers = http::HeaderMap::new();
        headers.insert("connection", "Upgrade".parse().unwrap());
        headers.insert("upgrade", "websocket".parse().unwrap());
        let head = RequestHead {
            method: &http::Method::GET,
            uri: &uri,
            headers: &headers,
        };
        let request = provider::api(Scheme::OpenAi).parse(&head, b"").unwrap();
        let admit = || {
            b.admit(AdmitRequest {
                workload: "w",
                upstream: "api.openai.com",
                scheme: Scheme::OpenAi,
                request: &request,
                limits: RuleLimits {
                    tokens_per_hour: Some(1_000_000),
                    ..RuleLimits::default()
                },
            })
        };
        let guess = b.settings().default_max_output_tokens;
        // Ended with its response done: only the usage reported.
        let mut session = Box::new(admit().await.unwrap()).into_session().unwrap();
        session
            .message(br#"{"type":"response.created"}"#)
            .await
            .unwrap();
        session.message(DONE).await.unwrap();
        session.closing().await.unwrap();
        session.end();
        assert_eq!(b.status().windows, vec![("w".to_owned(), [1, 19, 0])]);
        // Hung up after response.created: the guess is charged.
        let mut session = Box::new(admit().await.unwrap()).into_session().unwrap();
        session
            .message(br#"{"type":"response.created","response":{}}"#)
            .await
            .unwrap();
        session
            .message(br#"{"type":"response.output_text.delta"}"#)
            .await
            .unwrap();
        session.closing().await.unwrap();
        session.end();
        assert_eq!(
            b.status().windows,
            vec![("w".to_owned(), [2, 19 + guess, 0])]
        );
        // Gemini Live: model content without its usageMetadata yet.
        let live = provider::api(Scheme::Gemini);
        assert!(live.session_turn_started(br#"{"serverContent":{"modelTurn":{}}}"#));
        assert!(!live.session_turn_started(
            br#"{"serverContent":{"turnComplete":true},"usageMetadata":{}}"#
        ));
        assert!(!live.session_turn_started(br#"{"setupComplete":{}}"#));
    }

    #[test]
    fn gemini_live_usage_is_read_from_usage_metadata() {
        let message = br#"{"serverContent":{"turnComplete":true},"usageMetadata":{"promptTokenCount":12,"responseTokenCount":7,"totalTokenCount":19}}"#;
        let usage = provider::api(Scheme::Gemini)
            .session_usage(message)
            .unwrap();
        assert_eq!((usage.input_tokens, usage.output_tokens), (12, 7));
        assert!(
            provider::api(Scheme::Anthropic)
                .session_usage(message)
                .is_none()
        );
    }
}
