#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{os::unix::fs::PermissionsExt, sync::Arc};

use x509_parser::extensions::{GeneralName, ParsedExtension};

use super::*;

fn hosts(list: &[&str]) -> Vec<String> {
    list.iter().map(|h| h.to_string()).collect()
}

fn der_of(pem: &str) -> CertificateDer<'static> {
    rustls_pemfile::certs(&mut pem.as_bytes())
        .next()
        .unwrap()
        .unwrap()
}

fn permitted_dns(pem: &str) -> (Vec<String>, usize) {
    let der = der_of(pem);
    let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
    let mut permitted = Vec::new();
    let mut excluded = 0;
    for ext in cert.extensions() {
        if let ParsedExtension::NameConstraints(nc) = ext.parsed_extension() {
            assert!(ext.critical, "name constraints must be critical");
            for subtree in nc.permitted_subtrees.iter().flatten() {
                if let GeneralName::DNSName(name) = subtree.base {
                    permitted.push(name.to_owned());
                }
            }
            excluded = nc.excluded_subtrees.as_ref().map_or(0, Vec::len);
        }
    }
    permitted.sort();
    (permitted, excluded)
}

#[test]
fn the_ca_is_name_constrained_to_the_upstream_hosts_and_excludes_ip_addresses() {
    let dir = tempfile::tempdir().unwrap();
    let ca = LocalCa::load_or_create(dir.path(), &hosts(&["api.openai.com", "API.Anthropic.com"]))
        .unwrap();
    let (permitted, excluded) = permitted_dns(ca.ca_pem());
    assert_eq!(permitted, vec!["api.anthropic.com", "api.openai.com"]);
    assert_eq!(excluded, 2);
    let key = dir.path().join("ca/ca-key.pem");
    let mode = std::fs::metadata(&key).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    assert_eq!(ca_pem_in(dir.path()).unwrap(), ca.ca_pem());
}

#[test]
fn a_key_file_readable_by_others_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    LocalCa::load_or_create(dir.path(), &hosts(&["api.openai.com"])).unwrap();
    let key = dir.path().join("ca/ca-key.pem");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o640)).unwrap();
    let err = LocalCa::load_or_create(dir.path(), &hosts(&["api.openai.com"])).unwrap_err();
    assert!(
        matches!(err, TlsError::KeyPermissions { mode: 0o640, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("0600"), "{err}");
}

#[test]
fn a_restart_with_the_same_hosts_keeps_the_ca() {
    let dir = tempfile::tempdir().unwrap();
    let first = LocalCa::load_or_create(dir.path(), &hosts(&["api.openai.com"])).unwrap();
    let second = LocalCa::load_or_create(dir.path(), &hosts(&["api.openai.com"])).unwrap();
    assert_eq!(first.ca_pem(), second.ca_pem());
    assert_eq!(second.trusted_pems().count(), 1);
}

#[test]
fn changing_the_hosts_issues_a_new_ca_and_keeps_the_old_one_trusted() {
    let dir = tempfile::tempdir().unwrap();
    let first = LocalCa::load_or_create(dir.path(), &hosts(&["api.openai.com"])).unwrap();
    let second =
        LocalCa::load_or_create(dir.path(), &hosts(&["api.openai.com", "api.anthropic.com"]))
            .unwrap();
    assert_ne!(first.ca_pem(), second.ca_pem());
    let trusted: Vec<&str> = second.trusted_pems().collect();
    assert_eq!(trusted, vec![second.ca_pem(), first.ca_pem()]);
    let bundle = second.write_trust_bundle(&[]).unwrap();
    let text = std::fs::read_to_string(bundle).unwrap();
    assert!(text.contains(first.ca_pem()) && text.contains(second.ca_pem()));
}

#[test]
fn leafs_verify_against_the_ca_only_for_intercepted_hosts_and_are_cached() {
    let dir = tempfile::tempdir().unwrap();
    // Issue, then reload from disk: leafs must chain to the stored certificate.
    LocalCa::load_or_create(dir.path(), &hosts(&["api.openai.com"])).unwrap();
    let ca = Arc::new(LocalCa::load_or_create(dir.path(), &hosts(&["api.openai.com"])).unwrap());
    let (leaf, _) = ca.mint("API.OPENAI.COM").unwrap();

    let mut roots = RootCertStore::empty();
    roots.add(der_of(ca.ca_pem())).unwrap();
    let verifier =
        rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider())
            .build()
            .unwrap();
    let now = rustls::pki_types::UnixTime::now();
    let name = rustls::pki_types::ServerName::try_from("api.openai.com").unwrap();
    verifier
        .verify_server_cert(&leaf, &[], &name, &[], now)
        .unwrap();

    assert!(matches!(
        ca.mint("example.com"),
        Err(TlsError::NotIntercepted(_))
    ));

    let cache = LeafCache::new(ca.clone());
    let a = cache.server_config("api.openai.com").unwrap();
    let b = cache.server_config("Api.OpenAI.com").unwrap();
    assert!(Arc::ptr_eq(&a, &b));
    let expired = LeafCache::with_ttl(ca, Duration::ZERO);
    let c = expired.server_config("api.openai.com").unwrap();
    let d = expired.server_config("api.openai.com").unwrap();
    assert!(!Arc::ptr_eq(&c, &d));
}

