//! The one async runtime of a process: the plugin, `check`, `simulate` and
//! `pve-sim` all run on it.

use std::future::Future;
use std::time::Duration;

/// How long work left behind (the engine's background tasks) may take to
/// stop once the main future is done; it never holds the process open longer.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// Runs `future` to completion on a multi-threaded tokio runtime with I/O
/// and timers, then gives left-behind work 2 s to stop before it returns.
/// Fails only when the runtime cannot be started; the message says so.
pub fn block_on<F: Future>(future: F) -> Result<F::Output, String> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|err| format!("could not start the async runtime: {err}"))?;
    let output = runtime.block_on(future);
    runtime.shutdown_timeout(SHUTDOWN_GRACE);
    Ok(output)
}
