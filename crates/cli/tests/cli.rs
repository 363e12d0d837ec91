//! The binary as a whole: help, version, usage errors and exit codes.

mod support;

use support::{run_any, vmedia};

#[test]
fn help_lists_every_command_with_examples() {
    let (code, out, _) = run_any(vmedia().arg("--help"));
    assert_eq!(code, 0);
    for command in [
        "iso",
        "mkisofs",
        "disk",
        "boot",
        "vm",
        "netboot",
        "Examples:",
    ] {
        assert!(
            out.contains(command),
            "--help does not mention {command}:\n{out}"
        );
    }
}

#[test]
fn unknown_command_is_a_usage_error_with_exit_code_2() {
    let (code, _, err) = run_any(vmedia().arg("frobnicate"));
    assert_eq!(code, 2);
    assert!(err.contains("frobnicate"));
}

#[test]
fn version_prints_the_crate_version() {
    let (code, out, _) = run_any(vmedia().arg("--version"));
    assert_eq!(code, 0);
    assert!(out.contains(env!("CARGO_PKG_VERSION")));
}
