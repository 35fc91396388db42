//! The audit trail's health in words, for `warrant status` and `warrant
//! doctor` (both read [`AuditHealth`] from the daemon's status answer).

use super::AuditHealth;
use crate::table::count;

impl AuditHealth {
    /// The audit trail's health in one sentence.
    pub fn in_words(&self) -> String {
        let place = match (&self.file, self.journal) {
            (Some(file), true) => format!("{} and the journal", file.display()),
            (Some(file), false) => file.display().to_string(),
            (None, true) => "the journal only (no audit file)".to_owned(),
            (None, false) => "nowhere: no audit file and no journal".to_owned(),
        };
        let counts = format!(
            "{} records written, {} dropped since start",
            count(self.written),
            count(self.dropped)
        );
        let policy = if self.fail_closed {
            "on_failure = \"closed\": requests are refused while it cannot be written"
        } else {
            "on_failure = \"open\": requests are served and records lost while it cannot be written"
        };
        match (self.writable, self.dropped) {
            (true, 0) => format!("healthy: writing to {place}; {counts}; {policy}"),
            (true, _) => {
                format!(
                    "writable again, but records were LOST: writing to {place}; {counts}; {policy}"
                )
            }
            (false, _) if self.fail_closed => format!(
                "NOT WRITABLE: {place}; {counts}; requests are being REFUSED until a write succeeds (on_failure = \"closed\")"
            ),
            (false, _) => format!(
                "NOT WRITABLE: {place}; {counts}; requests are served and their records LOST (on_failure = \"open\")"
            ),
        }
    }
}
