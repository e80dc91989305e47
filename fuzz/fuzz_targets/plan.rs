//! `--layers` plans: parsing, printing and re-parsing what was printed.
#![no_main]

use libfuzzer_sys::fuzz_target;
use patchbay_combinators::Plan;

fuzz_target!(|data: &[u8]| {
    let Some((&n, rest)) = data.split_first() else {
        return;
    };
    let Ok(text) = std::str::from_utf8(rest) else {
        return;
    };
    let n_layers = n as usize % 64;
    if let Ok(p) = Plan::parse(text, n_layers) {
        let printed = p.to_string();
        let again = Plan::parse(&printed, n_layers).unwrap_or_else(|e| {
            panic!("{text:?} printed as {printed:?}, which does not parse: {e}")
        });
        assert_eq!(
            again, p,
            "{text:?} printed as {printed:?} parses to another plan"
        );
    }
});
