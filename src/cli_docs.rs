//! The man pages and shell completions, generated from the command line's
//! definition (clap_mangen, clap_complete), so they never drift from it.
//! `attestd generate` (hidden) writes them; packaging/build-deb.sh ships
//! them in the Debian package.

use std::path::{Path, PathBuf};

pub use clap_complete::Shell;

/// Writes `attestd.1` and a page per subcommand (`attestd-run.1`, ...) into
/// `dir`; returns the files written.
pub fn write_man_pages(command: clap::Command, dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir)?;
    clap_mangen::generate_to(command, dir)?;
    let mut pages: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|entry| entry.ok().map(|entry| entry.path()))
        .filter(|path| path.extension().is_some_and(|ext| ext == "1"))
        .collect();
    pages.sort();
    Ok(pages)
}

/// `shell`'s completion script for `command`. Made in memory: clap_complete
/// panics on a write error (a closed pipe), the caller reports one instead.
pub fn completions(mut command: clap::Command, shell: Shell) -> Vec<u8> {
    let name = command.get_name().to_owned();
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut command, name, &mut script);
    script
}
