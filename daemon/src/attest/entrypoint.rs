//! The script an interpreter runs: most agents are Python or Node programs,
//! and the hash of /usr/bin/python3 says little about which one.
//!
//! The interpreter is recognised by the executable's file name, and its argv
//! is parsed the way that interpreter parses it: an empty argument is an
//! argument (`python3 -W "" evil.py agent.py` runs evil.py), short options
//! combine (`-uWignore`), and an option taking a value takes the next
//! argument whatever it is. Shebang scripts need no special case: the kernel
//! runs `interpreter [shebang-arg] script args...`, which is what an
//! explicit invocation looks like.
//!
//! The script is hashed whatever it is (for the record), but its hash can
//! pin the program only when nothing else decides what runs. So the
//! entrypoint is *refused* for `entrypoint_sha256` ([`Entrypoint::refused`])
//! when:
//! - an option runs other code first, or is not known to be harmless
//!   (python -c, -i, -X pycache_prefix, -W with a category from a module;
//!   node -r/--require/--import/--loader, --inspect, --env-file, -e/-p;
//!   perl -M/-I; ruby -r/-I/-C; an interactive shell), or the interpreter
//!   reads configuration from its working directory (bun, deno);
//! - the script is a relative path or a `-m` module: the interpreter
//!   resolved it against the working directory it had at exec, which the
//!   process may have left since (start in /tmp, chdir to the allowed
//!   directory, then connect);
//! - Python reads the user's site directory, whose .pth files run code at
//!   start, unless -s, -I or PYTHONNOUSERSITE says otherwise;
//! - the agent could have rewritten the script after exec (`pinning`).
//!
//! argv is what the process presents at its first attestation; code running
//! inside the agent can rewrite it (README, Known limits).

use std::path::{Path, PathBuf};

use serde::Serialize;

use super::{
    hash::{FileHash, HashCache},
    pinning::Writer,
};

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
    /// Why this entrypoint cannot pin the program (`entrypoint_sha256`
    /// does not match it, whatever its hash); absent when it can.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refused: Option<String>,
}

/// argv as the interpreter reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parsed {
    pub target: Target,
    /// An option that runs other code first, or that warrant does not know.
    pub refusal: Option<String>,
    /// Python: -s or -I keeps the user site directory off sys.path.
    pub no_user_site: bool,
    /// Python: -E or -I makes it ignore PYTHON* variables.
    pub ignores_env: bool,
}

impl Parsed {
    fn new(target: Target) -> Parsed {
        Parsed {
            target,
            refusal: None,
            no_user_site: false,
            ignores_env: false,
        }
    }

    fn refuse(mut self, why: String) -> Parsed {
        self.refusal.get_or_insert(why);
        self
    }
}

/// Parses an interpreter's argv (argv[0] included).
pub fn target_of(interpreter: Interpreter, argv: &[String]) -> Target {
    parse(interpreter, argv).target
}

/// Parses an interpreter's argv (argv[0] included), with what makes it
/// unfit to pin.
pub fn parse(interpreter: Interpreter, argv: &[String]) -> Parsed {
    let args = argv.get(1..).unwrap_or_default();
    match interpreter {
        Interpreter::Python => python(args),
        Interpreter::Node => node(args),
        Interpreter::Bun | Interpreter::Deno => {
            let sub = skip_subcommand(args, "run");
            let parsed = node_like(sub);
            let name = if interpreter == Interpreter::Bun {
                "bun reads bunfig.toml"
            } else {
                "deno reads deno.json"
            };
            parsed.refuse(format!(
                "{name} from its working directory, which can preload other code"
            ))
        }
        Interpreter::Ruby => short_options(args, &RUBY),
        Interpreter::Perl => short_options(args, &PERL),
        Interpreter::Shell => shell(args),
    }
}

fn skip_subcommand<'a>(args: &'a [String], sub: &str) -> &'a [String] {
    // `bun run x.ts` and `deno run [opts] x.ts`; also `bun x.ts`.
    match args.iter().position(|a| !a.starts_with('-')) {
        Some(i) if args[i] == sub => &args[i + 1..],
        _ => args,
    }
}

fn unknown(interpreter: &str, option: &str) -> String {
    format!(
        "{interpreter} option {option:?} can run other code first, or is not known to warrant as harmless"
    )
}

