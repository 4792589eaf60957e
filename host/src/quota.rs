//! Tenants' request rates on this host (the lattice policy's
//! `[tenants.<name>] rate`): a token bucket per tenant over every cell
//! whose id starts with the tenant's prefix. A request past it is answered
//! `capacity` with when to retry, before it takes a slot of the cell, so a
//! tenant over its rate holds nothing another tenant's cells need.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, RwLock};
use std::time::{Duration, Instant};

/// One tenant's rate, as the policy gives it.
#[derive(Debug, Clone, PartialEq)]
pub struct RateLimit {
    pub tenant: String,
    /// Cell-id prefix of its cells.
    pub prefix: String,
    /// Requests per second on this host.
    pub rate: f64,
    /// Requests taken at once after a quiet spell.
    pub burst: f64,
}

/// A request refused for its tenant's rate.
#[derive(Debug, Clone, PartialEq)]
pub struct Limited {
    pub tenant: String,
    pub rate: f64,
    /// When a request would be taken again.
    pub retry_after: Duration,
}

struct Bucket {
    limit: RateLimit,
    state: Mutex<(f64, Instant)>,
}

/// Every tenant's bucket on this host; none until a policy names rates.
#[derive(Default)]
pub struct Tenants {
    on: AtomicBool,
    /// Longest prefix first, so a tenant of `shop.eu.` wins over `shop.`.
    buckets: RwLock<Vec<Bucket>>,
}

impl Tenants {
    /// Replaces the rates (buckets start full); a rate or burst that is
    /// not a positive finite number limits nothing.
    pub fn set(&self, mut limits: Vec<RateLimit>) {
        let usable = |n: f64| n.is_finite() && n > 0.0;
        limits.retain(|l| usable(l.rate) && usable(l.burst));
        limits.sort_by_key(|l| std::cmp::Reverse(l.prefix.len()));
        let buckets: Vec<Bucket> = limits
            .into_iter()
            .map(|limit| Bucket {
                state: Mutex::new((limit.burst, Instant::now())),
                limit,
            })
            .collect();
        self.on.store(!buckets.is_empty(), Ordering::Release);
        *self.buckets.write().unwrap_or_else(|e| e.into_inner()) = buckets;
    }

    /// Takes one request of `cell`'s tenant, or says when to come back.
    pub fn take(&self, cell: &str) -> Result<(), Limited> {
        if !self.on.load(Ordering::Acquire) {
            return Ok(());
        }
        let buckets = self.buckets.read().unwrap_or_else(|e| e.into_inner());
        let Some(bucket) = buckets.iter().find(|b| cell.starts_with(&b.limit.prefix)) else {
            return Ok(());
        };
        let limit = &bucket.limit;
        let mut state = bucket.state.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        let (tokens, at) = *state;
        let tokens = (tokens + now.duration_since(at).as_secs_f64() * limit.rate).min(limit.burst);
        if tokens >= 1.0 {
            *state = (tokens - 1.0, now);
            return Ok(());
        }
        *state = (tokens, now);
        Err(Limited {
            tenant: limit.tenant.clone(),
            rate: limit.rate,
            retry_after: Duration::try_from_secs_f64((1.0 - tokens) / limit.rate)
                .unwrap_or(Duration::from_secs(1)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limit(tenant: &str, prefix: &str, rate: f64, burst: f64) -> RateLimit {
        RateLimit {
            tenant: tenant.into(),
            prefix: prefix.into(),
            rate,
            burst,
        }
    }

    #[test]
    fn a_tenant_past_its_burst_waits_for_its_rate_and_others_do_not() {
        let tenants = Tenants::default();
        assert!(
            tenants.take("shop.cart").is_ok(),
            "no rates: nothing limited"
        );
        tenants.set(vec![
            limit("shop", "shop.", 10.0, 3.0),
            limit("eu", "shop.eu.", 1000.0, 1000.0),
        ]);
        for _ in 0..3 {
            assert!(tenants.take("shop.cart").is_ok());
        }
        let refused = tenants.take("shop.cart").unwrap_err();
        assert_eq!(refused.tenant, "shop");
        assert!(
            refused.retry_after > Duration::ZERO
                && refused.retry_after <= Duration::from_millis(100)
        );
        assert!(
            tenants.take("shop.eu.cart").is_ok(),
            "the longer prefix is another tenant"
        );
        assert!(
            tenants.take("logic.greet").is_ok(),
            "no tenant: not limited"
        );
        std::thread::sleep(refused.retry_after + Duration::from_millis(5));
        assert!(tenants.take("shop.cart").is_ok(), "the rate refilled it");
        tenants.set(Vec::new());
        assert!((0..100).all(|_| tenants.take("shop.cart").is_ok()));
        tenants.set(vec![
            limit("zero", "shop.", 0.0, 1.0),
            limit("nan", "shop.", f64::NAN, 1.0),
        ]);
        assert!(
            (0..10).all(|_| tenants.take("shop.cart").is_ok()),
            "unusable rates limit nothing"
        );
    }
}
