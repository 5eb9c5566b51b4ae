//! The filter's plugin configuration as an operator (or a broken ConfigMap) gives it: parsing
//! and validating any bytes never panics; the filter then fails open on an error.
#![no_main]

use libfuzzer_sys::fuzz_target;
use plover_wire::FilterConfig;

fuzz_target!(|bytes: &[u8]| {
    if let Ok(config) = FilterConfig::from_json(bytes) {
        for rule in &config.rules {
            let _ = rule
                .cluster
                .matches("outbound|9080|v2|reviews.default.svc.cluster.local");
        }
    }
});