/// -X options that change nothing about which code runs.
const PYTHON_X: &[&str] = &[
    "dev",
    "utf8",
    "importtime",
    "faulthandler",
    "tracemalloc",
    "showrefcount",
    "int_max_str_digits",
    "warn_default_encoding",
    "no_debug_ranges",
    "frozen_modules",
    "perf",
    "perf_jit",
    "cpu_count",
    "gil",
    "disable_remote_debug",
];

/// CPython's option parser (Python/getopt.c): short options combine, and
/// one taking a value takes the rest of its argument or the next one.
fn python(args: &[String]) -> Parsed {
    let mut parsed = Parsed::new(Target::Inline);
    let mut iter = args.iter();
    while let Some(arg) = iter.next() {
        if arg == "--" {
            parsed.target = iter.next().map_or(Target::Inline, |s| script(s));
            return parsed;
        }
        if arg == "-" {
            return parsed;
        }
        if let Some(long) = arg.strip_prefix("--") {
            let name = long.split('=').next().unwrap_or_default();
            match name {
                "check-hash-based-pycs" => {
                    if !long.contains('=') {
                        iter.next();
                    }
                }
                "help" | "version" | "help-env" | "help-xoptions" | "help-all" => {}
                _ => parsed = parsed.refuse(unknown("python", arg)),
            }
            continue;
        }
        let Some(flags) = arg.strip_prefix('-') else {
            parsed.target = script(arg);
            return parsed;
        };
        for (i, flag) in flags.char_indices() {
            let rest = &flags[i + flag.len_utf8()..];
            let mut value = || {
                if rest.is_empty() {
                    iter.next().cloned().unwrap_or_default()
                } else {
                    rest.to_owned()
                }
            };
            match flag {
                'c' => {
                    return parsed.refuse("python -c runs inline code".to_owned());
                }
                'm' => {
                    let module = value();
                    parsed.target = Target::Module(module);
                    return parsed;
                }
                'W' | 'X' => {
                    if let Some(why) = python_option_loads_code(flag, &value()) {
                        parsed = parsed.refuse(why);
                    }
                    break;
                }
                'i' => {
                    parsed = parsed.refuse(
                        "python -i enters an interactive prompt after the script: code from stdin runs in the attested process"
                            .to_owned(),
                    );
                }
                's' => parsed.no_user_site = true,
                'I' => {
                    parsed.no_user_site = true;
                    parsed.ignores_env = true;
                }
                'E' => parsed.ignores_env = true,
                'b' | 'B' | 'd' | 'O' | 'P' | 'q' | 'R' | 'S' | 'u' | 'v' | 'x' | 'h' | 'V'
                | '?' => {}
                other => {
                    parsed = parsed.refuse(unknown("python", &format!("-{other}")));
                }
            }
        }
    }
    parsed
}

/// Why python's `-W value` or `-X value` may run code other than the
/// script's, if it may.
fn python_option_loads_code(flag: char, value: &str) -> Option<String> {
    if flag == 'W' {
        // action:message:category:module:lineno; a category with a dot is
        // imported from its module first.
        return value
            .split(':')
            .nth(2)
            .is_some_and(|c| c.contains('.'))
            .then(|| {
                format!(
                    "python -W {value:?} names a warning category in a module, which Python imports first"
                )
            });
    }
    let name = value.split('=').next().unwrap_or_default();
    (!PYTHON_X.contains(&name)).then(|| unknown("python", &format!("-X {value}")))
}

