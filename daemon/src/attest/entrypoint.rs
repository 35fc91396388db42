//! The script an interpreter runs: most agents are Python or Node programs,
//! and the hash of /usr/bin/python3 says little about which one.
//!
//! The interpreter is recognised by the executable's file name, and its argv
//! is parsed the way that interpreter parses it. Shebang scripts need no
//! special case: the kernel runs `interpreter [shebang-arg] script args...`,
//! which is what an explicit invocation looks like.
//!
//! argv is what the process presents now; code running inside the agent can
//! rewrite it. The entrypoint therefore tells apart programs that share a
//! cgroup and an interpreter; it is not a defence against code that already
//! runs as the workload (the threat model grants that code the workload's
//! access anyway).

use std::path::{Path, PathBuf};

use serde::Serialize;

use super::hash::{FileHash, HashCache};

/// The interpreters recognised, by executable file name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Interpreter {
    Python,
    Node,
    Bun,
    Deno,
    Ruby,
    Perl,
    Shell,
}

impl Interpreter {
    /// `python3.12`, `node`, `bash`... Versioned names count.
    pub fn from_exe_name(name: &str) -> Option<Interpreter> {
        let base = name.trim_end_matches(|c: char| c.is_ascii_digit() || c == '.');
        Some(match base {
            "python" | "pypy" => Interpreter::Python,
            "node" | "nodejs" => Interpreter::Node,
            "bun" => Interpreter::Bun,
            "deno" => Interpreter::Deno,
            "ruby" => Interpreter::Ruby,
            "perl" => Interpreter::Perl,
            "sh" | "bash" | "dash" | "zsh" | "ksh" | "mksh" => Interpreter::Shell,
            _ => return None,
        })
    }
}

/// What argv says the interpreter runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", content = "arg", rename_all = "snake_case")]
pub enum Target {
    /// A script path, as given (relative to the process's cwd, or absolute).
    Script(String),
    /// `python -m pkg.mod`.
    Module(String),
    /// `-c`/`-e` code, stdin, or a REPL: nothing on disk to hash.
    Inline,
}

/// The resolved entrypoint of an attestation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Entrypoint {
    pub interpreter: Interpreter,
    pub target: Target,
    /// The file opened, as the kernel names it; absent when unresolved.
    pub path: Option<PathBuf>,
    pub hash: FileHash,
}

/// Parses an interpreter's argv (argv[0] included).
pub fn target_of(interpreter: Interpreter, argv: &[String]) -> Target {
    let args = argv.get(1..).unwrap_or_default();
    match interpreter {
        Interpreter::Python => python_target(args),
        Interpreter::Node => generic_target(args, &NODE),
        Interpreter::Bun => generic_target(skip_subcommand(args, "run"), &BUN),
        Interpreter::Deno => generic_target(skip_subcommand(args, "run"), &DENO),
        Interpreter::Ruby => short_option_target(args, "eE", "IrCxFKTWU"),
        Interpreter::Perl => short_option_target(args, "eE", "IMmCxdD"),
        Interpreter::Shell => shell_target(args),
    }
}

fn skip_subcommand<'a>(args: &'a [String], sub: &str) -> &'a [String] {
    // `bun run x.ts` and `deno run [opts] x.ts`; also `bun x.ts`.
    match args.iter().position(|a| !a.starts_with('-')) {
        Some(i) if args[i] == sub => &args[i + 1..],
        _ => args,
    }
}

