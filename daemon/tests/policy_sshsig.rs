//! Executable signatures made by the real `ssh-keygen -Y sign`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{path::Path, process::Command, sync::Arc};

use sha2::{Digest, Sha256};
use warrant::{
    config::Config,
    policy::{ExeSigners, Factor, Policy, PolicyInput, PostureStore},
};
use warrant_test_support::config::BASE;

struct Signed {
    dir: tempfile::TempDir,
    public_key: String,
}

impl Signed {
    fn exe(&self) -> std::path::PathBuf {
        self.dir.path().join("agent")
    }
}

fn ssh_keygen(args: &[&str], dir: &Path) {
    let status = Command::new("/usr/bin/ssh-keygen")
        .args(args)
        .current_dir(dir)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .expect("ssh-keygen (apt-get install openssh-client)");
    assert!(status.success(), "ssh-keygen {args:?}");
}

/// A key pair and a "binary" signed with it in namespace `namespace`.
fn signed_binary(namespace: &str) -> Signed {
    let dir = tempfile::tempdir().unwrap();
    ssh_keygen(
        &[
            "-q", "-t", "ed25519", "-N", "", "-C", "release", "-f", "key",
        ],
        dir.path(),
    );
    std::fs::write(
        dir.path().join("agent"),
        b"\x7fELF pretend this is a release build",
    )
    .unwrap();
    ssh_keygen(
        &["-Y", "sign", "-n", namespace, "-f", "key", "agent"],
        dir.path(),
    );
    assert!(dir.path().join("agent.sig").exists());
    let public_key = std::fs::read_to_string(dir.path().join("key.pub"))
        .unwrap()
        .trim()
        .to_owned();
    Signed { dir, public_key }
}

fn sha256(path: &Path) -> [u8; 32] {
    Sha256::digest(std::fs::read(path).unwrap()).into()
}

fn now() -> jiff::Timestamp {
    "2026-01-14T15:00:00Z".parse().unwrap()
}

#[test]
fn signature_by_a_configured_key_verifies() {
    let s = signed_binary("warrant-exe");
    let signers = ExeSigners::new(&[&s.public_key], None).unwrap();
    let signer = signers.check(&s.exe(), &sha256(&s.exe()), now()).unwrap();
    assert!(signer.starts_with("SHA256:"), "{signer}");
}

#[test]
fn tampered_binary_fails() {
    let s = signed_binary("warrant-exe");
    let signers = ExeSigners::new(&[&s.public_key], None).unwrap();
    std::fs::write(s.exe(), b"\x7fELF pretend this is a release build, patched").unwrap();
    // Attested as the tampered bytes: the hash matches, the signature not.
    let err = signers
        .check(&s.exe(), &sha256(&s.exe()), now())
        .unwrap_err()
        .to_string();
    assert!(err.contains("does not verify"), "{err}");
}

#[test]
fn binary_swapped_after_attestation_fails() {
    let s = signed_binary("warrant-exe");
    let signers = ExeSigners::new(&[&s.public_key], None).unwrap();
    let attested = [0u8; 32];
    let err = signers
        .check(&s.exe(), &attested, now())
        .unwrap_err()
        .to_string();
    assert!(err.contains("changed since it was attested"), "{err}");
}

#[test]
fn signature_for_another_namespace_fails() {
    let s = signed_binary("file");
    let signers = ExeSigners::new(&[&s.public_key], None).unwrap();
    let err = signers
        .check(&s.exe(), &sha256(&s.exe()), now())
        .unwrap_err()
        .to_string();
    assert!(err.contains("namespace"), "{err}");
}

#[test]
fn signature_by_an_unlisted_key_fails() {
    let s = signed_binary("warrant-exe");
    let other = signed_binary("warrant-exe");
    let signers = ExeSigners::new(&[&other.public_key], None).unwrap();
    let err = signers
        .check(&s.exe(), &sha256(&s.exe()), now())
        .unwrap_err()
        .to_string();
    assert!(err.contains("not among exe_signers"), "{err}");
}

#[test]
fn missing_signature_file_fails() {
    let s = signed_binary("warrant-exe");
    std::fs::remove_file(s.dir.path().join("agent.sig")).unwrap();
    let signers = ExeSigners::new(&[&s.public_key], None).unwrap();
    let err = signers
        .check(&s.exe(), &sha256(&s.exe()), now())
        .unwrap_err()
        .to_string();
    assert!(err.contains("no signature"), "{err}");
}

#[test]
fn policy_with_exe_signers_allows_the_signed_binary_only() {
    let s = signed_binary("warrant-exe");
    let text = format!(
        "{BASE}[[policy]]\nworkload = \"agent\"\nupstreams = [\"api.openai.com\"]\nexe_signers = [\"{}\"]\n",
        s.public_key
    );
    let config = Config::parse(&text, "t.toml").unwrap();
    let posture = Arc::new(PostureStore::compile(&config.postures, &config.source).unwrap());
    let policy = Policy::compile(&config.policies, posture, &config.source).unwrap();
    let exe = s.exe();
    let hash = sha256(&exe);
    let input = PolicyInput {
        workload: "agent",
        environment: None,
        region: None,
        exe_path: Some(&exe),
        exe_sha256: Some(&hash),
        program_refusal: None,
        upstream_host: "api.openai.com",
        method: "POST",
        path: "/v1/chat/completions",
        model: None,
        project: None,
        location: None,
        body: None,
        unmetered: None,
        now: now(),
    };
    let d = policy.evaluate(&input);
    assert!(d.allowed, "{}", d.summary());
    // Another binary (different hash) in the same place is refused.
    std::fs::write(&exe, b"something else").unwrap();
    let hash = sha256(&exe);
    let d = policy.evaluate(&PolicyInput {
        exe_sha256: Some(&hash),
        program_refusal: None,
        ..input
    });
    assert!(!d.allowed);
    assert_eq!(d.deny_reasons().next().unwrap().factor, Factor::Identity);
}