/// Node options that change nothing about which code runs, and whether
/// each takes a value (after '=' or as the next argument).
const NODE_SAFE: &[(&str, bool)] = &[
    ("--enable-source-maps", false),
    ("--no-warnings", false),
    ("--no-deprecation", false),
    ("--throw-deprecation", false),
    ("--trace-deprecation", false),
    ("--trace-warnings", false),
    ("--trace-uncaught", false),
    ("--trace-exit", false),
    ("--pending-deprecation", false),
    ("--abort-on-uncaught-exception", false),
    ("--use-openssl-ca", false),
    ("--use-bundled-ca", false),
    ("--openssl-legacy-provider", false),
    ("--tls-min-v1.0", false),
    ("--tls-min-v1.1", false),
    ("--tls-min-v1.2", false),
    ("--tls-min-v1.3", false),
    ("--tls-max-v1.2", false),
    ("--tls-max-v1.3", false),
    ("--no-experimental-fetch", false),
    ("--expose-gc", false),
    ("--jitless", false),
    ("--no-addons", false),
    ("--frozen-intrinsics", false),
    ("--no-global-search-paths", false),
    ("--experimental-permission", false),
    ("--permission", false),
    ("--zero-fill-buffers", false),
    ("--report-on-fatalerror", false),
    ("--report-uncaught-exception", false),
    ("--report-on-signal", false),
    ("--report-compact", false),
    ("--max-old-space-size", true),
    ("--max-semi-space-size", true),
    ("--stack-size", true),
    ("--stack-trace-limit", true),
    ("--unhandled-rejections", true),
    ("--title", true),
    ("--dns-result-order", true),
    ("--disable-warning", true),
    ("--heapsnapshot-signal", true),
    ("--report-signal", true),
    ("--report-dir", true),
    ("--report-directory", true),
    ("--report-filename", true),
    ("--diagnostic-dir", true),
    ("--allow-fs-read", true),
    ("--allow-fs-write", true),
    ("--allow-child-process", false),
    ("--allow-worker", false),
    ("--tls-cipher-list", true),
    ("--secure-heap", true),
    ("--secure-heap-min", true),
];

/// Node takes its options before the script; both dashes and underscores
/// separate words in their names (`--inspect_brk` is `--inspect-brk`).
fn node(args: &[String]) -> Parsed {
    let mut parsed = node_like(args);
    if parsed.refusal.is_none() {
        let mut iter = args.iter();
        while let Some(arg) = iter.next() {
            if arg == "--" || arg == "-" || !arg.starts_with('-') {
                break;
            }
            let (name, has_value) = match arg.split_once('=') {
                Some((name, _)) => (name, true),
                None => (arg.as_str(), false),
            };
            let name = format!("--{}", name.trim_start_matches('-').replace('_', "-"));
            match NODE_SAFE.iter().find(|(safe, _)| *safe == name) {
                Some((_, true)) if !has_value => {
                    iter.next();
                }
                Some(_) => {}
                None => {
                    parsed = parsed.refuse(unknown("node", arg));
                    break;
                }
            }
        }
    }
    parsed
}

/// Where the script is for node, bun and deno: the first argument that is
/// not an option or an option's value.
fn node_like(args: &[String]) -> Parsed {
    const INLINE: &[&str] = &[
        "-e",
        "--eval",
        "-p",
        "--print",
        "-pe",
        "-i",
        "--interactive",
    ];
    const WITH_VALUE: &[&str] = &[
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
        "--preload",
        "--cwd",
        "--config",
        "-c",
        "--import-map",
        "--location",
        "--max-old-space-size",
        "--unhandled-rejections",
        "--dns-result-order",
        "--disable-warning",
        "--inspect-port",
    ];
    let mut iter = args.iter();
    while let Some(arg) = iter.next() {
        if arg == "--" {
            return Parsed::new(iter.next().map_or(Target::Inline, |s| script(s)));
        }
        let normalized = arg.replace('_', "-");
        if INLINE.contains(&normalized.as_str()) || arg == "-" || arg == "eval" || arg == "repl" {
            return Parsed::new(Target::Inline).refuse(format!("{arg} runs inline code"));
        }
        if arg.starts_with('-') {
            if WITH_VALUE.contains(&normalized.as_str()) {
                iter.next();
            }
            continue;
        }
        return Parsed::new(script(arg));
    }
    Parsed::new(Target::Inline)
}

/// A single-letter option table: which ones run inline code, which ones
/// take a value (attached or, for `value_next`, the next argument), which
/// ones run or find other code, and which are harmless.
struct ShortOptions {
    name: &'static str,
    inline: &'static str,
    value_attached: &'static str,
    value_next: &'static str,
    unsafe_: &'static str,
    harmless: &'static str,
    long_harmless: &'static [&'static str],
}

