//! `vmedia completions SHELL` and the hidden `vmedia man --out DIR`: shell completions and man
//! pages generated from the same clap definitions the parser uses, so they never drift.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use std::io::Write;

use anyhow::Context;
use clap::CommandFactory;
use clap_complete::Shell;
use vmedia_io::{AtomicFile, OverwritePolicy};

#[derive(clap::Args)]
#[command(after_help = "Examples:
  vmedia completions bash > /etc/bash_completion.d/vmedia
  vmedia completions zsh > \"${fpath[1]}/_vmedia\"
  vmedia completions fish > ~/.config/fish/completions/vmedia.fish

The Debian package installs the bash, zsh and fish completions already.")]
pub struct CompletionsArgs {
    /// The shell to complete for
    #[arg(value_enum)]
    shell: Shell,
}

#[derive(clap::Args)]
#[command(after_help = "Examples:
  vmedia man --out target/man && man -l target/man/vmedia-iso.1

Writes vmedia.1, one page per command group (vmedia-iso.1, vmedia-disk.1, ...) and one per
subcommand (vmedia-iso-create.1, ...), as git and cargo do. For packagers (see docs/install.md).")]
pub struct ManArgs {
    /// The folder to write the pages into (created when missing)
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
}

pub fn run_completions(args: CompletionsArgs) -> anyhow::Result<ExitCode> {
    let mut command = crate::Cli::command();
    clap_complete::generate(args.shell, &mut command, "vmedia", &mut std::io::stdout());
    Ok(ExitCode::SUCCESS)
}

pub fn run_man(args: ManArgs) -> anyhow::Result<ExitCode> {
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("cannot create the man page folder {}", args.out.display()))?;
    let mut command = crate::Cli::command();
    // Building fills in each subcommand's display name ("vmedia-iso-create"), which names
    // its page, and propagates the global options into every page.
    command.build();
    let written = write_pages(&command, &args.out)?;
    println!("wrote {written} man pages to {}", args.out.display());
    Ok(ExitCode::SUCCESS)
}

/// Writes one page whole or not at all; generated pages are replaced like any build output.
fn write_page(path: &Path, page: &[u8]) -> std::io::Result<()> {
    let mut file = AtomicFile::create(path, OverwritePolicy::Replace)?;
    file.file_mut().write_all(page)?;
    file.commit()
}

/// Writes the page of `command` and of every visible subcommand below it; returns the count.
fn write_pages(command: &clap::Command, out: &Path) -> anyhow::Result<usize> {
    let name = command
        .get_display_name()
        .unwrap_or_else(|| command.get_name())
        .to_string();
    let mut page = Vec::new();
    clap_mangen::Man::new(command.clone())
        .title(name.to_uppercase())
        .section("1")
        .source(format!("vmedia {}", env!("CARGO_PKG_VERSION")))
        .manual("vmedia manual")
        .render(&mut page)
        .with_context(|| format!("cannot render the man page of {name}"))?;
    let path = out.join(format!("{name}.1"));
    write_page(&path, &page)
        .with_context(|| format!("cannot write the man page {}", path.display()))?;
    let mut count = 1;
    for sub in command.get_subcommands() {
        if sub.is_hide_set() || sub.get_name() == "help" {
            continue;
        }
        count += write_pages(sub, out)?;
    }
    Ok(count)
}
