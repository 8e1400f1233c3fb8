//! A minimal test runner for `harness = false` test binaries (those that re-execute
//! themselves as child processes and so must own `main`). Understands what `cargo test`
//! passes: `--list`, `--ignored`, `--exact` and name filters. Prints libtest-style lines and
//! a closing `N passed, M failed` line; the exit code says whether every test passed.

use std::process::ExitCode;

/// Runs the selected tests, each under `catch_unwind`, and reports.
pub fn run(tests: &[(&str, fn())]) -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--list") {
        for (name, _) in tests {
            println!("{name}: test");
        }
        return ExitCode::SUCCESS;
    }
    if args.iter().any(|a| a == "--ignored") {
        // No test here is ignored.
        return ExitCode::SUCCESS;
    }
    let exact = args.iter().any(|a| a == "--exact");
    let filters: Vec<&String> = args.iter().filter(|a| !a.starts_with('-')).collect();
    let (mut passed, mut failed) = (0, 0);
    for &(name, test) in tests {
        let selected = filters.is_empty()
            || filters.iter().any(|f| {
                if exact {
                    name == f.as_str()
                } else {
                    name.contains(f.as_str())
                }
            });
        if !selected {
            continue;
        }
        eprintln!("test {name} ...");
        match std::panic::catch_unwind(test) {
            Ok(()) => {
                eprintln!("test {name} ... ok");
                passed += 1;
            }
            Err(_) => {
                eprintln!("test {name} ... FAILED");
                failed += 1;
            }
        }
    }
    println!("{passed} passed, {failed} failed");
    if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
