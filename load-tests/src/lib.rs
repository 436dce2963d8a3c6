//! Load-test tools: will hold the flash-crowd generator and the invariant auditor. Not built yet.