/// Python: short options may be combined ("-uB"); -c ends option parsing
/// with code, -m with a module; -W and -X take a value (attached or next).
fn python_target(args: &[String]) -> Target {
    let mut iter = args.iter();
    while let Some(arg) = iter.next() {
        if arg == "--" {
            return iter.next().map_or(Target::Inline, |s| script(s));
        }
        if arg == "-" {
            return Target::Inline;
        }
        if let Some(long) = arg.strip_prefix("--") {
            // --check-hash-based-pycs takes a value.
            if long == "check-hash-based-pycs" {
                iter.next();
            }
            continue;
        }
        let Some(flags) = arg.strip_prefix('-') else {
            return script(arg);
        };
        for (i, flag) in flags.char_indices() {
            let rest = &flags[i + flag.len_utf8()..];
            match flag {
                'c' => return Target::Inline,
                'm' => {
                    let module = if rest.is_empty() {
                        iter.next().cloned()
                    } else {
                        Some(rest.to_owned())
                    };
                    return module.map_or(Target::Inline, Target::Module);
                }
                'W' | 'X' => {
                    if rest.is_empty() {
                        iter.next();
                    }
                    break;
                }
                _ => {}
            }
        }
    }
    Target::Inline
}

struct LongOptions {
    /// Options that end parsing with inline code.
    inline: &'static [&'static str],
    /// Options whose value is the next argument (unless given with '=').
    with_value: &'static [&'static str],
}

const NODE: LongOptions = LongOptions {
    inline: &["-e", "--eval", "-p", "--print", "-i", "--interactive"],
    with_value: &[
        "-r",
        "--require",
        "--import",
        "--loader",
        "--experimental-loader",
        "--input-type",
        "--title",
        "--env-file",
        "--conditions",
        "-C",
    ],
};
const BUN: LongOptions = LongOptions {
    inline: &["-e", "--eval", "-p", "--print"],
    with_value: &["-r", "--preload", "--cwd", "--config", "-c", "--env-file"],
};
const DENO: LongOptions = LongOptions {
    inline: &["eval", "repl"],
    with_value: &["--config", "-c", "--import-map", "--location", "--env-file"],
};

fn generic_target(args: &[String], options: &LongOptions) -> Target {
    let mut iter = args.iter();
    while let Some(arg) = iter.next() {
        if arg == "--" {
            return iter.next().map_or(Target::Inline, |s| script(s));
        }
        if options.inline.contains(&arg.as_str()) || arg == "-" {
            return Target::Inline;
        }
        if arg.starts_with('-') {
            if options.with_value.contains(&arg.as_str()) {
                iter.next();
            }
            continue;
        }
        return script(arg);
    }
    Target::Inline
}

/// Ruby and Perl: single-letter options, some taking a value attached or as
/// the next argument.
fn short_option_target(args: &[String], inline: &str, with_value: &str) -> Target {
    let mut iter = args.iter();
    while let Some(arg) = iter.next() {
        if arg == "--" {
            return iter.next().map_or(Target::Inline, |s| script(s));
        }
        if arg == "-" {
            return Target::Inline;
        }
        if arg.starts_with("--") {
            continue;
        }
        let Some(flags) = arg.strip_prefix('-') else {
            return script(arg);
        };
        for (i, flag) in flags.char_indices() {
            if inline.contains(flag) {
                return Target::Inline;
            }
            if with_value.contains(flag) {
                // Value attached ("-Ilib") or, for the options that require
                // one, in the next argument.
                if flags[i + flag.len_utf8()..].is_empty() && "IrCM".contains(flag) {
                    iter.next();
                }
                break;
            }
        }
    }
    Target::Inline
}

/// sh-likes: -c runs a string; -o/+o take an option name.
fn shell_target(args: &[String]) -> Target {
    let mut iter = args.iter();
    while let Some(arg) = iter.next() {
        if arg == "--" {
            return iter.next().map_or(Target::Inline, |s| script(s));
        }
        if arg == "-" || arg == "-s" {
            return Target::Inline;
        }
        if arg.starts_with("--") {
            // bash long options (--norc, --login...) take no value, except
            // --rcfile/--init-file.
            if arg == "--rcfile" || arg == "--init-file" {
                iter.next();
            }
            continue;
        }
        if let Some(flags) = arg.strip_prefix('-').or_else(|| arg.strip_prefix('+')) {
            if flags.contains('c') {
                return Target::Inline;
            }
            if flags.contains('o') || flags.contains('O') {
                iter.next();
            }
            continue;
        }
        return script(arg);
    }
    Target::Inline
}

