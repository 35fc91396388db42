//! The cloud credential sources against stand-ins of the services they call
//! (IMDSv2, STS, the GCE metadata server, Google's token endpoint, STS and
//! IAM, Azure's managed identity, Entra ID), all plain HTTP on loopback:
//! each source gets the value the service issues, sends what the service
//! requires, and no error or log line carries a secret.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{path::Path, sync::Arc};

use warrant::{
    clock::SystemClock,
    config::{CredentialConfig, Source},
    credentials::{
        self, CredentialError, CredentialKind, CredentialSource, CredentialStore, StoreOptions,
        aws::AwsKeys,
    },
};
use warrant_test_support::cloud::{
    Accepted, CredentialServices, Issuing, SA_EMAIL, Shared, run_tag, service_account_key,
};

#[derive(serde::Deserialize)]
struct Credentials {
    credential: Vec<CredentialConfig>,
}

fn my_uid() -> u32 {
    nix::unistd::geteuid().as_raw()
}

fn compile(toml_text: &str) -> Result<CredentialStore, String> {
    let parsed: Credentials = toml::from_str(toml_text).unwrap();
    let options = StoreOptions {
        file_owner_uid: my_uid(),
        credentials_directory: None,
    };
    credentials::compile(
        &parsed.credential,
        &Source::new("test.toml", toml_text),
        Arc::new(SystemClock),
        &options,
    )
    .map_err(|e| e.to_string())
}

