//! Usage metering and budgets.
//!
//! - [`meter`]: token usage read from responses as they stream past;
//! - [`price`]: the per-model price table that turns usage into cost;
//! - [`request`]: the worst case a request may cost, from its body prefix.

pub mod meter;
pub mod sse;

pub use meter::{Meter, Outcome, Provider, Reading, Usage};
