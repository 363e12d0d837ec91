//! Kernel parameters the direct fast path adds: each one skips work that costs time under
//! emulation and changes nothing the live system relies on. They are added only when the
//! command line (the ISO's entry plus the user's `--append`) does not already set the same
//! key, so the user always has the last word; `--no-lean` adds none.
//!
//! The same parameters are what VM launchers built for fast boots pass (Kata Containers'
//! QEMU runtime and libguestfs' appliance use all three). Measured under TCG with the Debian
//! 6.1 kernel (CPU time of QEMU to the marker, median of 4): see docs/boot.md.

/// One added parameter: the key it is recognised by, the text added, and why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FastParam {
    pub key: &'static str,
    pub text: &'static str,
    pub reason: &'static str,
}

/// The parameters, in the order they are appended.
pub const FAST_PARAMS: [FastParam; 3] = [
    FastParam {
        key: "cryptomgr.notests",
        text: "cryptomgr.notests",
        // Booting with fips=1 runs the tests regardless (the kernel ignores notests then).
        reason: "skips the crypto algorithm self-tests at boot (~0.3 s of emulated CPU)",
    },
    FastParam {
        key: "tsc",
        text: "tsc=reliable",
        // A loaded host stretches the emulated timers, and the watchdog would then demote the
        // TSC to the HPET/ACPI timers, each read of which traps into QEMU.
        reason: "no clocksource watchdog: the emulated TSC is the host's, and stays the clock",
    },
    FastParam {
        key: "no_timer_check",
        text: "no_timer_check",
        // KVM guests set this themselves (kvmclock); under TCG the check's timing loop can
        // even fail on a busy host ("MP-BIOS bug: 8254 timer not connected").
        reason: "skips the IO-APIC timer routing check, a timing loop under emulation",
    },
];

/// The key of a command-line word: `tsc=reliable` -> `tsc`, `quiet` -> `quiet`.
fn key_of(word: &str) -> &str {
    word.split_once('=').map_or(word, |(key, _)| key)
}

/// Appends the fast parameters whose key `append` does not set; returns the new command line
/// and the parameters added. Words after a `--` belong to init, not the kernel, so the
/// parameters go before it.
pub fn add_fast_params(append: &str) -> (String, Vec<FastParam>) {
    let words: Vec<&str> = append.split_whitespace().collect();
    let kernel_words = match words.iter().position(|w| *w == "--") {
        Some(at) => &words[..at],
        None => &words[..],
    };
    let added: Vec<FastParam> = FAST_PARAMS
        .iter()
        .filter(|param| {
            // Module parameters may be written with '-' or '_' (the kernel treats them alike).
            let wanted = param.key.replace('-', "_");
            !kernel_words
                .iter()
                .any(|w| key_of(w).replace('-', "_") == wanted)
        })
        .copied()
        .collect();
    if added.is_empty() {
        return (append.to_string(), added);
    }
    let extra: Vec<&str> = added.iter().map(|p| p.text).collect();
    let line = match words.iter().position(|w| *w == "--") {
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
        let (line, added) = add_fast_params("console=ttyS0 quiet");
        assert_eq!(
            line,
            "console=ttyS0 quiet cryptomgr.notests tsc=reliable no_timer_check"
        );
        assert_eq!(added.len(), 3);
    }

    #[test]
    fn a_key_the_line_sets_is_left_to_the_line() {
        let (line, added) = add_fast_params("tsc=unstable cryptomgr.notests=0");
        assert_eq!(line, "tsc=unstable cryptomgr.notests=0 no_timer_check");
        assert_eq!(added, vec![FAST_PARAMS[2]]);
    }

    #[test]
    fn parameters_go_before_the_init_separator() {
        let (line, _) = add_fast_params("quiet -- single");
        assert_eq!(
            line,
            "quiet cryptomgr.notests tsc=reliable no_timer_check -- single"
        );
    }

    #[test]
    fn a_key_after_the_init_separator_does_not_count() {
        let (line, added) = add_fast_params("quiet -- tsc=unstable");
        assert_eq!(added.len(), 3, "{line}");
    }

    #[test]
    fn a_line_with_every_key_is_unchanged() {
        let text = "no_timer_check tsc=reliable cryptomgr.notests";
        assert_eq!(add_fast_params(text), (text.to_string(), vec![]));
    }
}
