//! One request to a configured upstream, phase by phase.
//!
//! [`Injector::request`] starts the audit line, reads the generation in
//! force once, runs the phases and hands the response to the one body tap.
//! The phases run in one direction and each returns its result or a typed
//! [`Refusal`], answered in one place ([`Refusal::respond`]):
//!
//! 1. route: plain HTTP to a cloud metadata address goes to the metadata
//!    emulator (`metadata`); by SNI for TLS; by Host for plain HTTP, only to
//!    upstreams that opted in with `plain_http` (anything else is passed
//!    through);
//! 2. audit health: a fail-closed audit log that cannot be written refuses;
//! 3. destination: plain HTTP must go to an address the host resolves to;
//! 4. identify: the gate attests the process and names its workload;
//! 5. agent keys: a real-looking key from the agent is refused (or warned),
//!    after identification, so that the rule quarantines the workload;
//! 6. quarantine: a quarantined workload or process is refused here, before
//!    its request is read, evaluated, reserved or charged;
//! 7. read: the body prefix the gate needs (the whole body, up to a limit,
//!    for a provider that signs requests over it), and the provider's parse;
//! 8. authorize: policy, then budgets (the gate); an OpenAI stream that
//!    did not ask for usage is made to (`ask_for_usage`, `strip`);
//! 9. credential: from the cache or the issuer;
//! 10. rewrite: the provider splices the credential, or signs (`rewrite`);
//! 11. forward: to the upstream, within the response deadline; when the
//!     upstream refuses the credential (401, 403), it is fetched again once
//!     outside its schedule and, if that gave a new value and the body can
//!     be given again, the request is sent once more with it;
//! 12. respond: an upgrade is relayed (a WebSocket message by message,
//!     metered: `session`); a body is redacted and tapped.

use std::{sync::Arc, time::Duration};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::{body::Incoming, upgrade::OnUpgrade};

use super::{
    ForwardBody, GateRequest, Generation, Identity, Injector, ProxyBody, Redact, Refusal,
    RequestGate, Transport, Upstream, UpstreamError, Verdict,
    body::PrefetchError,
    redact,
    replay::ReplayBody,
    rewrite::{content_length, empty, is_upgrade, request_host, resolves_to, rewrite},
    session,
    strip::StripUsageChunk,
    tap::{RequestEnding, Tap},
    upstream::Sent,
};
use crate::{
    audit::{CredentialRefusal, Outcome, RequestLog},
    config::AgentKeyAction,
    credentials::{CredentialError, CredentialSource},
    origin::Origin,
    provider::{self, RequestHead},
    response::live::LiveConnection,
    secret::Secret,
    usage::ResponseObserver,
};

/// What the phases learn that the end of the response needs.
#[derive(Default)]
pub(super) struct Learned {
    /// The workload the gate identified.
    workload: Option<String>,
    /// Fingerprints of real-looking keys the agent sent.
    agent_keys: Vec<String>,
    /// Watches the response (usage metering, budgets).
    observer: Option<Box<dyn ResponseObserver>>,
    /// The forwarded request asked for usage the agent did not: its extra
    /// chunk is removed from the response (`strip`).
    strip_usage_chunk: bool,
}

/// The request as read for the gate.
struct Read {
    parts: http::request::Parts,
    body: ForwardBody,
    /// The body's first bytes (as many as the gate asked for).
    prefix: Vec<u8>,
    /// The whole body, read for a provider that signs requests over it.
    whole: Option<Bytes>,
    /// Its room in the signing budget, held while it may be sent.
    _room: Option<tokio::sync::OwnedSemaphorePermit>,
    parsed: provider::Request,
    /// The agent side of a protocol upgrade, taken before the request was
    /// split.
    upgrade: Option<OnUpgrade>,
}

/// One request as it travels through the phases.
pub(super) struct Call<'a> {
    pub origin: Origin,
    pub upstream: Arc<Upstream>,
    pub transport: Transport,
    pub log: &'a RequestLog,
    pub live: &'a Arc<LiveConnection>,
    /// Who is calling, when established before the phases (at a gateway,
    /// from a node's statement); None: the gate identifies the Origin.
    pub identified: Option<&'a Identity>,
}

