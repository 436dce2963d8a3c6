//! On-disk segments, frames and records; see `queue_fuzz::record`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    queue_fuzz::record(data);
});
