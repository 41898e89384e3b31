//! Usage and cost accounting: tokens from the provider's usage, priced with
//! the config's price table (USD per one million tokens). With a control
//! plane, every finished call's record also goes to the [`spool`] and from
//! there to the control plane.

pub mod spool;

use crate::config::Price;
use crate::formats::Usage;

/// Cost of `usage` at `price`. Cached input tokens are billed at the cached
/// price, the rest of the input at the input price.
pub fn cost_usd(price: &Price, usage: &Usage) -> f64 {
    let cached = usage.cached_input_tokens.min(usage.input_tokens);
    let fresh = usage.input_tokens - cached;
    (fresh as f64 * price.input_per_mtok
        + cached as f64 * price.cached_input_per_mtok
        + usage.output_tokens as f64 * price.output_per_mtok)
        / 1_000_000.0
}

/// Where finished calls' usage records go (the control-plane reporter's
/// spool when the edge has a control plane).
pub trait UsageSink: Send + Sync {
    fn record(&self, rec: switchyard_proto::control::UsageRecord);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prices_fresh_cached_and_output_tokens() {
        let p = Price {
            input_per_mtok: 2.5,
            output_per_mtok: 10.0,
            cached_input_per_mtok: 1.25,
        };
        let u = Usage {
            input_tokens: 1_000_000,
            output_tokens: 500_000,
            cached_input_tokens: 400_000,
        };
        // 600k * 2.5 + 400k * 1.25 + 500k * 10 = 1.5 + 0.5 + 5.0
        assert!((cost_usd(&p, &u) - 7.0).abs() < 1e-9);
        let none = Usage::default();
        assert_eq!(cost_usd(&p, &none), 0.0);
    }
}