fn script(arg: &str) -> Target {
    Target::Script(arg.to_owned())
}

/// Resolves and hashes the entrypoint of process `tgid`, whose executable's
/// file name is `exe_name`. `None` when the executable is not a recognised
/// interpreter.
pub fn resolve(
    tgid: u32,
    exe_name: &str,
    argv: &[String],
    cache: &HashCache,
) -> Option<Entrypoint> {
    let interpreter = Interpreter::from_exe_name(exe_name)?;
    let target = target_of(interpreter, argv);
    let creds = super::process::FsCreds::of(tgid);
    let opened = match (&target, creds) {
        (Target::Inline, _) => Err(OpenError::Inline),
        (_, Err(err)) => Err(OpenError::Credentials(err)),
        (Target::Script(path), Ok(creds)) => {
            open_script(tgid, interpreter, Path::new(path), &creds)
        }
        (Target::Module(name), Ok(creds)) => open_module(tgid, name, &creds),
    };
    Some(match opened {
        Ok(mut file) => Entrypoint {
            interpreter,
            path: super::process::fd_path(&file).ok(),
            hash: cache.hash_file(&mut file),
            target,
        },
        Err(reason) => Entrypoint {
            interpreter,
            target,
            path: None,
            hash: FileHash::Unavailable {
                reason: reason.to_string(),
            },
        },
    })
}

