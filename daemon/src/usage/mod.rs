//! Usage metering and budgets.
//!
//! - [`meter`] reads token usage from responses as they stream past
//!   ([`sse`] splits server-sent events, [`eventstream`] reads AWS event
//!   streams);
//! - [`price`] turns usage into cost (the per-model price table);
//! - [`request`] estimates a request's worst case from the provider's parse
//!   of it (`provider::Request`, the same parse policy decides on);
//! - [`window`] is the sliding-window arithmetic, [`ledger`] the embedded
//!   (SQLite) store and [`redis`] the fleet-wide one;
//! - [`budget`] ties them together: admission reserves, the response
//!   settles ([`UsageObserver`] is the proxy's [`ResponseObserver`]);
//! - [`session`] meters a WebSocket session message by message and says
//!   when its budget ran out.
//!
//! [`settings`] is the `[usage]` config section.

pub mod budget;
pub mod eventstream;
pub mod ledger;
pub mod meter;
pub mod observer;
pub mod price;
pub mod redis;
pub mod request;
pub mod session;
pub mod settings;
pub mod sse;
pub mod window;

pub use budget::{
    AdmitRequest, BudgetLine, BudgetPlan, BudgetRefusal, BudgetStatus, Budgets, Room,
    UsageObserver, UsageRecord, UsageSink,
};
pub use ledger::LocalLedger;
pub use meter::{Meter, Outcome, Reading, Usage};
pub use observer::{Admission, Exhausted, ResponseObserver, SessionFuture, SessionObserver};
pub use price::{PriceError, PriceTable};
pub use session::SessionMeter;
pub use settings::UsageSettings;
