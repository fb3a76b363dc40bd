//! The rig's test runner inside the guest: runs the scenarios named on its command line (all
//! of them by default) against the guest's kernel, one line per scenario on the console, and
//! exits non-zero if any failed.
//!
//! `rig-guest [--scale N] [SCENARIO...]`

use std::process::ExitCode;

use kvm_rig::guest::{say, GuestPlatform};
use kvm_rig::scenarios::{self, ALL};
use kvm_rig::Platform;

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1).peekable();
    let mut scale = 1;
    let mut names = Vec::new();
    while let Some(arg) = args.next() {
        if arg == "--scale" {
            scale = args.next().and_then(|s| s.parse().ok()).unwrap_or(1).max(1);
        } else {
            names.push(arg);
        }
    }
    if names.is_empty() {
        names = ALL.iter().map(|(name, _)| name.to_string()).collect();
    }
    let platform = GuestPlatform { scale };
    println!(
        "rig-guest: {}; scenarios: {}",
        platform.describe(),
        names.join(", ")
    );
    let (mut passed, mut failed) = (0, 0);
    for name in &names {
        let Some(scenario) = scenarios::named(name) else {
            say(&format!("test {name} FAILED no such scenario"));
            failed += 1;
            continue;
        };
        say(&format!("test {name} start"));
        let started = std::time::Instant::now();
        let outcome = std::panic::catch_unwind(|| scenario(&platform))
            .unwrap_or_else(|_| Err("panicked".to_string()));
        match outcome {
            Ok(()) => {
                passed += 1;
                println!("rig-guest: {name} passed in {:.1?}", started.elapsed());
                say(&format!("test {name} ok"));
            }
            Err(why) => {
                failed += 1;
                say(&format!("test {name} FAILED {}", why.replace('\n', " / ")));
            }
        }
    }
    say(&format!("result passed={passed} failed={failed}"));
    if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