impl Injector {
    /// One request: its audit line is started here and finished when the
    /// response body ends (see `tap`).
    pub(super) async fn request(
        &self,
        req: Request<Incoming>,
        origin: Origin,
        sni_upstream: Option<Arc<Upstream>>,
        live: Arc<LiveConnection>,
    ) -> Response<ProxyBody> {
        let log = self.begin(&req, &origin, &live);
        let mut learned = Learned::default();
        let response = self
            .route(req, origin, sni_upstream, &log, &live, &mut learned)
            .await;
        finish(response, log, learned, origin, self.responder.clone())
    }
}

impl Injector {
    /// The start of every request, whichever way it came in: counted on its
    /// connection, and its audit line begun.
    pub(super) fn begin<B>(
        &self,
        req: &Request<B>,
        origin: &Origin,
        live: &LiveConnection,
    ) -> RequestLog {
        live.request_started();
        self.responder.audit().request(
            origin,
            req.method(),
            req.uri().path(),
            content_length(req.headers()),
        )
    }
}

/// The response handed to the one body tap, which ends the audit line.
pub(super) fn finish(
    response: Response<ProxyBody>,
    log: RequestLog,
    learned: Learned,
    origin: Origin,
    responder: Arc<crate::response::Responder>,
) -> Response<ProxyBody> {
    {
        let status = response.status().as_u16();
        let ending = RequestEnding {
            log,
            status,
            responder,
            workload: learned.workload,
            tgid: origin.tgid,
            agent_keys: learned.agent_keys,
        };
        let strip = learned.strip_usage_chunk;
        response.map(|body| {
            let tapped = Tap::new(body, learned.observer).finishing(ending);
            if strip {
                StripUsageChunk::new(tapped).boxed()
            } else {
                tapped.boxed()
            }
        })
    }
}

impl Injector {
    /// Phase 1, route; then the rest, or the pass-through.
    async fn route(
        &self,
        req: Request<Incoming>,
        origin: Origin,
        sni_upstream: Option<Arc<Upstream>>,
        log: &RequestLog,
        live: &Arc<LiveConnection>,
        learned: &mut Learned,
    ) -> Response<ProxyBody> {
        if sni_upstream.is_none()
            && let Some(emulator) = &self.metadata
            && emulator.serves(origin.original_dst)
        {
            return self.metadata(emulator, req, origin, log).await;
        }
        let (upstream, transport) = match sni_upstream {
            Some(upstream) => (Some(upstream), Transport::Tls),
            None => {
                let by_host = request_host(&req)
                    .and_then(|h| self.upstreams.get(&h).cloned())
                    .filter(|up| up.plain_http);
                (by_host, Transport::Plain)
            }
        };
        let Some(upstream) = upstream else {
            log.outcome(Outcome::PassedThrough, None);
            return self.pass_through(req, origin, log).await;
        };
        log.upstream(&upstream.host);
        let shape = upstream.provider.scheme();
        let call = Call {
            origin,
            upstream,
            transport,
            log,
            live,
            identified: None,
        };
        // The generation in force, read once: this request's gate and
        // credentials come from the same configuration.
        let generation = self.generations.current();
        let req = req.map(ForwardBody::streaming);
        match self.phases(req, &call, generation.as_ref(), learned).await {
            Ok(response) => response,
            Err(refusal) => refusal.respond(shape, log),
        }
    }

    /// Phases 2 to 12.
    pub(super) async fn phases(
        &self,
        req: Request<ForwardBody>,
        call: &Call<'_>,
        generation: &dyn Generation,
        learned: &mut Learned,
    ) -> Result<Response<ProxyBody>, Refusal> {
        self.check_audit()?;
        check_destination(call).await?;
        // Learned before anything refuses: the rules act on refused
        // requests too, and quarantine the workload identified next (its
        // other processes, forks included), or the process when none is.
        learned.agent_keys = agent_keys(call, &req);
        let gate = generation.gate();
        let identity = self.identify(gate, call).await?;
        learned.workload.clone_from(&identity.workload);
        self.check_agent_keys(&learned.agent_keys)?;
        self.check_quarantine(identity.workload.as_deref(), call.origin.tgid)?;
        let Read {
            parts,
            body,
            prefix,
            whole,
            _room,
            parsed,
            upgrade,
        } = self.read(req, gate.body_prefix_len(), call).await?;
        call.log.model(parsed.model.as_deref());
        let verdict = gate
            .authorize(
                &identity,
                GateRequest {
                    origin: &call.origin,
                    upstream: &call.upstream.host,
                    scheme: call.upstream.provider.scheme(),
                    request: &parsed,
                    headers: &parts.headers,
                    body_prefix: &prefix,
                    audit: call.log,
                },
            )
            .await?;
        let (parts, body) = ask_for_usage(call, &parsed, parts, body, &prefix, learned);
        drop(prefix);
        // From here on the request is admitted: a refusal before it reaches
        // the upstream gives its reservation back instead of charging it.
        let answered = match &self.node {
            // A node holds no credential: the gateway injects it (and
            // meters and charges what reaches the upstream). Without the
            // gateway's response, the node's reservation is given back.
            Some(node) => self
                .via_gateway(node, parts, body, upgrade.is_some(), &identity, call)
                .await
                .map(|response| (response, None, None))
                .map_err(ForwardFailure::unsent),
            None => {
                let admitted = Admitted { parts, body, whole };
                self.inject(admitted, parsed.upgrade, generation.credentials(), call)
                    .await
                    .map(|(response, credential)| (response, upgrade, Some(credential)))
            }
        };
        match answered {
            Ok((response, upgrade, credential)) => Ok(respond(
                response, upgrade, verdict, credential, call, learned,
            )),
            Err(failure) => {
                if failure.unsent {
                    verdict.release();
                }
                Err(failure.refusal)
            }
        }
    }

