//! The allocator's settings the service binaries share (`gateway`, `order-worker`,
//! `load-tests` and their benchmarks all run on mimalloc).
//!
//! mimalloc gives memory that has stayed free for its *purge delay* back to the kernel
//! (`MADV_DONTNEED`); its default is one second. In a flash sale that is the wrong trade:
//! memory freed after one burst (the sign-in's sessions, a second of purchases) is needed
//! again by the next a few seconds later, and every page given back is faulted in again
//! and zeroed by the kernel (with transparent huge pages, 2 MiB per fault). Profiled in
//! the `mega` sell-through, those faults (mostly the kernel zeroing the pages) were 2.9%
//! of the CPU. [`PURGE_DELAY_MS`] keeps free memory for ten seconds instead: still
//! returned once a sale has passed, no longer churned within one. It cut the faults of a
//! `mega` run by a third (BENCHMARKS.md, "Fourth pass").
//!
//! `MIMALLOC_PURGE_DELAY` in the environment, when set, is left to win (mimalloc reads
//! it at start-up), so the setting can be tried and measured without a build.

/// How long memory stays free in the process before mimalloc returns it to the kernel, ms.
pub const PURGE_DELAY_MS: std::ffi::c_long = 10_000;

/// The environment variable of mimalloc's own that overrides [`PURGE_DELAY_MS`].
pub const PURGE_DELAY_ENV: &str = "MIMALLOC_PURGE_DELAY";

/// mimalloc's index of its purge-delay option (`mi_option_purge_delay` in `mimalloc.h`,
/// the same in its versions 2 and 3; `libmimalloc-sys` names only the older options).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Applies the settings above; call it first thing in `main`. Harmless when the global
/// allocator is not mimalloc (it sets an option that then nobody reads).
pub fn configure() {
    if std::env::var_os(PURGE_DELAY_ENV).is_some() {
        return;
    }
    // SAFETY: `mi_option_set` stores a value in mimalloc's option table; the index is a
    // valid option of the mimalloc this crate links (checked by the test below), and an
    // option may be set at any time (mimalloc reads it when it next purges).
    #[allow(unsafe_code)]
    unsafe {
        libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, PURGE_DELAY_MS);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The purge delay mimalloc uses now, ms.
    fn purge_delay_ms() -> std::ffi::c_long {
        // SAFETY: reads an option by its valid index (see `configure`).
        #[allow(unsafe_code)]
        unsafe {
            libmimalloc_sys::mi_option_get(MI_OPTION_PURGE_DELAY)
        }
    }

    #[test]
    fn the_purge_delay_is_the_option_it_names_and_the_environment_wins() {
        // mimalloc v3's default purge delay is 1000 ms, v2's 10 ms: the index points at the
        // purge delay if its value is one of those before `configure` and ours after;
        // with the variable set, `configure` leaves mimalloc's reading of it alone.
        let before = purge_delay_ms();
        configure();
        match std::env::var(PURGE_DELAY_ENV) {
            Ok(v) => {
                assert_eq!(purge_delay_ms(), before, "{PURGE_DELAY_ENV}={v}");
            }
            Err(_) => {
                assert!(before == 1000 || before == 10, "{before}");
                assert_eq!(purge_delay_ms(), PURGE_DELAY_MS);
            }
        }
    }
}