/// Why an entrypoint could not be opened (its hash is then unavailable
/// and a selector on it fails closed).
#[derive(Debug, thiserror::Error)]
enum OpenError {
    #[error("inline code: no file to hash")]
    Inline,
    #[error("cannot read the process's credentials: {0}")]
    Credentials(#[source] std::io::Error),
    #[error("a URL, not a local file")]
    Url,
    /// The last candidate tried, and why it failed.
    #[error("{}: {source}", path.display())]
    Open {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0:?} is not a module name")]
    BadModuleName(String),
    #[error("module {0:?} not found in the process's working directory")]
    ModuleNotFound(String),
}

fn open_script(
    tgid: u32,
    interpreter: Interpreter,
    path: &Path,
    creds: &super::process::FsCreds,
) -> Result<std::fs::File, OpenError> {
    if path.to_str().is_some_and(|p| p.contains("://")) {
        return Err(OpenError::Url);
    }
    let mut candidates = Vec::new();
    // Node and Bun accept "dist/index" and "dist" for dist/index.js.
    if matches!(interpreter, Interpreter::Node | Interpreter::Bun) {
        if path.extension().is_none() {
            for ext in ["js", "mjs", "cjs", "ts"] {
                candidates.push(path.with_extension(ext));
            }
        }
        candidates.push(path.join("index.js"));
    }
    let open = |candidate: &Path| {
        super::process::open_script_in_process(tgid, candidate, creds).map_err(|source| {
            OpenError::Open {
                path: candidate.to_owned(),
                source,
            }
        })
    };
    // The path as given first; the error reported is the last candidate's.
    let mut opened = open(path);
    for candidate in &candidates {
        if opened.is_ok() {
            break;
        }
        opened = open(candidate);
    }
    opened
}

/// `python -m a.b`: a/b/__main__.py (a package) or a/b.py, looked up in the
/// process's cwd, which `-m` puts first on sys.path. Modules installed
/// elsewhere (site-packages, the standard library) are left unresolved, so a
/// selector on their hash fails closed.
fn open_module(
    tgid: u32,
    name: &str,
    creds: &super::process::FsCreds,
) -> Result<std::fs::File, OpenError> {
    if name.is_empty()
        || name
            .split('.')
            .any(|part| part.is_empty() || part.contains('/'))
    {
        return Err(OpenError::BadModuleName(name.to_owned()));
    }
    let base: PathBuf = name.split('.').collect();
    for candidate in [base.join("__main__.py"), base.with_extension("py")] {
        if let Ok(file) = super::process::open_script_in_process(tgid, &candidate, creds) {
            return Ok(file);
        }
    }
    Err(OpenError::ModuleNotFound(name.to_owned()))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn argv(args: &[&str]) -> Vec<String> {
        args.iter().map(|s| s.to_string()).collect()
    }

    fn target(exe: &str, args: &[&str]) -> Target {
        target_of(Interpreter::from_exe_name(exe).unwrap(), &argv(args))
    }

    #[test]
    fn interpreters_are_recognised_by_versioned_names() {
        assert_eq!(
            Interpreter::from_exe_name("python3.12"),
            Some(Interpreter::Python)
        );
        assert_eq!(Interpreter::from_exe_name("node"), Some(Interpreter::Node));
        assert_eq!(Interpreter::from_exe_name("dash"), Some(Interpreter::Shell));
        assert_eq!(Interpreter::from_exe_name("sleep"), None);
        assert_eq!(Interpreter::from_exe_name("pythonic"), None);
    }

    #[test]
    fn python_scripts_modules_and_inline_code() {
        let s = |p: &str| Target::Script(p.to_owned());
        assert_eq!(target("python3", &["python3", "agent.py"]), s("agent.py"));
        assert_eq!(
            target("python3", &["python3", "-u", "agent.py", "-m", "x"]),
            s("agent.py")
        );
        assert_eq!(
            target("python3", &["python3", "-W", "ignore", "-X", "dev", "a.py"]),
            s("a.py")
        );
        assert_eq!(
            target("python3", &["python3", "-uBm", "pkg.cli", "--flag"]),
            Target::Module("pkg.cli".into())
        );
        assert_eq!(
            target("python3", &["python3", "-m", "pkg"]),
            Target::Module("pkg".into())
        );
        assert_eq!(
            target("python3", &["python3", "-c", "import os"]),
            Target::Inline
        );
        assert_eq!(target("python3", &["python3"]), Target::Inline);
    }

    #[test]
    fn node_bun_deno_skip_their_options() {
        let s = |p: &str| Target::Script(p.to_owned());
        assert_eq!(
            target("node", &["node", "dist/index.js", "30"]),
            s("dist/index.js")
        );
        assert_eq!(
            target(
                "node",
                &[
                    "node",
                    "--enable-source-maps",
                    "-r",
                    "dotenv/config",
                    "main.mjs"
                ]
            ),
            s("main.mjs")
        );
        assert_eq!(target("node", &["node", "-e", "1"]), Target::Inline);
        assert_eq!(target("bun", &["bun", "run", "agent.ts"]), s("agent.ts"));
        assert_eq!(
            target("deno", &["deno", "run", "--allow-net", "agent.ts"]),
            s("agent.ts")
        );
    }

    #[test]
    fn shebang_invocations_name_the_script_after_the_interpreter() {
        let s = |p: &str| Target::Script(p.to_owned());
        // `#!/bin/sh` then `./run.sh a b`.
        assert_eq!(target("sh", &["/bin/sh", "./run.sh", "a"]), s("./run.sh"));
        // `#!/usr/bin/python3 -u`.
        assert_eq!(
            target("python3", &["/usr/bin/python3", "-u", "/opt/agent/main"]),
            s("/opt/agent/main")
        );
        assert_eq!(target("bash", &["bash", "-c", "echo"]), Target::Inline);
        assert_eq!(
            target("bash", &["bash", "-e", "-o", "pipefail", "x.sh"]),
            s("x.sh")
        );
        assert_eq!(target("perl", &["perl", "-w", "-Ilib", "x.pl"]), s("x.pl"));
        assert_eq!(target("ruby", &["ruby", "-e", "1"]), Target::Inline);
    }
}