    /// Phases 9 to 11 on a host that injects: the credential, the splice,
    /// the upstream's answer, and one retry with a fresh credential when
    /// the upstream refused the first.
    async fn inject(
        &self,
        admitted: Admitted,
        upgrade: bool,
        credentials: &dyn CredentialSource,
        call: &Call<'_>,
    ) -> Result<(Response<Incoming>, Arc<Secret>), ForwardFailure> {
        let Admitted { parts, body, whole } = admitted;
        let credential = credential(credentials, call)
            .await
            .map_err(ForwardFailure::unsent)?;
        let forward = splice(parts, body, &credential, call, whole.as_deref())
            .map_err(ForwardFailure::unsent)?;
        let (response, sent) = self.forward(call, forward, upgrade).await?;
        match (response.status(), sent) {
            (StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN, Some(sent)) => {
                let first = First {
                    response,
                    sent,
                    whole,
                    credential,
                };
                // The first attempt was refused: nothing was spent. A
                // second that never reached the upstream spent nothing
                // either.
                self.credential_refused(first, credentials, call).await
            }
            _ => Ok((response, credential)),
        }
    }

    /// Phase 11, after a 401 or 403: the credential is fetched again (at
    /// most once per credential in a while: `credentials::store`) and, when
    /// that gave a new value and the body can be given again, the request
    /// is sent once more with it. Otherwise the upstream's answer stands.
    async fn credential_refused(
        &self,
        first: First,
        credentials: &dyn CredentialSource,
        call: &Call<'_>,
    ) -> Result<(Response<Incoming>, Arc<Secret>), ForwardFailure> {
        let upstream = &call.upstream;
        // Only an injecting host gets here (a node has no credential).
        let Some(name) = upstream.credential.as_deref() else {
            return Ok((first.response, first.credential));
        };
        let status = first.response.status().as_u16();
        let refreshed = credentials.refresh(name, &first.credential).await;
        let (result, fresh) = match refreshed {
            Ok(value) if value.expose() == first.credential.expose() => ("unchanged", None),
            Ok(value) => ("refreshed", Some(value)),
            Err(CredentialError::NotRefreshed { .. }) => ("not_refreshed", None),
            Err(error) => {
                tracing::warn!(upstream = %upstream.host, %error, "fetching a refused credential again failed");
                ("failed", None)
            }
        };
        let mut refusal = CredentialRefusal {
            status,
            result: result.into(),
            fingerprint: fresh.as_ref().map(|f| f.fingerprint()),
            retried: false,
        };
        // The body again: the whole one a signing provider read, or what
        // the first attempt kept (up to `replay::KEEP_LIMIT`).
        let again = match (fresh, first.whole) {
            (Some(fresh), Some(whole)) => Some((
                fresh,
                ReplayBody::streaming(ForwardBody::full(whole.clone())),
                Some(whole),
            )),
            (Some(fresh), None) => first.sent.rewind.rewind().map(|body| (fresh, body, None)),
            (None, _) => None,
        };
        let Some((fresh, body, whole)) = again else {
            call.log.credential_refused(&upstream.host, name, refusal);
            return Ok((first.response, first.credential));
        };
        drop(first.response);
        tracing::info!(
            upstream = %upstream.host,
            credential = %name,
            status,
            "the upstream refused the credential; sending the request again with the one fetched now"
        );
        refusal.retried = true;
        call.log.credential_refused(&upstream.host, name, refusal);
        call.log.credential(name, &fresh);
        // The head as first sent: splicing again takes the refused
        // credential out (or the old signature) and puts the new one in.
        let request = splice(first.sent.head, body, &fresh, call, whole.as_deref())
            .map_err(ForwardFailure::unsent)?;
        let response = self.forward_again(call, request).await?;
        Ok((response, fresh))
    }

