//! warrant's own setup: the configuration compiles (the `check-config` dry
//! run) and the credential files are root's alone.

use std::path::Path;

use super::{
    Check, Facts,
    facts::{CredentialFile, FileProblem, Unreadable},
};
use crate::service::CheckReport;

pub fn checks(facts: &Facts) -> Vec<Check> {
    let mut checks = vec![config(
        &facts.config_path,
        facts.config_file_exists,
        &facts.config_check,
    )];
    checks.extend(facts.credential_files.iter().map(credential_file));
    checks
}

/// The config compiles as `warrant run` would compile it.
pub fn config(path: &Path, exists: bool, check: &Result<CheckReport, Unreadable>) -> Check {
    const NAME: &str = "config";
    let shown = path.display();
    match check {
        Ok(report) if exists => Check::pass(
            NAME,
            format!(
                "{shown}: {} workloads, {} upstreams, {} credentials, {} policies",
                report.workloads, report.upstreams, report.credentials, report.policies
            ),
        ),
        Ok(_) => Check::warn(
            NAME,
            format!("{shown} does not exist: the daemon runs the embedded default config"),
            format!("warrant default-config > {shown}, then edit it"),
        ),
        Err(error) => Check::fail(
            NAME,
            error.to_string(),
            format!("correct the place the error names, then: warrant check-config {shown}"),
        ),
    }
}

/// A credential file owned by root with no group or other bits (the
/// `file` source refuses any other).
pub fn credential_file(file: &CredentialFile) -> Check {
    let name = format!("credential {}", file.credential);
    let path = file.path.display();
    match &file.problem {
        None => Check::pass(name, format!("{path}: root-only")),
        Some(FileProblem::Missing) => Check::fail(
            name,
            format!("{path} does not exist: requests to its upstream get 503"),
            format!("install -m 0600 -o root -g root KEYFILE {path}"),
        ),
        Some(FileProblem::Mode(mode)) => Check::fail(
            name,
            format!(
                "{path} has mode {mode:04o}: readable or writable by group or others, so warrant refuses it"
            ),
            format!("chmod 0600 {path}"),
        ),
        Some(FileProblem::Owner(uid)) => Check::fail(
            name,
            format!("{path} is owned by uid {uid}, not root, so warrant refuses it"),
            format!("chown root:root {path}"),
        ),
        Some(FileProblem::Unreadable(why)) => {
            Check::fail(name, why.clone(), format!("check the file: ls -l {path}"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::doctor::Verdict;

    fn file(problem: Option<FileProblem>) -> CredentialFile {
        CredentialFile {
            credential: "openai-prod".into(),
            path: "/etc/warrant/credentials/openai".into(),
            problem,
        }
    }

    #[test]
    fn each_credential_file_problem_has_its_exact_fix() {
        assert_eq!(credential_file(&file(None)).verdict, Verdict::Pass);
        let fixes = [
            (
                FileProblem::Missing,
                "install -m 0600 -o root -g root KEYFILE /etc/warrant/credentials/openai",
            ),
            (
                FileProblem::Mode(0o644),
                "chmod 0600 /etc/warrant/credentials/openai",
            ),
            (
                FileProblem::Owner(1000),
                "chown root:root /etc/warrant/credentials/openai",
            ),
        ];
        for (problem, fix) in fixes {
            let check = credential_file(&file(Some(problem)));
            assert_eq!(check.verdict, Verdict::Fail);
            assert_eq!(check.fix.as_deref(), Some(fix));
            assert_eq!(check.name, "credential openai-prod");
        }
        let mode = credential_file(&file(Some(FileProblem::Mode(0o644))));
        assert!(mode.detail.contains("mode 0644"), "{}", mode.detail);
    }

    #[test]
    fn a_config_error_fails_with_its_location_and_a_missing_file_warns() {
        let path = Path::new("/etc/warrant/warrant.toml");
        let error = "/etc/warrant/warrant.toml:12:8: unknown key `listne`".to_owned();
        let check = config(path, true, &Err(Unreadable::Config(error.clone())));
        assert_eq!(check.verdict, Verdict::Fail);
        assert_eq!(check.detail, error);
        assert!(
            check
                .fix
                .unwrap_or_default()
                .contains("warrant check-config /etc/warrant/warrant.toml")
        );
        let report = CheckReport {
            workloads: 1,
            upstreams: 3,
            credentials: 3,
            policies: 1,
        };
        assert_eq!(
            config(path, true, &Ok(report.clone())).verdict,
            Verdict::Pass
        );
        let default = config(path, false, &Ok(report));
        assert_eq!(default.verdict, Verdict::Warn);
        assert!(
            default
                .fix
                .unwrap_or_default()
                .starts_with("warrant default-config >")
        );
    }
}
