//! Man pages and shell completions, generated from the same clap
//! definitions the binary parses with, so that they cannot drift from the
//! help text. `cargo xtask package` runs the hidden `warrant generate-docs`
//! and puts the results where Debian looks for them.

use std::path::{Path, PathBuf};

use clap::CommandFactory as _;
use clap_complete::Shell;

use super::Cli;

/// The shells completions are written for.
pub const SHELLS: [Shell; 3] = [Shell::Bash, Shell::Zsh, Shell::Fish];

/// Writes warrant.1 and one page per visible subcommand (warrant-status.1,
/// warrant-ca-install.1, ...) into `man_dir`, and a completion script per
/// shell into `completions_dir`. Returns the files written.
pub fn write(man_dir: &Path, completions_dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(man_dir)?;
    std::fs::create_dir_all(completions_dir)?;
    let command = Cli::command();
    // Hidden subcommands (generate-docs) get no page of their own.
    clap_mangen::generate_to(command.clone(), man_dir)?;
    let mut written: Vec<PathBuf> = std::fs::read_dir(man_dir)?
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .filter(|path| path.extension().is_some_and(|e| e == "1"))
        .collect();
    written.sort();
    // clap_complete offers hidden subcommands too: complete a copy of the
    // command without them (the top level has no arguments of its own).
    let visible = clap::Command::new("warrant")
        .version(env!("CARGO_PKG_VERSION"))
        .subcommand_required(true)
        .subcommands(
            command
                .get_subcommands()
                .filter(|s| !s.is_hide_set())
                .cloned(),
        );
    for shell in SHELLS {
        written.push(clap_complete::generate_to(
            shell,
            &mut visible.clone(),
            "warrant",
            completions_dir,
        )?);
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_page_per_visible_subcommand_and_completions_that_know_every_one() {
        let dir = tempfile::tempdir().unwrap();
        let (man, completions) = (dir.path().join("man"), dir.path().join("completions"));
        let written = write(&man, &completions).unwrap();
        let visible: Vec<String> = Cli::command()
            .get_subcommands()
            .filter(|s| !s.is_hide_set())
            .map(|s| s.get_name().to_owned())
            .collect();
        assert!(visible.contains(&"doctor".to_owned()) && visible.contains(&"audit".to_owned()));
        // roff escapes every '-' as '\-'.
        let read = |path: PathBuf| std::fs::read_to_string(path).unwrap().replace("\\-", "-");
        let top = read(man.join("warrant.1"));
        for name in &visible {
            let page = man.join(format!("warrant-{name}.1"));
            assert!(written.contains(&page), "no page for {name}: {written:?}");
            // The top page lists it, and its own page holds its help text.
            assert!(
                top.contains(name.as_str()),
                "warrant.1 does not name {name}"
            );
        }
        assert!(!man.join("warrant-generate-docs.1").exists());
        let doctor = read(man.join("warrant-doctor.1"));
        assert!(doctor.contains("Is this host ready?"), "{doctor}");
        assert!(doctor.contains("--json"), "{doctor}");
        // Reload names every section it cannot apply (the list reload
        // itself compares), in its help and in the README's Reload section.
        let command = Cli::command();
        let reload = command.find_subcommand("reload").unwrap();
        let help = reload
            .get_long_about()
            .or(reload.get_about())
            .unwrap()
            .to_string()
            .replace('\n', " ");
        let readme = include_str!("../../../README.md").replace('\n', " ");
        let section = &readme[readme.find("## Reload").unwrap()..];
        let section = &section[..section[3..].find("## ").unwrap()];
        for name in crate::service::reload::RESTART_ONLY {
            assert!(help.contains(name), "reload --help lacks {name}: {help}");
            assert!(
                section.contains(&format!("`{name}`")),
                "README's Reload lacks {name}"
            );
        }
        let audit = read(man.join("warrant-audit.1"));
        assert!(audit.contains("--summary") && audit.contains("--since"));
        for (file, shell) in [
            ("warrant.bash", "bash"),
            ("_warrant", "zsh"),
            ("warrant.fish", "fish"),
        ] {
            let script = std::fs::read_to_string(completions.join(file))
                .unwrap_or_else(|e| panic!("{shell}: {e}"));
            for name in &visible {
                assert!(
                    script.contains(name.as_str()),
                    "{shell} completion lacks {name}"
                );
            }
            assert!(
                !script.contains("generate-docs"),
                "{shell} completes a hidden command"
            );
        }
    }
}