    /// Phase 2: a fail-closed audit log that cannot be written refuses.
    fn check_audit(&self) -> Result<(), Refusal> {
        if self.responder.audit().accepting() {
            return Ok(());
        }
        Err(Refusal::new(
            Outcome::AuditUnavailable,
            StatusCode::SERVICE_UNAVAILABLE,
            "warrant refused this request: its audit log cannot be written (fail-closed)",
        ))
    }

    /// Phase 5: a real-looking key from the agent is refused, unless
    /// `[proxy] agent_keys = "warn"`.
    fn check_agent_keys(&self, fingerprints: &[String]) -> Result<(), Refusal> {
        if fingerprints.is_empty() || self.limits.agent_keys != AgentKeyAction::Refuse {
            return Ok(());
        }
        Err(Refusal::new(
            Outcome::AgentKey,
            StatusCode::FORBIDDEN,
            format!(
                "warrant refused this request: it carries what looks like a real API key ({}); the agent must use a placeholder, warrant injects the credential",
                fingerprints.join(", ")
            ),
        ))
    }

    /// Phase 4: who is calling, recorded on the audit line and the live
    /// connection. A process that cannot be attested is refused, unless it
    /// is quarantined: then the quarantine is what refuses it.
    async fn identify(&self, gate: &dyn RequestGate, call: &Call<'_>) -> Result<Identity, Refusal> {
        let identified = match call.identified {
            Some(identity) => Ok(identity.clone()),
            None => gate.identify(&call.origin).await,
        };
        let identity = match identified {
            Ok(identity) => identity,
            Err(refusal) => {
                self.check_quarantine(None, call.origin.tgid)?;
                return Err(refusal);
            }
        };
        let workload = identity.workload.as_deref();
        call.live.set_identity(workload, &identity.summary);
        call.log.identified(workload, identity.summary.clone());
        Ok(identity)
    }

    /// Phase 6: a quarantined workload or process gets nothing further.
    fn check_quarantine(&self, workload: Option<&str>, tgid: u32) -> Result<(), Refusal> {
        let Some(quarantine) = self.responder.quarantined(workload, tgid) else {
            return Ok(());
        };
        Err(Refusal::new(
            Outcome::Quarantined,
            StatusCode::FORBIDDEN,
            format!(
                "warrant refused this request: {} is quarantined ({})",
                quarantine.target, quarantine.reason
            ),
        ))
    }

    /// Phase 7: takes the agent side of an upgrade, reads the body prefix
    /// the gate asks for (`wanted` bytes; the whole body is still
    /// forwarded) and parses the request with the upstream's provider.
    async fn read(
        &self,
        mut req: Request<ForwardBody>,
        wanted: usize,
        call: &Call<'_>,
    ) -> Result<Read, Refusal> {
        // Taken before the request is split.
        let upgrade = is_upgrade(req.headers()).then(|| hyper::upgrade::on(&mut req));
        let (parts, body) = req.into_parts();
        let unreadable = |error: PrefetchError| {
            let status = match error {
                PrefetchError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
                _ => StatusCode::BAD_REQUEST,
            };
            Refusal::new(
                Outcome::Refused,
                status,
                format!("warrant could not read the request: {error}"),
            )
        };
        let mut whole = None;
        let mut room = None;
        let (body, prefix) = if call.upstream.provider.signs_body() {
            let limit = self.limits.max_signed_body_bytes;
            let declared = content_length(&parts.headers);
            room = Some(self.signing_room(declared, limit).await?);
            let (body, data) = ForwardBody::whole(body, declared, limit, self.header_timeout())
                .await
                .map_err(unreadable)?;
            let prefix = data[..data.len().min(wanted)].to_vec();
            whole = Some(data);
            (body, prefix)
        } else if wanted == 0 {
            (body, Vec::new())
        } else {
            body.prefetch(wanted, self.header_timeout())
                .await
                .map_err(unreadable)?
        };
        let head = RequestHead {
            method: &parts.method,
            uri: &parts.uri,
            headers: &parts.headers,
        };
        let parsed = call
            .upstream
            .provider
            .parse(&head, &prefix)
            .map_err(|error| {
                Refusal::new(
                    Outcome::Refused,
                    StatusCode::BAD_REQUEST,
                    format!("warrant refused this request: {error}"),
                )
            })?;
        // The gate decides on the body (a rule names models, or budgets
        // count tokens), and its top-level object did not end within the
        // bytes read: a key past them could contradict what was read, so
        // the request is refused rather than decided on half of it.
        if wanted > 0 && parsed.body == (provider::Body::Json { complete: false }) {
            return Err(Refusal::new(
                Outcome::Refused,
                StatusCode::PAYLOAD_TOO_LARGE,
                format!(
                    "warrant refused this request: its JSON body does not end within the first {wanted} bytes, which is all warrant reads to decide on a request (policy names models, or budgets count tokens); send a smaller body or raise [usage] body_prefix_bytes"
                ),
            ));
        }
        Ok(Read {
            parts,
            body,
            prefix,
            whole,
            _room: room,
            parsed,
            upgrade,
        })
    }

