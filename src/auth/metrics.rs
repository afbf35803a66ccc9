//! What the authenticator shows at /metrics: refused WebSocket and HTTP clients.

use super::Authenticator;
use crate::metrics::{Snapshot, Source};

/// Refused WebSocket and HTTP clients.
impl Source for Authenticator {
    fn collect(&self, s: &mut Snapshot) {
        let r = self.rejections.snapshot();
        s.counters(
            "auth_refusals",
            "WebSocket and HTTP clients refused before being served, by reason.",
            "reason",
            [
                ("bad_credentials", r.bad_credentials),
                ("auth_timeout", r.auth_timeouts),
                ("origin_refused", r.origins_refused),
            ],
        );
    }
}
