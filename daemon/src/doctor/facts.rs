//! What `warrant doctor` reads from the host, gathered once by [`gather`]
//! and handed to the checks. Gathering only reads: files, /proc, the
//! output of `systemctl --version`, `systemctl show`, `timedatectl show`,
//! adjtimex(2) without modes (a read), the kernel probe of
//! `redirect::features` (trivial programs loaded and closed, nothing
//! attached), and one `status` request on the control socket. Tests build
//! [`Facts`] by hand.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Command,
};

use jiff::Timestamp;

use crate::{
    config::{Config, CredentialSourceKind},
    control::{ControlRequest, client, status::Status},
    install::DROPIN_NAME,
    redirect::features::{self, ProbeOptions, Report},
    service::CheckReport,
};

/// Everything the checks look at.
#[derive(Debug)]
pub struct Facts {
    pub now: Timestamp,
    /// What the kernel offers each eBPF program (`redirect::features`).
    pub kernel: Report,
    /// The config file doctor was pointed at, and whether it exists (the
    /// daemon runs the embedded default when the default path does not).
    pub config_path: PathBuf,
    pub config_file_exists: bool,
    /// The config the daemon would run (None: it does not load).
    pub config: Option<Config>,
    /// `warrant check-config`'s verdict on it: the error text on failure.
    pub config_check: Result<CheckReport, Unreadable>,
    /// /proc/mounts.
    pub mounts: String,
    pub perf_event_paranoid: Option<i32>,
    /// `systemctl --version`'s number.
    pub systemd_version: Option<u32>,
    /// systemd is the init system (/run/systemd/system exists).
    pub systemd_booted: bool,
    pub credential_files: Vec<CredentialFile>,
    pub ca: CaFacts,
    pub units: Vec<UnitFacts>,
    pub clock: Clock,
    /// Local addresses of TCP sockets in LISTEN state.
    pub listening: Vec<SocketAddr>,
    /// The daemon's answer to `status` (the error text when none).
    pub daemon: Result<Box<Status>, Unreadable>,
}

/// Why doctor could not read a fact. The check that needs the fact prints
/// it as its detail. The causes are kept as their text: facts are cloned
/// and compared (tests build them by hand), which io and config errors are
/// not.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Unreadable {
    /// No config loads, so nothing it names can be found.
    #[error("the config does not load")]
    NoConfig,
    /// The config's error, as `warrant check-config` prints it.
    #[error("{0}")]
    Config(String),
    /// A file exists but cannot be read.
    #[error("{0}")]
    Io(String),
    /// Not a PEM X.509 certificate.
    #[error("{0}")]
    Certificate(String),
    /// The control socket does not answer.
    #[error("{0}")]
    Control(String),
    /// The daemon answered something else than a status.
    #[error("the daemon's status answer does not parse: {0}")]
    Answer(String),
}

/// A file a credential is read from and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CredentialFile {
    pub credential: String,
    pub path: PathBuf,
    pub problem: Option<FileProblem>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileProblem {
    Missing,
    /// Readable or writable by group or others (the mode).
    Mode(u32),
    /// Not owned by root (the owner's uid).
    Owner(u32),
    Unreadable(String),
}

/// The local CA and the bundles that should hold it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaFacts {
    pub cert_path: PathBuf,
    /// None: not created yet. Err: unreadable or not a certificate.
    pub cert: Result<Option<CaCert>, Unreadable>,
    pub bundle_path: PathBuf,
    /// The DER of every certificate in the trust bundle (None: absent).
    pub bundle: Result<Option<Vec<Vec<u8>>>, Unreadable>,
    /// The copy `warrant ca install` put in the system store, if any.
    pub system_store: Option<Vec<u8>>,
}