    /// Room in the signing budget for a body of `declared` bytes (the
    /// limit when it says nothing), waited for at most the header timeout.
    async fn signing_room(
        &self,
        declared: Option<u64>,
        limit: usize,
    ) -> Result<tokio::sync::OwnedSemaphorePermit, Refusal> {
        let bytes = declared.map_or(limit, |d| usize::try_from(d).unwrap_or(limit).min(limit));
        let kib = u32::try_from(bytes / 1024 + 1).unwrap_or(u32::MAX);
        let wait = self.signing.clone().acquire_many_owned(kib);
        match tokio::time::timeout(self.header_timeout(), wait).await {
            Ok(Ok(permit)) => Ok(permit),
            _ => Err(Refusal::new(
                Outcome::Refused,
                StatusCode::SERVICE_UNAVAILABLE,
                "warrant is holding too many large request bodies to sign at once; try again",
            )),
        }
    }

    /// Phase 11: sends the rewritten request; no response headers within
    /// `[proxy] upstream_response_timeout_secs` is a gateway timeout. A
    /// protocol upgrade goes on an HTTP/1.1 connection of its own: the
    /// pooled connection may be HTTP/2, where an Upgrade header means
    /// nothing and the upstream would answer a plain GET.
    async fn forward(
        &self,
        call: &Call<'_>,
        request: Request<ForwardBody>,
        upgrade: bool,
    ) -> Result<(Response<Incoming>, Option<Sent>), ForwardFailure> {
        let host = &call.upstream.host;
        let deadline = self.response_deadline();
        let sent = std::time::Instant::now();
        let dst = call.origin.original_dst;
        let send = async {
            match (call.transport, upgrade) {
                // An upgrade is never sent again: no body kept.
                (Transport::Tls, true) => {
                    let tls = Some(&call.upstream.tls_http1);
                    let sent = self.clients.send_upgrade(host, dst, tls, request).await;
                    sent.map(|response| (response, None))
                }
                (Transport::Plain, true) => {
                    let sent = self.clients.send_upgrade(host, dst, None, request).await;
                    sent.map(|response| (response, None))
                }
                (transport, false) => {
                    let tls = (transport == Transport::Tls).then_some(&call.upstream.tls);
                    let retried = |why| call.log.upstream_retried(host, why);
                    self.clients.send(host, dst, tls, request, retried).await
                }
            }
        };
        let response = within(deadline, host, send).await?;
        call.log.upstream_responded(host, sent.elapsed());
        call.log.outcome(Outcome::Forwarded, None);
        Ok(response)
    }

    /// How long the upstream has to answer with its response headers.
    fn response_deadline(&self) -> Duration {
        Duration::from_secs(self.limits.upstream_response_timeout_secs)
    }

    /// Phase 11 once more: the request sent again, as `forward` sends it,
    /// with a body given again.
    async fn forward_again(
        &self,
        call: &Call<'_>,
        request: Request<ReplayBody<ForwardBody>>,
    ) -> Result<Response<Incoming>, ForwardFailure> {
        let host = &call.upstream.host;
        let deadline = self.response_deadline();
        let sent = std::time::Instant::now();
        let tls = match call.transport {
            Transport::Tls => Some(&call.upstream.tls),
            Transport::Plain => None,
        };
        let send = self
            .clients
            .send_again(host, call.origin.original_dst, tls, request);
        let response = within(deadline, host, send).await?;
        call.log.upstream_responded(host, sent.elapsed());
        Ok(response)
    }
}

