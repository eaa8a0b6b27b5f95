//! Slack signature verification: never panics on any header bytes or body, and never accepts a
//! fuzzer-made signature (libFuzzer cannot compute an HMAC, so an acceptance would mean the
//! check is broken). As a control, the body signed properly is accepted, and rejected once one
//! of its bits is flipped.
#![no_main]

use std::sync::Arc;

use chrono::{TimeZone, Utc};
use jit_core::clock::ManualClock;
use jit_core::slack::verify::{Verifier, sign};
use libfuzzer_sys::fuzz_target;
use secrecy::SecretString;

/// The current time of the verifier: 2026-01-01T00:00:00Z.
const NOW: i64 = 1_767_225_600;

fuzz_target!(|data: &[u8]| {
    // Layout: [flags] [ts_len] [sig_len] timestamp signature body.
    // flags bits 0 and 1 drop a header; bit 2 replaces the timestamp with NOW plus an offset of
    // -128..=127 s taken from the timestamp's first byte, so the fuzzer easily gets past the
    // replay window to the signature check.
    let (flags, rest) = data.split_first().map_or((0, data), |(f, r)| (*f, r));
    let (ts_len, rest) = rest
        .split_first()
        .map_or((0, rest), |(n, r)| (*n as usize, r));
    let (sig_len, rest) = rest
        .split_first()
        .map_or((0, rest), |(n, r)| (*n as usize, r));
    let ts_len = ts_len.min(rest.len());
    let (ts, rest) = rest.split_at(ts_len);
    let sig_len = sig_len.min(rest.len());
    let (sig, body) = rest.split_at(sig_len);

    let now_ts;
    let ts: &[u8] = if flags & 4 != 0 {
        let offset = ts.first().map_or(0, |b| *b as i64 - 128);
        now_ts = (NOW + offset).to_string();
        now_ts.as_bytes()
    } else {
        ts
    };
    // bit 3: give the signature the `v0=` prefix.
    let prefixed;
    let sig: &[u8] = if flags & 8 != 0 {
        prefixed = [b"v0=".as_slice(), sig].concat();
        &prefixed
    } else {
        sig
    };

    let clock = ManualClock::new(Utc.timestamp_opt(NOW, 0).unwrap());
    let secret = SecretString::from("s");
    let verifier = Verifier::new(vec![secret.clone()], Arc::new(clock));
    let result = verifier.verify(
        (flags & 1 == 0).then_some(ts),
        (flags & 2 == 0).then_some(sig),
        body,
    );
    assert!(
        result.is_err(),
        "accepted a forged signature: ts={ts:?} sig={sig:?} body={body:?}"
    );

    // Control: the real signature of this body verifies, and stops verifying when the body changes.
    let now = NOW.to_string();
    let good = sign(&secret, NOW, body);
    assert_eq!(
        verifier.verify(Some(now.as_bytes()), Some(good.as_bytes()), body),
        Ok(())
    );
    if !body.is_empty() {
        let mut changed = body.to_vec();
        let bit = flags as usize % (changed.len() * 8);
        changed[bit / 8] ^= 1 << (bit % 8);
        assert!(
            verifier
                .verify(Some(now.as_bytes()), Some(good.as_bytes()), &changed)
                .is_err(),
            "accepted a changed body"
        );
    }
});
