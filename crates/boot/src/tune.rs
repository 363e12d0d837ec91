//! Kernel parameters the direct fast path adds: each one skips work that costs time under
//! emulation and changes nothing the live system relies on. They are added only when the
//! command line (the ISO's entry plus the user's `--append`) sets neither the same key nor a
//! key that would be overruled by it, so the user always has the last word; `--no-lean` adds
//! none.
//!
//! The first three are what VM launchers built for fast boots pass (Kata Containers' QEMU
//! runtime and libguestfs' appliance use all three). `mitigations=off` is added under TCG only.
//! Measured under TCG with the Debian 6.1 kernel (CPU time of QEMU to the marker): see
//! docs/boot.md.

/// One added parameter: the key it is recognised by, the text added, and why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FastParam {
    pub key: &'static str,
    pub text: &'static str,
    pub reason: &'static str,
    /// Other keys that, when the command line sets them, keep this parameter out (it would
    /// overrule them).
    pub yields_to: &'static [&'static str],
}

/// The parameters, in the order they are appended.
pub const FAST_PARAMS: [FastParam; 3] = [
    FastParam {
        key: "cryptomgr.notests",
        text: "cryptomgr.notests",
        // Booting with fips=1 runs the tests regardless (the kernel ignores notests then).
        reason: "skips the crypto algorithm self-tests at boot (~0.3 s of emulated CPU)",
        yields_to: &["fips"],
    },
    FastParam {
        key: "tsc",
        text: "tsc=reliable",
        // A loaded host stretches the emulated timers, and the watchdog would then demote the
        // TSC to the HPET/ACPI timers, each read of which traps into QEMU.
        reason: "no clocksource watchdog: the emulated TSC is the host's, and stays the clock",
        yields_to: &["clocksource"],
    },
    FastParam {
        key: "no_timer_check",
        text: "no_timer_check",
        // KVM guests set this themselves (kvmclock); under TCG the check's timing loop can
        // even fail on a busy host ("MP-BIOS bug: 8254 timer not connected").
        reason: "skips the IO-APIC timer routing check, a timing loop under emulation",
        yields_to: &[],
    },
];

/// Added only when QEMU emulates the CPU (TCG), never under KVM, where the guest runs on the
/// real, speculating CPU and its mitigations protect it.
pub const TCG_PARAMS: [FastParam; 1] = [FastParam {
    key: "mitigations",
    // TCG executes guest code in order, with no branch predictor, speculation or microarchitectural
    // buffers for a guest to train or sample; the guest kernel's retpolines and barriers only cost
    // time there (~0.1 s of CPU to the marker). Any specific mitigation option on the command line
    // keeps it out, since mitigations=off would overrule it.
    text: "mitigations=off",
    reason: "no CPU vulnerability mitigations: TCG emulates no speculative execution",
    yields_to: &[
        "spectre_v2",
        "spectre_v2_user",
        "spectre_bhi",
        "nospectre_v1",
        "nospectre_v2",
        "spec_store_bypass_disable",
        "nospec_store_bypass_disable",
        "ssbd",
        "retbleed",
        "spec_rstack_overflow",
        "mds",
        "tsx_async_abort",
        "mmio_stale_data",
        "l1tf",
        "srbds",
        "gather_data_sampling",
        "reg_file_data_sampling",
        "pti",
        "nopti",
        "kpti",
    ],
}];

/// The key of a command-line word: `tsc=reliable` -> `tsc`, `quiet` -> `quiet`.
fn key_of(word: &str) -> &str {
    word.split_once('=').map_or(word, |(key, _)| key)
}

/// Appends the fast parameters (and, when `tcg`, the TCG-only ones) whose keys `append` does
/// not set; returns the new command line and the parameters added. Words after a `--` belong
/// to init, not the kernel, so the parameters go before it.
pub fn add_fast_params(append: &str, tcg: bool) -> (String, Vec<FastParam>) {
    let words: Vec<&str> = append.split_whitespace().collect();
    let separator = words.iter().position(|w| *w == "--");
    let kernel_words = &words[..separator.unwrap_or(words.len())];
    // Module parameters may be written with '-' or '_' (the kernel treats them alike).
    let normal = |key: &str| key.replace('-', "_");
    let set_keys: Vec<String> = kernel_words.iter().map(|w| normal(key_of(w))).collect();
    let is_set = |key: &str| set_keys.iter().any(|k| *k == normal(key));
    let candidates = FAST_PARAMS
        .iter()
        .chain(if tcg { &TCG_PARAMS[..] } else { &[] });
    let added: Vec<FastParam> = candidates
        .filter(|param| !is_set(param.key) && !param.yields_to.iter().any(|k| is_set(k)))
        .copied()
        .collect();
    if added.is_empty() {
        return (append.to_string(), added);
    }
    let extra: Vec<&str> = added.iter().map(|p| p.text).collect();
    let line = match separator {
        Some(at) => {
            let mut out: Vec<&str> = words[..at].to_vec();
            out.extend(&extra);
            out.extend(&words[at..]);
            out.join(" ")
        }
        None if append.trim().is_empty() => extra.join(" "),
        None => format!("{} {}", append.trim_end(), extra.join(" ")),
    };
    (line, added)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_parameters_are_added_to_a_plain_line() {
        let (line, added) = add_fast_params("console=ttyS0 quiet", false);
        assert_eq!(
            line,
            "console=ttyS0 quiet cryptomgr.notests tsc=reliable no_timer_check"
        );
        assert_eq!(added.len(), 3);
    }

    #[test]
    fn a_key_the_line_sets_is_left_to_the_line() {
        let (line, added) = add_fast_params("tsc=unstable cryptomgr.notests=0", false);
        assert_eq!(line, "tsc=unstable cryptomgr.notests=0 no_timer_check");
        assert_eq!(added, vec![FAST_PARAMS[2]]);
    }

    #[test]
    fn parameters_go_before_the_init_separator() {
        let (line, _) = add_fast_params("quiet -- single", false);
        assert_eq!(
            line,
            "quiet cryptomgr.notests tsc=reliable no_timer_check -- single"
        );
    }

    #[test]
    fn a_key_after_the_init_separator_does_not_count() {
        let (line, added) = add_fast_params("quiet -- tsc=unstable", false);
        assert_eq!(added.len(), 3, "{line}");
    }

    #[test]
    fn a_line_with_every_key_is_unchanged() {
        let text = "no_timer_check tsc=reliable cryptomgr.notests mitigations=auto";
        assert_eq!(add_fast_params(text, true), (text.to_string(), vec![]));
    }

    #[test]
    fn mitigations_off_is_added_under_tcg_only() {
        let (line, _) = add_fast_params("quiet", true);
        assert!(line.ends_with(" mitigations=off"), "{line}");
        let (line, _) = add_fast_params("quiet", false);
        assert!(!line.contains("mitigations"), "{line}");
    }

    #[test]
    fn a_specific_mitigation_option_keeps_mitigations_off_out() {
        let (line, _) = add_fast_params("quiet spectre_v2=on", true);
        assert!(!line.contains("mitigations=off"), "{line}");
        let (line, _) = add_fast_params("quiet nopti", true);
        assert!(!line.contains("mitigations=off"), "{line}");
    }

    #[test]
    fn fips_mode_keeps_the_crypto_self_tests() {
        let (line, _) = add_fast_params("fips=1", false);
        assert!(!line.contains("cryptomgr.notests"), "{line}");
    }
}