/// The upstream's answer to `send`, or a failure: no answer within
/// `deadline` is a gateway timeout (by its type: `UpstreamError::NoAnswer`).
async fn within<T, E>(
    deadline: Duration,
    host: &str,
    send: impl std::future::Future<Output = Result<T, E>>,
) -> Result<T, ForwardFailure>
where
    UpstreamError: From<E>,
{
    let error = match tokio::time::timeout(deadline, send).await {
        Ok(Ok(answer)) => return Ok(answer),
        Ok(Err(error)) => UpstreamError::from(error),
        Err(_) => UpstreamError::NoAnswer { after: deadline },
    };
    tracing::warn!(upstream = %host, cause = %crate::error::chain(&error), "upstream failed");
    Err(ForwardFailure {
        unsent: error.unsent(),
        refusal: Refusal::upstream_failed(host, &error),
    })
}

/// The first attempt of a request whose credential the upstream refused.
struct First {
    response: Response<Incoming>,
    /// Its head as sent and what was kept of its body.
    sent: Sent,
    whole: Option<Bytes>,
    credential: Arc<Secret>,
}

/// Phase 8, after authorize: an OpenAI stream that did not ask for its
/// usage is forwarded asking for it, so that it is metered exactly (see
/// `provider::openai::usage_option`); the agent's view is restored by
/// `strip`. Only a body read whole can be rebuilt; Content-Length follows
/// the new body.
fn ask_for_usage(
    call: &Call<'_>,
    parsed: &provider::Request,
    mut parts: http::request::Parts,
    body: ForwardBody,
    prefix: &[u8],
    learned: &mut Learned,
) -> (http::request::Parts, ForwardBody) {
    if !body.is_whole() {
        return (parts, body);
    }
    let Some(rebuilt) = call.upstream.provider.usage_option(parsed, prefix) else {
        return (parts, body);
    };
    parts
        .headers
        .insert(http::header::CONTENT_LENGTH, rebuilt.len().into());
    learned.strip_usage_chunk = true;
    (parts, ForwardBody::full(bytes::Bytes::from(rebuilt)))
}

/// A request the upstream did not answer.
struct ForwardFailure {
    refusal: Refusal,
    /// It provably never reached the upstream (no connection): nothing was
    /// spent.
    unsent: bool,
}

impl ForwardFailure {
    /// A refusal before the request was sent anywhere.
    fn unsent(refusal: Refusal) -> Self {
        Self {
            refusal,
            unsent: true,
        }
    }
}

/// An admitted request, ready for its credential.
struct Admitted {
    parts: http::request::Parts,
    body: ForwardBody,
    /// The whole body, read for a provider that signs requests over it.
    whole: Option<Bytes>,
}

/// Phase 3: plain HTTP has no certificate to authenticate the destination,
/// so the address the agent dialled must be one the host resolves to
/// before a credential goes there.
async fn check_destination(call: &Call<'_>) -> Result<(), Refusal> {
    let dst = call.origin.original_dst;
    let host = &call.upstream.host;
    if call.transport == Transport::Tls || resolves_to(host, dst).await {
        return Ok(());
    }
    tracing::warn!(
        upstream = %host,
        %dst,
        tgid = call.origin.tgid,
        "plain HTTP to an address the host does not resolve to: refused"
    );
    Err(Refusal::new(
        Outcome::Refused,
        StatusCode::FORBIDDEN,
        format!(
            "warrant refused this request: {} is not an address of {host} (plain HTTP destinations are checked against DNS)",
            dst.ip()
        ),
    ))
}

/// Phase 5, first half: what looks like a real key from the agent, reported
/// (log, audit line) by fingerprint only. Returns the fingerprints.
fn agent_keys<B>(call: &Call<'_>, req: &Request<B>) -> Vec<String> {
    let findings = call.upstream.provider.inspect(req.headers(), req.uri());
    if findings.is_empty() {
        return Vec::new();
    }
    for finding in &findings {
        tracing::warn!(
            upstream = %call.upstream.host,
            tgid = call.origin.tgid,
            uid = call.origin.uid,
            cgroup_id = call.origin.cgroup_id,
            location = %finding.location,
            fingerprint = %finding.fingerprint,
            "the agent sent what looks like a real API key (agents should hold only a placeholder)"
        );
    }
    let prints: Vec<String> = findings.into_iter().map(|f| f.fingerprint).collect();
    call.log.agent_keys(prints.clone());
    prints
}

