//! Pauses at named points inside the daemon, so that tests can make a race repeatable:
//! `UNIONFS_TEST_PAUSE=POINT:MILLIS` in the daemon's environment (read once). Unset, a
//! pause costs one read of a value set at the first call.

use std::sync::OnceLock;
use std::time::Duration;

/// Sleeps here when the test asked for a pause at `point`.
pub fn pause(point: &str) {
    static WANTED: OnceLock<Option<(String, u64)>> = OnceLock::new();
    let wanted = WANTED.get_or_init(|| {
        let v = std::env::var("UNIONFS_TEST_PAUSE").ok()?;
        let (p, ms) = v.split_once(':')?;
        Some((p.to_string(), ms.parse().ok()?))
    });
    if let Some((p, ms)) = wanted {
        if p == point {
            std::thread::sleep(Duration::from_millis(*ms));
        }
    }
}