impl Default for CaFacts {
    /// Nothing known: no config says where the state directory is.
    fn default() -> CaFacts {
        CaFacts {
            cert_path: PathBuf::new(),
            cert: Err(Unreadable::NoConfig),
            bundle_path: PathBuf::new(),
            bundle: Ok(None),
            system_store: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaCert {
    pub der: Vec<u8>,
    pub not_after: Timestamp,
}

/// A unit warrant should redirect: tagged by `warrant tag` (a drop-in) or
/// named by a `[[workload]] unit =` selector.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UnitFacts {
    pub unit: String,
    /// The drop-in `warrant tag` wrote, as read from the file.
    pub dropin: Option<UnitSettings>,
    /// The workload whose `unit =` names it.
    pub selected_by: Option<String>,
    /// What `systemctl show` says (None: systemctl is not usable).
    pub systemd: Option<UnitShow>,
}

/// The settings doctor looks at: where a unit runs and its environment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UnitSettings {
    pub slice: Option<String>,
    pub environment: Vec<(String, String)>,
}

/// `systemctl show UNIT`'s properties that doctor reads.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UnitShow {
    /// "loaded", "not-found", ...
    pub load_state: String,
    /// "active", "inactive", "failed", ...
    pub active_state: String,
    /// The configured slice and environment (unit files and drop-ins).
    pub settings: UnitSettings,
    /// The cgroup its processes run in now (empty when not running).
    pub control_group: String,
    /// Unit files changed since systemd read them.
    pub need_daemon_reload: bool,
}

/// Whether the system clock is synchronised, and who said so.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Clock {
    pub synchronised: Option<bool>,
    pub source: &'static str,
}

/// Reads the host for the config at `config_path`.
pub fn gather(config_path: &Path) -> Facts {
    let (config, config_check) = load(config_path);
    let state_dir = config.as_ref().map(|c| c.daemon.state_dir.clone());
    let probe = ProbeOptions {
        pin_dir: config.as_ref().map_or_else(
            || ProbeOptions::default().pin_dir,
            |c| c.daemon.bpf_pin_dir.clone(),
        ),
    };
    // The probe loads programs, which kernels before 5.11 charge to
    // RLIMIT_MEMLOCK: under a root shell's default limit bpf(2) fails with
    // EPERM as if capabilities were missing. The daemon's unit sets
    // LimitMEMLOCK=infinity and the daemon lifts its own limit, so doctor
    // lifts its own (this process only) to see what the daemon will see.
    features::lift_memlock_limit();
    Facts {
        now: Timestamp::now(),
        kernel: features::probe(&probe),
        config_path: config_path.to_path_buf(),
        config_file_exists: config_path.exists(),
        config_check,
        mounts: std::fs::read_to_string("/proc/mounts").unwrap_or_default(),
        perf_event_paranoid: read_number("/proc/sys/kernel/perf_event_paranoid"),
        systemd_version: systemd_version(),
        systemd_booted: Path::new("/run/systemd/system").is_dir(),
        credential_files: config.as_ref().map(credential_files).unwrap_or_default(),
        ca: state_dir.as_deref().map(ca).unwrap_or_default(),
        units: config.as_ref().map(units).unwrap_or_default(),
        clock: clock(),
        listening: listening(),
        daemon: config
            .as_ref()
            .map_or_else(|| Err(Unreadable::NoConfig), daemon),
        config,
    }
}

fn load(path: &Path) -> (Option<Config>, Result<CheckReport, Unreadable>) {
    match crate::service::load_config(Some(path)) {
        Ok((config, _, _)) => {
            let check = crate::service::check_config(&config)
                .map_err(|e| Unreadable::Config(e.to_string()));
            (Some(config), check)
        }
        Err(error) => (None, Err(Unreadable::Config(format!("{error:#}")))),
    }
}

