//! AnalysisTemplate YAML as users write it: loading, flattening and resolving any text never
//! panics; it gives an Analysis or an error naming what is wrong.
#![no_main]

use libfuzzer_sys::fuzz_target;
use plover_analysis::template;

fuzz_target!(|text: &str| {
    let Ok(documents) = template::load(text) else {
        return;
    };
    let Ok(spec) = template::flatten(&documents) else {
        return;
    };
    let _ = template::resolve(&spec, &template::ArgInputs::default());
});
