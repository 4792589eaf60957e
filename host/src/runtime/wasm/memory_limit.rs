//! The store's resource limiter: linear memory capped at the cell's
//! `memory_mb`, tables at the pooling allocator's bound.

use wasmtime::ResourceLimiter;

/// Caps linear memory and remembers whether the cap was hit, so a trap can
/// be reported as "memory limit" rather than a generic failure.
pub struct MemoryLimit {
    max_bytes: usize,
    pub(super) hit: bool,
}

impl MemoryLimit {
    pub(super) fn new(max_bytes: usize) -> Self {
        Self {
            max_bytes,
            hit: false,
        }
    }

    pub fn max_mb(&self) -> usize {
        self.max_bytes >> 20
    }
}

impl ResourceLimiter for MemoryLimit {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.max_bytes {
            self.hit = true;
            wasmtime::bail!(
                "memory limit of {} MiB reached (wanted {} MiB)",
                self.max_mb(),
                desired >> 20
            );
        }
        Ok(true)
    }

    /// Tables are bounded as in the pooling allocator, whichever allocator
    /// runs: a guest growing a table in a loop would otherwise take host
    /// memory without limit.
    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= super::engine::TABLE_ELEMENTS)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_grow_only_to_the_pooling_bound() {
        let mut limit = MemoryLimit::new(1 << 20);
        let bound = super::super::engine::TABLE_ELEMENTS;
        assert!(limit.table_growing(0, bound, None).unwrap());
        assert!(!limit.table_growing(0, bound + 1, None).unwrap());
    }
}