fn read_number(path: &str) -> Option<i32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// Runs `program args` and returns its stdout when it succeeds.
fn output(program: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(program).args(args).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// "systemd 252 (252.38-1~deb12u1)" -> 252.
fn systemd_version() -> Option<u32> {
    parse_systemd_version(&output("systemctl", &["--version"])?)
}

pub fn parse_systemd_version(text: &str) -> Option<u32> {
    let mut words = text.lines().next()?.split_whitespace();
    (words.next()? == "systemd").then_some(())?;
    words.next()?.parse().ok()
}

fn credential_files(config: &Config) -> Vec<CredentialFile> {
    let mut files = Vec::new();
    for credential in &config.credentials {
        let name = credential.name.get_ref().clone();
        let mut paths = Vec::new();
        if *credential.source.get_ref() == CredentialSourceKind::File {
            paths.extend(credential.path.clone());
        }
        paths.extend(credential.private_key_path.clone());
        for path in paths {
            files.push(CredentialFile {
                credential: name.clone(),
                problem: file_problem(&path),
                path,
            });
        }
    }
    files
}

/// The credential source's own rule (`credentials::file`): root-owned, no
/// group or other bits.
fn file_problem(path: &Path) -> Option<FileProblem> {
    use crate::credentials::file::{FileError, check_root_only};
    match check_root_only(path, 0) {
        Ok(()) => None,
        Err(FileError::Stat { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            Some(FileProblem::Missing)
        }
        Err(FileError::Mode { mode, .. }) => Some(FileProblem::Mode(mode)),
        Err(FileError::Owner { owner, .. }) => Some(FileProblem::Owner(owner)),
        Err(other) => Some(FileProblem::Unreadable(other.to_string())),
    }
}

fn ca(state_dir: &Path) -> CaFacts {
    let cert_path = state_dir.join(crate::tls::CA_CERT_FILE);
    let bundle_path = state_dir.join(crate::tls::TRUST_BUNDLE_FILE);
    let cert = match std::fs::read_to_string(&cert_path) {
        Ok(pem) => parse_ca(&pem).map(Some),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Unreadable::Io(e.to_string())),
    };
    let bundle = match std::fs::read_to_string(&bundle_path) {
        Ok(pem) => Ok(Some(certificates(&pem))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Unreadable::Io(e.to_string())),
    };
    let system = crate::install::system_ca_path(Path::new("/"));
    CaFacts {
        cert_path,
        cert,
        bundle_path,
        bundle,
        system_store: std::fs::read_to_string(system)
            .ok()
            .and_then(|pem| certificates(&pem).into_iter().next()),
    }
}

/// The DER of each CERTIFICATE block of a PEM text.
pub fn certificates(pem_text: &str) -> Vec<Vec<u8>> {
    pem::parse_many(pem_text)
        .unwrap_or_default()
        .into_iter()
        .filter(|p| p.tag() == "CERTIFICATE")
        .map(|p| p.into_contents())
        .collect()
}

pub fn parse_ca(pem_text: &str) -> Result<CaCert, Unreadable> {
    let der = certificates(pem_text)
        .into_iter()
        .next()
        .ok_or_else(|| Unreadable::Certificate("no certificate in it".to_owned()))?;
    let (_, cert) = x509_parser::parse_x509_certificate(&der)
        .map_err(|e| Unreadable::Certificate(e.to_string()))?;
    let not_after = Timestamp::from_second(cert.validity().not_after.timestamp())
        .map_err(|e| Unreadable::Certificate(e.to_string()))?;
    Ok(CaCert { der, not_after })
}

/// Units with warrant's drop-in, then those the config's `unit =`
/// selectors name.
fn units(config: &Config) -> Vec<UnitFacts> {
    let mut units: Vec<UnitFacts> = tagged_units(Path::new("/etc/systemd/system"));
    for workload in &config.workloads {
        let Some(unit) = workload.unit.as_ref().map(|u| u.get_ref().clone()) else {
            continue;
        };
        let name = workload.name.get_ref().clone();
        match units.iter_mut().find(|u| u.unit == unit) {
            Some(known) => known.selected_by = Some(name),
            None => units.push(UnitFacts {
                unit,
                selected_by: Some(name),
                ..UnitFacts::default()
            }),
        }
    }
    let systemctl = Path::new("/run/systemd/system").is_dir();
    for unit in &mut units {
        if systemctl {
            unit.systemd = show(&unit.unit);
        }
    }
    units
}

/// Units under `dir` with the drop-in `warrant tag` writes, and its settings.
pub fn tagged_units(dir: &Path) -> Vec<UnitFacts> {
    let Ok(listing) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut units: Vec<UnitFacts> = listing
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let name = entry.file_name().into_string().ok()?;
            let unit = name.strip_suffix(".d")?.to_owned();
            let text = std::fs::read_to_string(entry.path().join(DROPIN_NAME)).ok()?;
            Some(UnitFacts {
                unit,
                dropin: Some(parse_dropin(&text)),
                ..UnitFacts::default()
            })
        })
        .collect();
    units.sort_by(|a, b| a.unit.cmp(&b.unit));
    units
}