use rustls::client::danger::ServerCertVerifier;

#[test]
fn pki_init_issues_the_ca_for_the_configured_hosts_and_writes_the_bundle() {
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "[daemon]\nstate_dir = \"{}\"\n[[upstream]]\nhost = \"api.openai.com\"\nscheme = \"openai\"\ncredential = \"c\"\n[[credential]]\nname = \"c\"\nsource = \"file\"\npath = \"/x\"\n",
        dir.path().display()
    );
    let config = crate::config::Config::parse(&text, "t").unwrap();
    let pki = Pki::init(&config).unwrap();
    let ca = pki.leafs.ca();
    assert!(ca.permits("api.openai.com") && !ca.permits("example.com"));
    let bundle = std::fs::read_to_string(&pki.trust_bundle).unwrap();
    assert!(bundle.ends_with(ca.ca_pem()));
    // Agents must be able to read the bundle.
    let mode = std::fs::metadata(&pki.trust_bundle)
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o644);
}

#[test]
fn a_symlinked_key_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    LocalCa::load_or_create(dir.path(), &hosts(&["api.openai.com"])).unwrap();
    let key = dir.path().join("ca/ca-key.pem");
    let elsewhere = dir.path().join("elsewhere.pem");
    std::fs::rename(&key, &elsewhere).unwrap();
    std::os::unix::fs::symlink(&elsewhere, &key).unwrap();
    let err = LocalCa::load_or_create(dir.path(), &hosts(&["api.openai.com"])).unwrap_err();
    assert!(matches!(err, TlsError::KeyNotAFile { .. }), "{err}");
}

/// What a thief holding the CA key could sign: rejected by verifiers.
fn forged_leaf(ca: &LocalCa, san: rcgen::SanType) -> CertificateDer<'static> {
    let mut params = rcgen::CertificateParams::default();
    params.subject_alt_names = vec![san];
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    ca.sign_unchecked(params, &key).unwrap().der().clone()
}

#[test]
fn the_name_constraints_stop_a_stolen_ca_key_from_impersonating_other_sites() {
    let dir = tempfile::tempdir().unwrap();
    let ca = LocalCa::load_or_create(dir.path(), &hosts(&["api.openai.com"])).unwrap();
    let mut roots = RootCertStore::empty();
    roots.add(der_of(ca.ca_pem())).unwrap();
    let verifier =
        rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider())
            .build()
            .unwrap();
    let now = rustls::pki_types::UnixTime::now();
    let verify = |leaf: &CertificateDer<'static>, name: &str| {
        let name = rustls::pki_types::ServerName::try_from(name.to_owned()).unwrap();
        verifier.verify_server_cert(leaf, &[], &name, &[], now)
    };

    let bank = forged_leaf(
        &ca,
        rcgen::SanType::DnsName("bank.example".try_into().unwrap()),
    );
    assert!(verify(&bank, "bank.example").is_err());
    let ip = forged_leaf(&ca, rcgen::SanType::IpAddress("10.1.2.3".parse().unwrap()));
    assert!(verify(&ip, "10.1.2.3").is_err());
    // The same key signing for a permitted host verifies: the refusals above
    // come from the constraints, not from a broken chain.
    let ok = forged_leaf(
        &ca,
        rcgen::SanType::DnsName("api.openai.com".try_into().unwrap()),
    );
    verify(&ok, "api.openai.com").unwrap();
}
