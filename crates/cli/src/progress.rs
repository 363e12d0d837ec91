//! Progress bars on stderr, drawn only when stderr is a terminal.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use vmedia_io::Progress;

/// An indicatif bar behind the library crates' `Progress` hook.
pub struct Bar {
    bar: ProgressBar,
}

impl Bar {
    /// A byte-counting bar; hidden when stderr is not a terminal or `quiet` is set.
    pub fn bytes(quiet: bool) -> Bar {
        let bar = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr());
        if quiet || !std::io::IsTerminal::is_terminal(&std::io::stderr()) {
            bar.set_draw_target(ProgressDrawTarget::hidden());
        }
        bar.set_style(
            ProgressStyle::with_template(
                "{msg:>10} [{bar:40}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
            )
            .expect("static template")
            .progress_chars("=> "),
        );
        Bar { bar }
    }

    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

impl Progress for Bar {
    fn set_total(&self, total: u64) {
        self.bar.set_length(total);
    }
    fn advance(&self, done: u64) {
        self.bar.inc(done);
    }
    fn phase(&self, name: &str) {
        self.bar.set_message(name.to_string());
    }
}