/// Phase 9: the upstream's credential, recorded by name and fingerprint.
async fn credential(
    credentials: &dyn CredentialSource,
    call: &Call<'_>,
) -> Result<Arc<Secret>, Refusal> {
    let upstream = &call.upstream;
    let Some(name) = upstream.credential.as_deref() else {
        return Err(Refusal::new(
            Outcome::NoCredential,
            StatusCode::SERVICE_UNAVAILABLE,
            format!("warrant holds no credential for {}", upstream.host),
        ));
    };
    match credentials.current(name).await {
        Ok(credential) => {
            call.log.credential(name, &credential);
            Ok(credential)
        }
        Err(error) => {
            tracing::warn!(upstream = %upstream.host, %error, "no credential");
            Err(Refusal::new(
                Outcome::NoCredential,
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "warrant has no credential for {} right now: {error}",
                    upstream.host
                ),
            ))
        }
    }
}

/// Phase 10: the request rewritten for the upstream, the credential spliced
/// in (or the request signed over `whole`) by its provider (see `rewrite`).
fn splice<B>(
    parts: http::request::Parts,
    body: B,
    credential: &Secret,
    call: &Call<'_>,
    whole: Option<&[u8]>,
) -> Result<Request<B>, Refusal> {
    let dst = call.origin.original_dst;
    let upstream = &call.upstream;
    rewrite(
        parts,
        body,
        upstream,
        credential,
        dst,
        call.transport,
        whole,
    )
    .map_err(|error| {
        tracing::error!(upstream = %call.upstream.host, %error, "cannot rewrite the request");
        let message = format!(
            "warrant cannot forward this request to {}: {error}",
            call.upstream.host
        );
        Refusal::new(Outcome::Refused, StatusCode::INTERNAL_SERVER_ERROR, message)
    })
}

/// Phase 12: a protocol upgrade is relayed both ways (a quarantine closes
/// it); a body goes back redacted (when a credential was injected here),
/// through the tap that meters it.
fn respond(
    mut response: Response<Incoming>,
    upgrade: Option<OnUpgrade>,
    verdict: Verdict,
    credential: Option<Arc<Secret>>,
    call: &Call<'_>,
    learned: &mut Learned,
) -> Response<ProxyBody> {
    if let Some(agent_side) = upgrade
        && response.status() == StatusCode::SWITCHING_PROTOCOLS
    {
        let websocket = response
            .headers()
            .get(http::header::UPGRADE)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"websocket"));
        // A WebSocket session is metered message by message from here on.
        let meter = match verdict {
            Verdict::Admit(admission) if websocket => admission.into_session(),
            _ => None,
        };
        session::relay(
            agent_side,
            hyper::upgrade::on(&mut response),
            call.live.clone(),
            websocket,
            meter,
        );
        let (parts, _) = response.into_parts();
        return Response::from_parts(parts, empty());
    }
    tracing::debug!(
        upstream = %call.upstream.host,
        status = response.status().as_u16(),
        tgid = call.origin.tgid,
        "forwarded"
    );
    let (mut parts, body) = response.into_parts();
    // The observer sees the upstream's head as it was sent.
    if let Verdict::Admit(admission) = verdict
        && let Some(mut observer) = admission.take()
    {
        observer.head(parts.status, &parts.headers);
        learned.observer = Some(observer);
    }
    super::rewrite::strip_hop_by_hop(&mut parts.headers, false);
    // What of the credential could come back: the value sent (for AWS
    // keys, the session token; the secret key never travels).
    let credential = credential.map(|c| call.upstream.provider.echoable(c));
    if learned.strip_usage_chunk {
        // The agent gets fewer bytes than the upstream sent.
        parts.headers.remove(http::header::CONTENT_LENGTH);
    }
    let body = body.map_err(super::BoxError::from);
    let Some(credential) = credential else {
        return Response::from_parts(parts, body.boxed());
    };
    redact::headers(&mut parts.headers, &credential);
    Response::from_parts(parts, Redact::new(body, credential).boxed())
}