const RUBY: ShortOptions = ShortOptions {
    name: "ruby",
    inline: "e",
    value_attached: "rICEFKTWx0",
    value_next: "rICE",
    // -r requires a library, -I adds a load path, -C changes directory
    // before the script is found, -S looks the script up in PATH, -x
    // skips to a later #!ruby line.
    unsafe_: "rICSx",
    harmless: "wvdnpalcyhUEFKTW0",
    long_harmless: &[
        "--disable",
        "--enable",
        "--jit",
        "--yjit",
        "--encoding",
        "--external-encoding",
        "--internal-encoding",
        "--verbose",
        "--version",
        "--copyright",
        "--help",
        "--backtrace-limit",
    ],
};

const PERL: ShortOptions = ShortOptions {
    name: "perl",
    inline: "eE",
    value_attached: "0CDFilxIMmd",
    value_next: "IM",
    // -M/-m load a module first, -I adds @INC, -d runs a debugger module,
    // -S looks the script up in PATH.
    unsafe_: "IMmdS",
    harmless: "wWXTtclanpsU0CDFix",
    long_harmless: &["--help", "--version"],
};

fn short_options(args: &[String], table: &ShortOptions) -> Parsed {
    let mut parsed = Parsed::new(Target::Inline);
    let mut iter = args.iter();
    while let Some(arg) = iter.next() {
        if arg == "--" {
            parsed.target = iter.next().map_or(Target::Inline, |s| script(s));
            return parsed;
        }
        if arg == "-" {
            return parsed;
        }
        if arg.starts_with("--") {
            let name = arg.split('=').next().unwrap_or_default();
            let known = table
                .long_harmless
                .iter()
                .any(|h| name == *h || name.starts_with(&format!("{h}-")));
            if !known {
                parsed = parsed.refuse(unknown(table.name, arg));
            }
            continue;
        }
        let Some(flags) = arg.strip_prefix('-') else {
            parsed.target = script(arg);
            return parsed;
        };
        for (i, flag) in flags.char_indices() {
            if table.inline.contains(flag) {
                return parsed.refuse(format!("{} -{flag} runs inline code", table.name));
            }
            if table.unsafe_.contains(flag) || !table.harmless.contains(flag) {
                parsed = parsed.refuse(unknown(table.name, &format!("-{flag}")));
            }
            if table.value_attached.contains(flag) {
                if flags[i + flag.len_utf8()..].is_empty() && table.value_next.contains(flag) {
                    iter.next();
                }
                break;
            }
        }
    }
    parsed
}

/// sh-likes: -c runs a string; -o/+o and -O/+O take an option name; an
/// interactive or login shell first sources files its user can write.
fn shell(args: &[String]) -> Parsed {
    let mut parsed = Parsed::new(Target::Inline);
    let mut iter = args.iter();
    while let Some(arg) = iter.next() {
        if arg == "--" {
            parsed.target = iter.next().map_or(Target::Inline, |s| script(s));
            return parsed;
        }
        if arg == "-" || arg == "-s" {
            return parsed.refuse("the shell reads its commands from stdin".to_owned());
        }
        if arg.starts_with("--") {
            match arg.as_str() {
                "--rcfile" | "--init-file" => {
                    iter.next();
                    parsed = parsed.refuse(unknown("the shell", arg));
                }
                "--login" => parsed = parsed.refuse(unknown("the shell", arg)),
                _ => {}
            }
            continue;
        }
        if let Some(flags) = arg.strip_prefix('-').or_else(|| arg.strip_prefix('+')) {
            if flags.contains('c') {
                return parsed.refuse("the shell's -c runs inline code".to_owned());
            }
            if flags.contains('i') || flags.contains('l') {
                parsed = parsed.refuse(format!(
                    "shell option {arg:?} makes an interactive or login shell, which sources files first"
                ));
            }
            if flags.contains('o') || flags.contains('O') {
                iter.next();
            }
            continue;
        }
        parsed.target = script(arg);
        return parsed;
    }
    parsed
}

fn script(arg: &str) -> Target {
    Target::Script(arg.to_owned())
}

