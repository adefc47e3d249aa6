//! Any config text: parsing never panics (a broken config is an error that
//! names where), and a config that parses prints (`--print-config`) as TOML
//! that parses back to the same config and prints the same again.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringgate_config::{parse, to_toml};

fuzz_target!(|text: &str| {
    let Ok(config) = parse(text, "fuzz.toml") else {
        return;
    };
    let printed = to_toml(&config);
    let again = match parse(&printed, "printed.toml") {
        Ok(again) => again,
        Err(e) => panic!("the printed config does not parse:\n{e}\n--- printed ---\n{printed}"),
    };
    assert_eq!(
        format!("{again:?}"),
        format!("{config:?}"),
        "printed:\n{printed}"
    );
    assert_eq!(to_toml(&again), printed);
});