/// `Slice=` and `Environment=` of a unit file's text (the last Slice=
/// wins, as in systemd).
pub fn parse_dropin(text: &str) -> UnitSettings {
    let mut settings = UnitSettings::default();
    for line in text.lines().map(str::trim) {
        if let Some(slice) = line.strip_prefix("Slice=") {
            settings.slice = Some(slice.to_owned());
        } else if let Some(assignments) = line.strip_prefix("Environment=") {
            settings.environment.extend(parse_environment(assignments));
        }
    }
    settings
}

/// `systemctl show`'s `Environment=` value: assignments separated by
/// spaces, a value with spaces in double quotes.
pub fn parse_environment(text: &str) -> Vec<(String, String)> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut quoted = false;
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        match c {
            '"' => quoted = !quoted,
            '\\' if quoted => word.extend(chars.next()),
            c if c.is_whitespace() && !quoted => {
                if !word.is_empty() {
                    words.push(std::mem::take(&mut word));
                }
            }
            c => word.push(c),
        }
    }
    if !word.is_empty() {
        words.push(word);
    }
    words
        .into_iter()
        .filter_map(|w| w.split_once('=').map(|(k, v)| (k.to_owned(), v.to_owned())))
        .collect()
}

fn show(unit: &str) -> Option<UnitShow> {
    let text = output(
        "systemctl",
        &[
            "show",
            unit,
            "-p",
            "LoadState,ActiveState,Slice,ControlGroup,Environment,NeedDaemonReload",
        ],
    )?;
    Some(parse_show(&text))
}

pub fn parse_show(text: &str) -> UnitShow {
    let mut show = UnitShow::default();
    for line in text.lines() {
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        match key {
            "LoadState" => show.load_state = value.to_owned(),
            "ActiveState" => show.active_state = value.to_owned(),
            "Slice" if !value.is_empty() => show.settings.slice = Some(value.to_owned()),
            "ControlGroup" => show.control_group = value.to_owned(),
            "Environment" => show.settings.environment = parse_environment(value),
            "NeedDaemonReload" => show.need_daemon_reload = value == "yes",
            _ => {}
        }
    }
    show
}

/// timedatectl when systemd runs; else the kernel's own flag (adjtimex).
fn clock() -> Clock {
    if let Some(text) = output("timedatectl", &["show", "-p", "NTPSynchronized", "--value"]) {
        return Clock {
            synchronised: Some(text.trim() == "yes"),
            source: "timedatectl",
        };
    }
    // Safety: timex is plain old data, valid when zeroed; adjtimex with
    // modes = 0 only reads the kernel's clock state into the struct we own.
    let (state, timex) = unsafe {
        let mut timex: libc::timex = std::mem::zeroed();
        (libc::adjtimex(&mut timex), timex)
    };
    if state < 0 {
        return Clock::default();
    }
    Clock {
        synchronised: Some(state != libc::TIME_ERROR && timex.status & libc::STA_UNSYNC == 0),
        source: "adjtimex",
    }
}

