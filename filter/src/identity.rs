//! Who sends a batch: the gateway (one Envoy) and the instance (one VM start inside it).
//!
//! The exporter dedupes on (gateway, instance, sequence), so an instance id must never repeat,
//! not even across VM restarts. wasm32-unknown-unknown has no RNG, so an instance id combines
//! the VM's start time in nanoseconds with a number handed out by a counter in Envoy's shared
//! data (shared by every VM of this plugin's vm_id in the process).

/// Shared-data key of the per-process instance counter.
pub const INSTANCE_COUNTER_KEY: &str = "plover.filter.instance_counter";

/// Attempts before giving up on the counter (contention is a handful of VMs starting at once).
const MAX_ATTEMPTS: usize = 32;

/// Gateway id used when neither the configuration nor Envoy names one.
pub const UNNAMED_GATEWAY: &str = "unknown";

/// Why a shared-data write did not happen.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SetError {
    /// Someone wrote the key since we read it.
    CasMismatch,
    Failed,
}

/// Envoy's shared data (`proxy_get_shared_data` / `proxy_set_shared_data`).
pub trait SharedData {
    /// The value and its CAS token; `None` when the key does not exist or the read failed.
    fn get(&self, key: &str) -> Option<(Vec<u8>, u32)>;
    /// Writes `value` if the key's CAS token is still `cas` (0: unconditionally).
    fn set(&self, key: &str, value: &[u8], cas: u32) -> Result<(), SetError>;
}

/// The next number of the per-process instance counter, from 1; `None` if shared data failed.
///
/// Numbers are only ever taken by a compare-and-swap increment of an existing key. Envoy cannot
/// create a key conditionally, so the first VMs may each seed it with 0; a seed landing after
/// another VM's increment could hand out one number twice. The start time in the instance id
/// keeps those ids apart.
pub fn allocate_instance_number(shared: &impl SharedData) -> Option<u64> {
    for _ in 0..MAX_ATTEMPTS {
        let Some((value, cas)) = shared.get(INSTANCE_COUNTER_KEY) else {
            shared
                .set(INSTANCE_COUNTER_KEY, &0u64.to_le_bytes(), 0)
                .ok()?;
            continue;
        };
        let current = <[u8; 8]>::try_from(value.as_slice()).map_or(0, u64::from_le_bytes);
        let next = current.saturating_add(1);
        match shared.set(INSTANCE_COUNTER_KEY, &next.to_le_bytes(), cas) {
            Ok(()) => return Some(next),
            Err(SetError::CasMismatch) => continue,
            Err(SetError::Failed) => return None,
        }
    }
    None
}

/// `<start ns, hex>-<instance number>`, e.g. `18a3c0ffee0c1a2b-3`; number 0 means the counter
/// was unavailable.
pub fn instance_id(start_ns: u64, number: Option<u64>) -> String {
    format!("{start_ns:x}-{}", number.unwrap_or(0))
}

/// The configured gateway id, else Envoy's node id, else [`UNNAMED_GATEWAY`].
pub fn gateway_id(configured: &str, node_id: Option<&str>) -> String {
    [Some(configured), node_id]
        .into_iter()
        .flatten()
        .map(str::trim)
        .find(|id| !id.is_empty())
        .unwrap_or(UNNAMED_GATEWAY)
        .to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::{Cell, RefCell};
    use std::collections::HashMap;

    type Race = Box<dyn FnOnce(&Store)>;

    /// An in-memory shared data with Envoy's semantics, plus an optional interleaving hook.
    #[derive(Default)]
    struct Store {
        map: RefCell<HashMap<String, (Vec<u8>, u32)>>,
        next_cas: Cell<u32>,
        /// Runs once before the next `set`, to simulate another VM racing.
        before_set: RefCell<Option<Race>>,
    }

    impl SharedData for Store {
        fn get(&self, key: &str) -> Option<(Vec<u8>, u32)> {
            self.map.borrow().get(key).cloned()
        }
        fn set(&self, key: &str, value: &[u8], cas: u32) -> Result<(), SetError> {
            let race = self.before_set.borrow_mut().take();
            if let Some(race) = race {
                race(self);
            }
            let mut map = self.map.borrow_mut();
            if let Some((_, current)) = map.get(key) {
                if cas != 0 && cas != *current {
                    return Err(SetError::CasMismatch);
                }
            }
            self.next_cas.set(self.next_cas.get() + 1);
            map.insert(key.to_owned(), (value.to_vec(), self.next_cas.get()));
            Ok(())
        }
    }

    #[test]
    fn numbers_start_at_one_and_increase() {
        let store = Store::default();
        let numbers: Vec<_> = (0..4).map(|_| allocate_instance_number(&store)).collect();
        assert_eq!(numbers, [Some(1), Some(2), Some(3), Some(4)]);
    }

    #[test]
    fn a_concurrent_increment_forces_a_retry() {
        let store = Store::default();
        assert_eq!(allocate_instance_number(&store), Some(1));
        // Another VM takes number 2 between our read and our write.
        *store.before_set.borrow_mut() = Some(Box::new(|s: &Store| {
            assert_eq!(allocate_instance_number(s), Some(2));
        }));
        assert_eq!(allocate_instance_number(&store), Some(3));
    }

    #[test]
    fn a_store_that_always_fails_gives_none() {
        struct Broken;
        impl SharedData for Broken {
            fn get(&self, _: &str) -> Option<(Vec<u8>, u32)> {
                None
            }
            fn set(&self, _: &str, _: &[u8], _: u32) -> Result<(), SetError> {
                Err(SetError::Failed)
            }
        }
        assert_eq!(allocate_instance_number(&Broken), None);
    }

    #[test]
    fn ids() {
        assert_eq!(instance_id(0x18a3_c0ff_ee00, Some(3)), "18a3c0ffee00-3");
        assert_eq!(instance_id(1, None), "1-0");
        assert_eq!(gateway_id("gw-a", Some("node")), "gw-a");
        assert_eq!(
            gateway_id("", Some("router~10.0.0.1~gw.ns")),
            "router~10.0.0.1~gw.ns"
        );
        assert_eq!(gateway_id(" ", Some("")), UNNAMED_GATEWAY);
        assert_eq!(gateway_id("", None), UNNAMED_GATEWAY);
    }
}