/// Resolves and hashes the entrypoint of process `tgid`, whose executable's
/// file name is `exe_name`, and says whether it can pin the program.
/// `environ` is the process's environment block (only PYTHONNOUSERSITE is
/// looked at here) and `writer` who the process is, for the question
/// whether it could have rewritten the script. `None` when the executable
/// is not a recognised interpreter.
pub fn resolve(
    tgid: u32,
    exe_name: &str,
    argv: &[String],
    environ: &[u8],
    writer: Option<&Writer>,
    cache: &HashCache,
) -> Option<Entrypoint> {
    let interpreter = Interpreter::from_exe_name(exe_name)?;
    let parsed = parse(interpreter, argv);
    let target = parsed.target.clone();
    let creds = super::process::FsCreds::of(tgid);
    let opened = match (&target, creds) {
        (Target::Inline, _) => Err(OpenError::Inline),
        (_, Err(err)) => Err(OpenError::Credentials(err)),
        (Target::Script(path), Ok(creds)) => {
            open_script(tgid, interpreter, Path::new(path), &creds)
        }
        (Target::Module(name), Ok(creds)) => open_module(tgid, name, &creds),
    };
    let mut refused = parsed.refusal.clone();
    let refuse = |refused: &mut Option<String>, why: String| {
        refused.get_or_insert(why);
    };
    match &target {
        Target::Inline => refuse(&mut refused, "inline code has no file to pin".to_owned()),
        Target::Module(name) => refuse(
            &mut refused,
            format!(
                "python -m {name} is found through the working directory the process had at exec and sys.path, which may have changed since: start the agent by its script's absolute path"
            ),
        ),
        Target::Script(path) if !Path::new(path).is_absolute() => refuse(
            &mut refused,
            format!(
                "{path:?} is a relative path, resolved against the working directory the process had at exec, which it may have left since: start the agent by its script's absolute path"
            ),
        ),
        Target::Script(_) => {}
    }
    if interpreter == Interpreter::Python
        && !parsed.no_user_site
        && (parsed.ignores_env || !super::pinning::is_set(environ, "PYTHONNOUSERSITE"))
    {
        refuse(
            &mut refused,
            "python runs the .pth files and usercustomize of the user's site directory ($HOME/.local), which the agent can write: start it with -s or -I (or PYTHONNOUSERSITE=1) for its entrypoint to be pinned"
                .to_owned(),
        );
    }
    Some(match opened {
        Ok(mut file) => {
            if let (Target::Script(path), None) = (&target, &refused) {
                let who = match writer {
                    Some(writer) => super::pinning::writable(tgid, Path::new(path), writer, &file),
                    None => Some("who the process is could not be read".to_owned()),
                };
                if let Some(why) = who {
                    refuse(
                        &mut refused,
                        format!("the agent could have rewritten its script after exec: {why}"),
                    );
                }
            }
            Entrypoint {
                interpreter,
                path: super::process::fd_path(&file).ok(),
                hash: cache.hash_file(&mut file),
                target,
                refused,
            }
        }
        Err(reason) => Entrypoint {
            interpreter,
            target,
            path: None,
            hash: FileHash::Unavailable {
                reason: reason.to_string(),
            },
            refused,
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

    fn refusal(exe: &str, args: &[&str]) -> Option<String> {
        parse(Interpreter::from_exe_name(exe).unwrap(), &argv(args)).refusal
    }

    #[test]
    fn python_arguments_are_taken_as_cpython_takes_them() {
        let s = |p: &str| Target::Script(p.to_owned());
        // An empty argument is -W's value: evil.py is the script.
        assert_eq!(
            target("python3", &["python3", "-W", "", "evil.py", "agent.py"]),
            s("evil.py")
        );
        assert_eq!(
            target("python3", &["python3", "-Wignore", "a.py"]),
            s("a.py")
        );
        assert_eq!(
            target("python3", &["python3", "-uWerror", "a.py"]),
            s("a.py")
        );
        assert_eq!(
            target("python3", &["python3", "-Xdev", "-X", "utf8", "a.py"]),
            s("a.py")
        );
        assert_eq!(target("python3", &["python3", "--", "-a.py"]), s("-a.py"));
        assert_eq!(
            target(
                "python3",
                &["python3", "--check-hash-based-pycs", "always", "a.py"]
            ),
            s("a.py")
        );
        assert_eq!(
            refusal("python3", &["python3", "-s", "-u", "-B", "-O", "/a.py"]),
            None
        );
        for args in [
            &["python3", "-c", "print(1)"][..],
            &["python3", "-i", "a.py"],
            &["python3", "-X", "pycache_prefix=/tmp/x", "a.py"],
            &["python3", "-Xpresite=evil", "a.py"],
            &["python3", "-W", "ignore::evil.Category", "a.py"],
            &["python3", "-Wignore::x.y", "a.py"],
            &["python3", "-J", "a.py"],
            &["python3", "--frobnicate", "a.py"],
        ] {
            assert!(refusal("python3", args).is_some(), "{args:?}");
        }
        assert!(
            refusal(
                "python3",
                &["python3", "-W", "ignore::DeprecationWarning", "a.py"]
            )
            .is_none()
        );
        let parsed = parse(Interpreter::Python, &argv(&["python3", "-I", "a.py"]));
        assert!(parsed.no_user_site && parsed.ignores_env);
        let parsed = parse(Interpreter::Python, &argv(&["python3", "-sE", "a.py"]));
        assert!(parsed.no_user_site && parsed.ignores_env);
    }

    #[test]
    fn node_options_that_load_code_first_are_refused() {
        let s = |p: &str| Target::Script(p.to_owned());
        for args in [
            &["node", "-r", "/w/evil.js", "/srv/a.js"][..],
            &["node", "--require", "/w/evil.js", "/srv/a.js"],
            &["node", "--require=/w/evil.js", "/srv/a.js"],
            &["node", "--import", "/w/evil.mjs", "/srv/a.js"],
            &["node", "--loader", "/w/l.mjs", "/srv/a.js"],
            &["node", "--experimental-loader=/w/l.mjs", "/srv/a.js"],
            &["node", "--inspect", "/srv/a.js"],
            &["node", "--inspect_brk=0", "/srv/a.js"],
            &["node", "--env-file", "/w/.env", "/srv/a.js"],
            &["node", "--watch", "/srv/a.js"],
            &["node", "-C", "evil", "/srv/a.js"],
        ] {
            assert_eq!(target("node", args), s("/srv/a.js"), "{args:?}");
            assert!(refusal("node", args).is_some(), "{args:?}");
        }
        for args in [
            &["node", "-e", "1"][..],
            &["node", "-p", "1"],
            &["node", "-"],
        ] {
            assert_eq!(target("node", args), Target::Inline);
            assert!(refusal("node", args).is_some());
        }
        assert_eq!(
            refusal(
                "node",
                &[
                    "node",
                    "--enable-source-maps",
                    "--max-old-space-size=512",
                    "--title",
                    "x",
                    "--no_warnings",
                    "/srv/a.js"
                ]
            ),
            None
        );
    }

    #[test]
    fn other_interpreters_refuse_what_loads_code_first() {
        for (exe, args) in [
            ("ruby", &["ruby", "-r", "evil", "/a.rb"][..]),
            ("ruby", &["ruby", "-I/w", "/a.rb"]),
            ("ruby", &["ruby", "-C", "/w", "a.rb"]),
            ("ruby", &["ruby", "-S", "a.rb"]),
            ("perl", &["perl", "-MEvil", "/a.pl"]),
            ("perl", &["perl", "-I", "/w", "/a.pl"]),
            ("perl", &["perl", "-d:Evil", "/a.pl"]),
            ("bash", &["bash", "-i", "/a.sh"]),
            ("bash", &["bash", "--login", "/a.sh"]),
            ("bash", &["bash", "-l", "/a.sh"]),
            ("bun", &["bun", "run", "/a.ts"]),
            ("deno", &["deno", "run", "/a.ts"]),
        ] {
            assert!(refusal(exe, args).is_some(), "{args:?}");
        }
        assert_eq!(refusal("ruby", &["ruby", "-w", "/a.rb"]), None);
        assert_eq!(refusal("perl", &["perl", "-w", "-T", "/a.pl"]), None);
        assert_eq!(
            refusal("bash", &["bash", "-e", "-o", "pipefail", "/a.sh"]),
            None
        );
        assert_eq!(
            target("ruby", &["ruby", "-E", "UTF-8", "/a.rb"]),
            Target::Script("/a.rb".into())
        );
    }
}
