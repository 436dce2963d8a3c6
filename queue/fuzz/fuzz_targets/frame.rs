//! Wire frames of either direction; see `queue_fuzz::frame`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    queue_fuzz::frame(data);
});
