//! What every credential provider implements: issue one fresh value.

use std::{future::Future, pin::Pin};

use jiff::Timestamp;

use super::CredentialSource;
use crate::secret::Secret;

/// A value just obtained from a provider.
pub struct Issued {
    pub value: Secret,
    /// None: the value does not expire by itself (a file, a static key); it
    /// is re-read every `refresh_interval` and served until replaced.
    pub expires_at: Option<Timestamp>,
}

/// Why a provider failed. Never contains a credential value: providers build
/// these messages from statuses, paths and error codes only.
pub type IssueError = String;

pub type IssueFuture<'a> = Pin<Box<dyn Future<Output = Result<Issued, IssueError>> + Send + 'a>>;

/// What a provider may use while issuing.
pub struct IssueContext<'a> {
    pub now: Timestamp,
    /// Other credentials (an OAuth client secret, a subject token).
    pub others: &'a dyn CredentialSource,
}

pub trait Provider: Send + Sync + 'static {
    fn issue<'a>(&'a self, ctx: &'a IssueContext<'a>) -> IssueFuture<'a>;
}
