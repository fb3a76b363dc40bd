//! The library's log hook: where warnings such as "unregistered while held" go.
//!
//! A library must not decide where an application's diagnostics end up, so every message goes
//! through one replaceable function. The default prints warnings to standard error and drops
//! the rest, as SPDK and DPDK do at their default log levels.

use std::fmt;
use std::sync::Arc;

/// How much a message matters.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum LogLevel {
    /// Something is wrong but the engine carries on (a channel still held at unregister, a
    /// failed channel allocation).
    Warn,
    /// A notable state change (a device's channels all released).
    Info,
    /// Detail for debugging the engine itself.
    Debug,
}

impl fmt::Display for LogLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            LogLevel::Warn => "warn",
            LogLevel::Info => "info",
            LogLevel::Debug => "debug",
        })
    }
}

/// Receives every message the engine emits. It runs under the engine's control lock, so it
/// must return promptly and must not call back into the engine.
pub type LogHook = Arc<dyn Fn(LogLevel, &str) + Send + Sync>;

/// The default hook: warnings to standard error, nothing else.
pub fn stderr_warnings() -> LogHook {
    Arc::new(|level, message| {
        if level == LogLevel::Warn {
            eprintln!("dmaplane: {level}: {message}");
        }
    })
}
