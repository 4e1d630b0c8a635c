//! Durations and sizes as options take them: never a panic, results in range, and a formatted
//! duration reads back as itself.
#![no_main]

use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use portico::config::units::{fmt_duration, parse_duration, parse_size};

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(d) = parse_duration(s) {
        // The reference caps a duration at 1e12 ms.
        assert!(
            d <= Duration::from_millis(1_000_000_000_000),
            "{s:?} -> {d:?}"
        );
        let ms = d.as_millis();
        if ms > 0 {
            let text = fmt_duration(d);
            assert_eq!(
                parse_duration(&text),
                Ok(Duration::from_millis(ms as u64)),
                "{s:?} -> {d:?} -> {text:?}"
            );
        }
    }
    if let Ok(n) = parse_size(s) {
        let t = s.trim();
        if !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()) {
            assert_eq!(Ok(n), t.parse::<u64>(), "a plain number is bytes");
        }
    }
});