fn listening() -> Vec<SocketAddr> {
    let mut addrs = Vec::new();
    for table in [procfs::net::tcp(), procfs::net::tcp6()] {
        for entry in table.unwrap_or_default() {
            if entry.state == procfs::net::TcpState::Listen {
                addrs.push(entry.local_address);
            }
        }
    }
    addrs
}

fn daemon(config: &Config) -> Result<Box<Status>, Unreadable> {
    let answer = client::call(&config.control.socket, &ControlRequest::Status)
        .map_err(|e| Unreadable::Control(e.to_string()))?;
    serde_json::from_value(answer)
        .map(Box::new)
        .map_err(|e| Unreadable::Answer(e.to_string()))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn systemctl_show_and_version_are_read() {
        let show = parse_show(
            "LoadState=loaded\nActiveState=active\nSlice=warrant-agents.slice\nControlGroup=/warrant-agents.slice/a.service\nEnvironment=SSL_CERT_FILE=/var/lib/warrant/trust-bundle.pem \"GREETING=hello world\" A=\\\"x\nNeedDaemonReload=no\n",
        );
        assert_eq!(show.active_state, "active");
        assert_eq!(show.settings.slice.as_deref(), Some("warrant-agents.slice"));
        assert_eq!(
            show.settings.environment,
            [
                (
                    "SSL_CERT_FILE".into(),
                    "/var/lib/warrant/trust-bundle.pem".into()
                ),
                ("GREETING".into(), "hello world".into()),
                ("A".into(), "\\x".into()),
            ]
        );
        assert!(!show.need_daemon_reload);
        assert_eq!(
            parse_systemd_version("systemd 252 (252.38-1~deb12u1)\n+PAM +AUDIT"),
            Some(252)
        );
        assert_eq!(parse_systemd_version("bash 5"), None);
    }

    #[test]
    fn units_tagged_by_warrant_are_found_by_their_drop_in() {
        let dir = tempfile::tempdir().unwrap();
        let bundle = Path::new("/var/lib/warrant/trust-bundle.pem");
        // The drop-in exactly as `warrant tag` writes it.
        let path = crate::install::dropin_path(dir.path(), "agent.service");
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, crate::install::dropin_text(bundle)).unwrap();
        // Another admin drop-in is not warrant's.
        let other = dir.path().join("etc/systemd/system/web.service.d");
        std::fs::create_dir_all(&other).unwrap();
        std::fs::write(other.join("10-limits.conf"), "[Service]\nSlice=x.slice\n").unwrap();
        let units = tagged_units(&dir.path().join("etc/systemd/system"));
        assert_eq!(units.len(), 1);
        assert_eq!(units[0].unit, "agent.service");
        let dropin = units[0].dropin.clone().unwrap();
        assert_eq!(dropin.slice.as_deref(), Some(crate::install::AGENTS_SLICE));
        assert!(
            dropin
                .environment
                .contains(&("SSL_CERT_FILE".into(), bundle.display().to_string()))
        );
    }

    #[test]
    fn the_ca_certificate_is_read_with_its_end_of_validity() {
        let dir = tempfile::tempdir().unwrap();
        let ca =
            crate::tls::LocalCa::load_or_create(dir.path(), &["api.openai.com".into()]).unwrap();
        let cert = parse_ca(ca.ca_pem()).unwrap();
        let left = cert.not_after.as_second() - Timestamp::now().as_second();
        let validity = crate::tls::CA_VALIDITY.as_secs() as i64;
        assert!(
            (validity - 86_400..=validity + 86_400).contains(&left),
            "{left}"
        );
        assert_eq!(certificates(ca.ca_pem()), [cert.der]);
        assert!(parse_ca("not a pem").is_err());
    }
}