fn write_private(path: &Path, text: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

struct World {
    services: CredentialServices,
    accepted: Shared,
    issuing_subject: String,
    role_arn: String,
    wif_audience: String,
    entra_secret: String,
    dir: tempfile::TempDir,
}

fn world() -> World {
    let accepted: Shared = Arc::new(std::sync::Mutex::new(Accepted::default()));
    let issuing = Issuing::new(&run_tag());
    let (issuing_subject, role_arn, wif_audience, entra_secret) = (
        issuing.subject_token.clone(),
        issuing.role_arn.clone(),
        issuing.wif_audience.clone(),
        issuing.entra_secret.clone(),
    );
    World {
        services: CredentialServices::start(accepted.clone(), issuing),
        accepted,
        issuing_subject,
        role_arn,
        wif_audience,
        entra_secret,
        dir: tempfile::tempdir().unwrap(),
    }
}

impl World {
    fn secrets(&self) -> Vec<String> {
        self.accepted.lock().unwrap().secrets.clone()
    }

    fn subject_file(&self) -> String {
        let path = self.dir.path().join("identity.jwt");
        write_private(&path, &format!("{}\n", self.issuing_subject));
        path.display().to_string()
    }
}

#[tokio::test]
async fn aws_imds_gives_the_instance_roles_keys_through_imdsv2() {
    let w = world();
    let store = compile(&format!(
        "[[credential]]\nname = \"role\"\nsource = \"aws-imds\"\nendpoint = \"{}/\"\n",
        w.services.base
    ))
    .unwrap();
    assert_eq!(
        store.described("role").unwrap().kind,
        CredentialKind::AwsKeys
    );
    let value = store.current("role").await.unwrap();
    let keys = AwsKeys::from_secret(&value).unwrap();
    let issued = w.accepted.lock().unwrap().aws[0].clone();
    assert_eq!(keys.access_key_id, issued.access_key_id);
    assert_eq!(*keys.secret_access_key, issued.secret_access_key);
    assert_eq!(
        keys.session_token.as_deref().map(String::as_str),
        issued.session_token.as_deref()
    );
    assert!(keys.expiration.is_some());
    // A session token first (IMDSv2), then the role listed, then its keys.
    assert_eq!(w.services.calls("imds-token"), 1);
    let status = store.status();
    assert!(status[0].expires_at.is_some());
    let shown = format!("{status:?}");
    for secret in w.secrets() {
        assert!(!shown.contains(&secret), "status shows a secret");
    }
}

#[tokio::test]
async fn aws_web_identity_assumes_the_role_with_the_token_file() {
    let w = world();
    let store = compile(&format!(
        "[[credential]]\nname = \"sts\"\nsource = \"aws-web-identity\"\nrole_arn = \"{}\"\nsubject_token_path = \"{}\"\ntoken_url = \"{}/sts/\"\nduration = \"1h\"\n",
        w.role_arn,
        w.subject_file(),
        w.services.base
    ))
    .unwrap();
    let keys = AwsKeys::from_secret(&store.current("sts").await.unwrap()).unwrap();
    assert!(keys.access_key_id.starts_with("ASIAMOCK"));
    assert!(keys.session_token.is_some() && keys.expiration.is_some());
    assert_eq!(w.services.calls("sts"), 1);

    // The web identity token from another credential (here a file one; an
    // OIDC token from `exec` or `oauth2` works the same way).
    let store = compile(&format!(
        "[[credential]]\nname = \"oidc\"\nsource = \"file\"\npath = \"{}\"\n\n[[credential]]\nname = \"sts\"\nsource = \"aws-web-identity\"\nrole_arn = \"{}\"\nsubject_token_credential = \"oidc\"\ntoken_url = \"{}/sts/\"\n",
        w.subject_file(),
        w.role_arn,
        w.services.base
    ))
    .unwrap();
    let keys = AwsKeys::from_secret(&store.current("sts").await.unwrap()).unwrap();
    assert!(keys.access_key_id.starts_with("ASIAMOCK"));
    assert_eq!(w.services.calls("sts"), 2);

    // A token STS does not accept: the AWS error code, nothing else.
    let bad = w.dir.path().join("bad.jwt");
    write_private(&bad, "eyJhbGciOiJub25lIn0.someone-else.x");
    let store = compile(&format!(
        "[[credential]]\nname = \"sts\"\nsource = \"aws-web-identity\"\nrole_arn = \"{}\"\nsubject_token_path = \"{}\"\ntoken_url = \"{}/sts/\"\n",
        w.role_arn,
        bad.display(),
        w.services.base
    ))
    .unwrap();
    let error = store.current("sts").await.unwrap_err();
    let text = warrant::error::chain(&error);
    assert!(text.contains("InvalidIdentityToken"), "{text}");
    assert!(!text.contains("someone-else"), "{text}");
}

#[tokio::test]
async fn aws_keys_from_a_file_or_a_credential_process() {
    let w = world();
    let file = w.dir.path().join("aws.json");
    write_private(
        &file,
        r#"{"Version": 1, "AccessKeyId": "AKIDFILE", "SecretAccessKey": "file-secret", "Expiration": "2099-01-01T00:00:00Z"}"#,
    );
    let script = w.dir.path().join("process.sh");
    std::fs::write(
        &script,
        "#!/bin/sh\necho '{\"Version\":1,\"AccessKeyId\":\"AKIDEXEC\",\"SecretAccessKey\":\"exec-secret\",\"SessionToken\":\"exec-token\",\"Expiration\":\"2099-01-01T00:00:00Z\"}'\n",
    )
    .unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
    let store = compile(&format!(
        "[[credential]]\nname = \"file\"\nsource = \"file\"\nformat = \"aws\"\npath = \"{}\"\n\n[[credential]]\nname = \"exec\"\nsource = \"exec\"\nformat = \"aws\"\ncommand = [\"{}\"]\n",
        file.display(),
        script.display()
    ))
    .unwrap();
    let keys = AwsKeys::from_secret(&store.current("file").await.unwrap()).unwrap();
    assert_eq!(keys.access_key_id, "AKIDFILE");
    assert!(keys.session_token.is_none());
    let keys = AwsKeys::from_secret(&store.current("exec").await.unwrap()).unwrap();
    assert_eq!(keys.access_key_id, "AKIDEXEC");
    let status = store.status();
    let exec = status.iter().find(|s| s.name == "exec").unwrap();
    assert_eq!(
        exec.expires_at,
        Some("2099-01-01T00:00:00Z".parse().unwrap())
    );

    // A file that is not credential_process JSON: refused, not quoted.
    write_private(&file, "AKIDFILE file-secret-not-json");
    let store = compile(&format!(
        "[[credential]]\nname = \"file\"\nsource = \"file\"\nformat = \"aws\"\npath = \"{}\"\n",
        file.display()
    ))
    .unwrap();
    let text = warrant::error::chain(&store.current("file").await.unwrap_err());
    assert!(text.contains("credential_process JSON"), "{text}");
    assert!(!text.contains("file-secret"), "{text}");
}

#[tokio::test]
async fn gcp_service_account_key_signs_a_jwt_the_token_endpoint_verifies() {
    let w = world();
    let key = w.dir.path().join("sa.json");
    write_private(&key, &service_account_key(&w.services.base));
    let store = compile(&format!(
        "[[credential]]\nname = \"sa\"\nsource = \"gcp-service-account\"\npath = \"{}\"\n",
        key.display()
    ))
    .unwrap();
    let token = store.current("sa").await.unwrap();
    assert!(token.expose().starts_with("ya29.sa-"));
    assert!(
        w.accepted
            .lock()
            .unwrap()
            .google
            .contains(&token.expose().to_owned())
    );
    let _ = SA_EMAIL;

    // A key file others can read has leaked already: refused at compile.
    std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    let Err(error) = compile(&format!(
        "[[credential]]\nname = \"sa\"\nsource = \"gcp-service-account\"\npath = \"{}\"\n",
        key.display()
    )) else {
        panic!("a readable key file compiled");
    };
    assert!(error.contains("mode 0644"), "{error}");
}

#[tokio::test]
async fn gcp_metadata_and_workload_identity_federation() {
    let w = world();
    let store = compile(&format!(
        "[[credential]]\nname = \"gce\"\nsource = \"gcp-metadata\"\nendpoint = \"{base}\"\n\n[[credential]]\nname = \"wif\"\nsource = \"gcp-workload-identity\"\naudience = \"{aud}\"\nsubject_token_path = \"{subject}\"\ntoken_url = \"{base}/google/sts\"\nservice_account = \"{SA_EMAIL}\"\nendpoint = \"{base}/google/iam\"\n",
        base = w.services.base,
        aud = w.wif_audience,
        subject = w.subject_file(),
    ))
    .unwrap();
    assert!(
        store
            .current("gce")
            .await
            .unwrap()
            .expose()
            .starts_with("ya29.gce-")
    );
    let impersonated = store.current("wif").await.unwrap();
    assert!(impersonated.expose().starts_with("ya29.impersonated-"));
    assert_eq!(w.services.calls("google-sts"), 1);
    assert_eq!(w.services.calls("google-iam"), 1);
}

#[tokio::test]
async fn azure_managed_identity_and_entra_client_credentials() {
    let w = world();
    let secret = w.dir.path().join("entra-secret");
    write_private(&secret, &w.entra_secret);
    let store = compile(&format!(
        "[[credential]]\nname = \"mi\"\nsource = \"azure-managed-identity\"\nendpoint = \"{base}\"\n\n[[credential]]\nname = \"entra-secret\"\nsource = \"file\"\npath = \"{secret}\"\n\n[[credential]]\nname = \"entra\"\nsource = \"oauth2\"\ntoken_url = \"{base}/entra/test-tenant/oauth2/v2.0/token\"\nclient_id = \"00000000-0000-0000-0000-000000000001\"\nclient_auth = \"client_secret_post\"\nclient_secret_credential = \"entra-secret\"\nscope = \"https://cognitiveservices.azure.com/.default\"\n",
        base = w.services.base,
        secret = secret.display(),
    ))
    .unwrap();
    let mi = store.current("mi").await.unwrap();
    assert!(mi.expose().starts_with("eyJ0eXAiOiJKV1QifQ.mi-"));
    assert!(
        store
            .status()
            .iter()
            .any(|s| s.name == "mi" && s.expires_at.is_some())
    );
    let entra = store.current("entra").await.unwrap();
    assert!(entra.expose().starts_with("eyJ0eXAiOiJKV1QifQ.entra-"));
}

#[tokio::test]
async fn a_refused_credential_is_fetched_again_once_and_not_again_at_once() {
    let w = world();
    let store = compile(&format!(
        "[[credential]]\nname = \"gce\"\nsource = \"gcp-metadata\"\nendpoint = \"{}\"\n",
        w.services.base
    ))
    .unwrap();
    let first = store.current("gce").await.unwrap();
    let fresh = store.refresh("gce", &first).await.unwrap();
    assert_ne!(fresh.expose(), first.expose());
    assert_eq!(store.current("gce").await.unwrap().expose(), fresh.expose());
    assert_eq!(w.services.calls("gce-token"), 2);
    // Another request refused with the old value gets the new one without
    // a call.
    let again = store.refresh("gce", &first).await.unwrap();
    assert_eq!(again.expose(), fresh.expose());
    // The new one refused at once: no new fetch (an agent cannot make the
    // upstream refuse on purpose to hammer the issuer).
    let refused = store.refresh("gce", &fresh).await.unwrap_err();
    assert!(matches!(refused, CredentialError::NotRefreshed { .. }));
    assert_eq!(w.services.calls("gce-token"), 2);
}

#[test]
fn cloud_sources_need_their_keys_and_refuse_a_format() {
    let missing = |text: &str, needs: &str| {
        let Err(error) = compile(text) else {
            panic!("compiled: {text}");
        };
        assert!(error.contains(needs), "{error}");
    };
    missing(
        "[[credential]]\nname = \"a\"\nsource = \"aws-web-identity\"\nsubject_token_path = \"/t\"\n",
        "needs `role_arn`",
    );
    missing(
        "[[credential]]\nname = \"a\"\nsource = \"aws-web-identity\"\nrole_arn = \"r\"\n",
        "subject_token_path",
    );
    missing(
        "[[credential]]\nname = \"a\"\nsource = \"gcp-workload-identity\"\nsubject_token_path = \"/t\"\n",
        "needs `audience`",
    );
    missing(
        "[[credential]]\nname = \"a\"\nsource = \"gcp-service-account\"\n",
        "needs `path`",
    );
    missing(
        "[[credential]]\nname = \"a\"\nsource = \"aws-imds\"\nformat = \"aws\"\n",
        "`format` applies to sources file, systemd and exec",
    );
    missing(
        "[[credential]]\nname = \"a\"\nsource = \"aws-imds\"\nendpoint = \"169.254.169.254\"\n",
        "bad endpoint",
    );
    missing(
        "[[credential]]\nname = \"a\"\nsource = \"aws-web-identity\"\nrole_arn = \"r\"\nsubject_token_path = \"/t\"\nduration = \"24h\"\n",
        "outside STS's range",
    );
    missing(
        "[[credential]]\nname = \"a\"\nsource = \"aws-web-identity\"\nrole_arn = \"r\"\nsubject_token_path = \"/t\"\ntoken_url = \"http://sts.example.com/\"\n",
        "must be https",
    );
}
