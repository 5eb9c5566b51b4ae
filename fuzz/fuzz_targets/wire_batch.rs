//! A filter's batch as the exporter receives it: decoding never panics, and whatever decodes
//! encodes back to something that decodes to the same batch.
#![no_main]

use libfuzzer_sys::fuzz_target;
use plover_wire::{Batch, BatchView, Histogram};

fuzz_target!(|bytes: &[u8]| {
    if let Ok(view) = BatchView::decode(bytes) {
        let _ = view.series().count();
    }
    if let Ok(batch) = Batch::decode(bytes) {
        let again = Batch::decode(&batch.encode()).expect("an encoded batch decodes");
        assert_eq!(again, batch);
    }
    let _ = Histogram::decode_v2(bytes);
});
