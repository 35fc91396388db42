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

/// Why a provider failed, by provider. Never contains a credential value:
/// each variant is built from statuses, paths and error codes only.
#[derive(Debug, thiserror::Error)]
pub enum IssueError {
    #[error(transparent)]
    File(#[from] super::file::FileError),
    #[error(transparent)]
    Exec(#[from] super::exec::ExecError),
    #[error(transparent)]
    OAuth(#[from] super::oauth::OAuthError),
    #[error(transparent)]
    Aws(super::aws::AwsError),
    #[error(transparent)]
    Gcp(super::gcp::GcpError),
    #[error(transparent)]
    Azure(super::azure::AzureError),
    #[error("the issuer returned a value that expired at {0}")]
    Expired(Timestamp),
    /// Nothing was fetched yet and no fetch failed (a store driven by hand).
    #[error("no value")]
    NoValue,
    /// A provider implemented outside this module (the `Provider` trait is
    /// public: tests and benchmarks script their own), with its own error.
    #[error(transparent)]
    Other(Box<dyn std::error::Error + Send + Sync>),
}

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
