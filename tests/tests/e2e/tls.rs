//! HTTPS with rustls when a certificate and key are configured, and the
//! plain-HTTP listener that redirects to it.

use std::path::PathBuf;

use ledgerline_tests::TestApp;
use serde_json::json;

struct TempCertificate {
    directory: PathBuf,
    cert_pem: String,
}

impl TempCertificate {
    fn new() -> Self {
        let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
            .expect("certificate");
        let directory = std::env::temp_dir().join(format!("ledgerline-tls-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&directory).expect("directory");
        let cert_pem = certified.cert.pem();
        std::fs::write(directory.join("cert.pem"), &cert_pem).expect("cert");
        std::fs::write(directory.join("key.pem"), certified.key_pair.serialize_pem()).expect("key");
        Self { directory, cert_pem }
    }
}

impl Drop for TempCertificate {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.directory);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_serves_https_and_redirects_plain_http_to_it() {
    let certificate = TempCertificate::new();
    let directory = certificate.directory.clone();
    let app = TestApp::spawn_configured(move |config| {
        config.tls = Some(ingest::server::tls::TlsConfig {
            cert_path: directory.join("cert.pem"),
            key_path: directory.join("key.pem"),
        });
        config.redirect_http_addr = Some("127.0.0.1:0".parse().expect("address"));
    })
    .await;
    assert!(app.address.starts_with("https://"), "{}", app.address);
    let https = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(certificate.cert_pem.as_bytes()).expect("CA"))
        .tls_built_in_root_certs(false)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("HTTPS client");

    let response = https.get(app.url("/health/live")).send().await.expect("HTTPS request");
    assert_eq!(response.status(), 204);
    assert_eq!(
        response.headers().get("strict-transport-security").and_then(|value| value.to_str().ok()),
        Some("max-age=31536000")
    );
    // A whole exchange over TLS: register, log in, who am I.
    let credentials = json!({ "email": "tls@example.com", "password": "correct horse battery" });
    let response = https.post(app.url("/v1/auth/register")).json(&credentials).send().await.expect("register");
    assert_eq!(response.status(), 201);
    let session: serde_json::Value = https
        .post(app.url("/v1/auth/login"))
        .json(&credentials)
        .send()
        .await
        .expect("login")
        .json()
        .await
        .expect("JSON");
    let me = https
        .get(app.url("/v1/me"))
        .bearer_auth(session["access_token"].as_str().expect("token"))
        .send()
        .await
        .expect("me");
    assert_eq!(me.status(), 200);

    // Plain HTTP on the TLS port gets no answer.
    let plain = reqwest::Client::new();
    let http_url = app.url("/health/live").replacen("https://", "http://", 1);
    assert!(plain.get(&http_url).send().await.is_err(), "plain HTTP on the HTTPS port was answered");
    // A client that does not trust the certificate does not get through.
    let untrusting = reqwest::Client::builder().tls_built_in_root_certs(false).build().expect("client");
    assert!(untrusting.get(app.url("/health/live")).send().await.is_err());

    // The redirect listener sends people to the same path over HTTPS.
    let redirect = app.redirect_address.clone().expect("redirect listener");
    let response = https.get(format!("{redirect}/v1/me?x=1")).send().await.expect("redirect");
    assert_eq!(response.status(), 308);
    let https_port = app.address.rsplit(':').next().expect("port");
    assert_eq!(
        response.headers().get("location").and_then(|value| value.to_str().ok()),
        Some(format!("https://127.0.0.1:{https_port}/v1/me?x=1").as_str())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cors_answers_only_configured_origins() {
    let app = TestApp::spawn_configured(|config| {
        config.cors_origins = vec!["https://app.bank.example".to_owned()];
    })
    .await;
    let preflight = |origin: &'static str| {
        app.http()
            .request(reqwest::Method::OPTIONS, app.url("/v1/me/transfers"))
            .header("Origin", origin)
            .header("Access-Control-Request-Method", "POST")
            .header("Access-Control-Request-Headers", "authorization, content-type, idempotency-key, x-step-up-token")
            .send()
    };
    let allowed = preflight("https://app.bank.example").await.expect("preflight");
    assert!(allowed.status().is_success(), "{}", allowed.status());
    let header = |response: &reqwest::Response, name: &str| {
        response.headers().get(name).and_then(|value| value.to_str().ok()).map(str::to_owned)
    };
    assert_eq!(header(&allowed, "access-control-allow-origin").as_deref(), Some("https://app.bank.example"));
    let allowed_headers = header(&allowed, "access-control-allow-headers").unwrap_or_default();
    assert!(
        allowed_headers.contains("idempotency-key") && allowed_headers.contains("x-step-up-token"),
        "{allowed_headers}"
    );
    let allowed_methods = header(&allowed, "access-control-allow-methods").unwrap_or_default();
    assert!(allowed_methods.contains("PUT"), "setting the PIN is a PUT: {allowed_methods}");
    assert_eq!(header(&allowed, "access-control-allow-credentials"), None, "tokens are headers, not cookies");

    let other = preflight("https://evil.example").await.expect("preflight");
    assert_eq!(header(&other, "access-control-allow-origin"), None);
    // A simple request from elsewhere is served, but the browser may not read it.
    let response =
        app.http().get(app.url("/health/live")).header("Origin", "https://evil.example").send().await.expect("get");
    assert_eq!(header(&response, "access-control-allow-origin"), None);
    let response =
        app.http().get(app.url("/health/live")).header("Origin", "https://app.bank.example").send().await.expect("get");
    assert_eq!(header(&response, "access-control-allow-origin").as_deref(), Some("https://app.bank.example"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_configured_origins_there_are_no_cors_headers() {
    let app = TestApp::spawn().await;
    let response = app
        .http()
        .request(reqwest::Method::OPTIONS, app.url("/v1/me"))
        .header("Origin", "https://app.bank.example")
        .header("Access-Control-Request-Method", "GET")
        .send()
        .await
        .expect("preflight");
    assert!(
        response.headers().keys().all(|name| !name.as_str().starts_with("access-control-")),
        "{:?}",
        response.headers()
    );
}
