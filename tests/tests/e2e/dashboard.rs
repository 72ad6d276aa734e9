//! The staff dashboard in a real browser (headless Chromium over
//! WebDriver): the four scenarios of the dashboard issue. Every page a
//! scenario visits is saved under `target/dashboard-screenshots/`.

use std::time::Duration;

use ledgerline_tests::browser::Browser;
use ledgerline_tests::{TestApp, USER_PASSWORD, unique_key};
use platform::CancellationToken;
use serde_json::{Value, json};
use uuid::Uuid;

/// A running stack whose dashboard serves plain HTTP (so its cookie is not
/// `Secure`, as under `ledgerctl dev`), with the processor's partition
/// monitor storing lag and commit latency for the overview.
async fn stack() -> (TestApp, CancellationToken) {
    let app = TestApp::spawn_configured(|config| config.dashboard.cookie_secure = false).await;
    let stop = CancellationToken::new();
    processor::health::spawn_monitor(
        &app.kafka,
        app.consumer_group.clone(),
        app.pool.clone(),
        app.processor_metrics(),
        Duration::from_millis(500),
        stop.clone(),
    )
    .expect("partition monitor");
    (app, stop)
}

/// Creates a staff member with `role` and signs them in through the form.
async fn sign_in(browser: &mut Browser, app: &TestApp, role: &str) -> String {
    let email = format!("{role}-{}@bank.example", Uuid::new_v4().simple());
    app.user_token(&email, role).await;
    browser.open(&app.url("/admin")).await.expect("open");
    assert!(browser.url().await.expect("url").ends_with("/admin/login"), "not signed in: the sign-in page");
    browser.shot("sign-in").await.expect("shot");
    browser.type_into("#email", &email).await.expect("email");
    browser.type_into("#password", USER_PASSWORD).await.expect("password");
    browser.click("button[type=submit]").await.expect("submit");
    browser.wait_for_text("h1", |title| title == "Overview").await.expect("the overview after signing in");
    email
}

async fn funded_pair(app: &TestApp) -> (Uuid, Uuid) {
    let source = app.open_account("EUR").await;
    let destination = app.open_account("EUR").await;
    app.fund(source, "100.00", "EUR").await;
    (source, destination)
}

async fn transfer(app: &TestApp, source: Uuid, destination: Uuid, amount: &str) -> Value {
    let response = app.transfer(source, destination, amount, "EUR", &unique_key("dashboard")).await;
    assert_eq!(response.status(), 202);
    let body: Value = response.json().await.expect("JSON");
    app.wait_for_decision(body["transfer_id"].as_str().expect("id")).await
}

/// A `fetch` from the page, with the page's cookies: the status it got.
async fn post_from_page(browser: &Browser, path: &str, fields: Value) -> u64 {
    let script = r"
        const [path, fields, done] = arguments;
        fetch(path, { method: 'POST', body: new URLSearchParams(fields), redirect: 'manual' })
            .then((answer) => done(answer.status), (error) => done(String(error)));";
    let status = browser.run(script, json!([path, fields])).await.expect("fetch");
    status.as_u64().unwrap_or_else(|| panic!("fetch failed: {status}"))
}

async fn audited(app: &TestApp, action: &str) -> i64 {
    sqlx::query_scalar("select count(*) from audit_log where action = $1")
        .bind(action)
        .fetch_one(&app.pool)
        .await
        .expect("audit")
}

/// Scenario 1: an admin watches a transfer arrive, finds it, opens it,
/// freezes its source account behind the confirmation step, and sees the
/// next transfer from it rejected `account_frozen`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_watches_a_transfer_finds_it_and_freezes_its_source() {
    let (app, stop) = stack().await;
    let mut browser = Browser::start("1-admin").await.expect("browser");
    sign_in(&mut browser, &app, "admin").await;
    let (source, destination) = funded_pair(&app).await;
    let decided = transfer(&app, source, destination, "12.50").await;
    let transfer_id = decided["transfer_id"].as_str().expect("id").to_owned();

    // The overview's counters move without a reload.
    let applied = browser.wait_for_text("#applied", |rate| rate != "0.0").await.expect("applied per second moves");
    assert!(applied.parse::<f64>().is_ok_and(|rate| rate > 0.0), "{applied}");
    browser.wait_for_text("#processors tbody", |text| text.contains("ms") || !text.contains("No processor")).await.ok();
    browser.shot("overview").await.expect("shot");

    // Search by the source account finds it.
    browser.open(&app.url(&format!("/admin/transfers?account={source}"))).await.expect("search");
    let results = browser.wait_for_text("#transfers", |text| text.contains(&transfer_id[..8])).await.expect("found");
    assert!(results.contains("12.50 EUR"), "{results}");
    browser.shot("search").await.expect("shot");

    // The detail: both legs, the balance after, the lifecycle.
    browser.click(&format!("a[href='/admin/transfers/{transfer_id}']")).await.expect("open the transfer");
    let legs = browser.wait_for_text("#legs", |text| text.contains("-12.50 EUR")).await.expect("legs");
    assert!(legs.contains("87.50 EUR") && legs.contains("12.50 EUR"), "{legs}");
    let lifecycle = browser.text("#lifecycle").await.expect("lifecycle");
    assert!(lifecycle.contains("Accepted") && lifecycle.contains("Decided"), "{lifecycle}");
    browser.wait_for_text("#lifecycle", |text| text.contains("Events published")).await.expect("events delivered");
    browser.shot("transfer-detail").await.expect("shot");

    // Freeze the source, through the confirmation step.
    browser.open(&app.url(&format!("/admin/accounts/{source}"))).await.expect("account");
    browser.wait_for_text("#account-status", |status| status == "active").await.expect("active");
    browser.shot("account").await.expect("shot");
    browser.click("#freeze").await.expect("freeze");
    browser.wait_for_text("h1", |title| title == "Confirm: freeze").await.expect("the confirmation step");
    browser.shot("confirm-freeze").await.expect("shot");
    browser.click("#confirm").await.expect("confirm");
    browser.wait_for_text("#requested", |text| text.contains("Freeze requested")).await.expect("requested");
    browser.shot("freeze-requested").await.expect("shot");
    let mut frozen = false;
    for _ in 0..50 {
        browser.open(&app.url(&format!("/admin/accounts/{source}"))).await.expect("account");
        if browser.text("#account-status").await.expect("status") == "frozen" {
            frozen = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(frozen, "the processor froze the account");
    browser.shot("account-frozen").await.expect("shot");
    assert_eq!(audited(&app, "account.freeze_requested").await, 1);

    // The next transfer from it is rejected, and the dashboard says why.
    let refused = transfer(&app, source, destination, "1.00").await;
    assert_eq!(refused["status"], "rejected", "{refused}");
    assert_eq!(refused["reason"], "account_frozen", "{refused}");
    let refused_id = refused["transfer_id"].as_str().expect("id");
    browser.open(&app.url(&format!("/admin/transfers/{refused_id}"))).await.expect("detail");
    let reason = browser.wait_for_text("#transfer-status", |text| text.contains("rejected")).await.expect("status");
    assert!(reason.contains("account_frozen"), "{reason}");
    browser.shot("rejected-detail").await.expect("shot");
    browser.close().await;
    stop.cancel();
    assert!(app.ledger_problems().await.is_empty());
}

/// Scenario 2: support reads everything it may, sees no act button, and a
/// forged POST is refused with 403 and audited.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn support_reads_but_cannot_act_and_a_forged_post_is_refused_and_audited() {
    let (app, stop) = stack().await;
    let mut browser = Browser::start("2-support").await.expect("browser");
    sign_in(&mut browser, &app, "support").await;
    let (source, destination) = funded_pair(&app).await;
    transfer(&app, source, destination, "5.00").await;
    browser.shot("overview").await.expect("shot");
    // No section support may not read is offered.
    let navigation = browser.text("header nav").await.expect("nav");
    assert!(navigation.contains("Transfers") && !navigation.contains("Audit") && !navigation.contains("Dead letters"));

    browser.open(&app.url(&format!("/admin/accounts/{source}"))).await.expect("account");
    browser.wait_for_text("#balance", |balance| balance == "95.00 EUR").await.expect("the balance");
    assert!(!browser.has("#account-actions").await.expect("look"), "support sees no act button");
    assert!(!browser.has("#freeze").await.expect("look"));
    browser.shot("account-read-only").await.expect("shot");

    // The confirmation page is refused too, with the page saying why.
    browser.open(&app.url(&format!("/admin/accounts/{source}/status?change=freeze"))).await.expect("confirm");
    browser.wait_for_text("h1", |title| title == "Forbidden").await.expect("forbidden page");
    browser.shot("forbidden").await.expect("shot");

    // A forged POST with a valid session and CSRF token: 403, audited.
    browser.open(&app.url(&format!("/admin/accounts/{source}"))).await.expect("account");
    let csrf =
        browser.run("arguments[0](document.querySelector('input[name=csrf]').value)", json!([])).await.expect("csrf");
    let key = Uuid::new_v4().to_string();
    let fields = json!({ "csrf": csrf, "change": "freeze", "key": key });
    let status = post_from_page(&browser, &format!("/admin/accounts/{source}/status"), fields).await;
    assert_eq!(status, 403);
    assert_eq!(audited(&app, "dashboard.forbidden").await, 1);
    assert_eq!(audited(&app, "account.freeze_requested").await, 0, "nothing was requested");
    let account = app.account(source).await;
    assert_eq!(account["status"], "active", "{account}");
    browser.close().await;
    stop.cancel();
}

/// Scenario 3: a customer's credentials, a customer's and an API client's
/// bearer tokens, and a form without its CSRF token are all refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn customers_api_clients_and_forms_without_their_token_are_refused() {
    let (app, stop) = stack().await;
    let mut browser = Browser::start("3-refusals").await.expect("browser");

    // A customer signs in on the staff page: refused, audited.
    let customer = format!("customer-{}@bank.example", Uuid::new_v4().simple());
    let customer_token = app.user_token(&customer, "customer").await;
    browser.open(&app.url("/admin/login")).await.expect("sign-in page");
    browser.type_into("#email", &customer).await.expect("email");
    browser.type_into("#password", USER_PASSWORD).await.expect("password");
    browser.click("button[type=submit]").await.expect("submit");
    let notice = browser.wait_for_text(".notice", |text| text.contains("not staff")).await.expect("refused");
    assert!(notice.contains("Wrong email or password"), "{notice}");
    assert!(browser.url().await.expect("url").ends_with("/admin/login"));
    browser.shot("customer-refused").await.expect("shot");
    assert_eq!(audited(&app, "dashboard.login_refused").await, 1);

    // A wrong password: refused the same way, audited.
    browser.type_into("#email", &customer).await.expect("email");
    browser.type_into("#password", "not the password at all").await.expect("password");
    browser.click("button[type=submit]").await.expect("submit");
    browser.wait_for_text(".notice", |text| text.contains("Wrong email or password")).await.expect("refused");
    assert_eq!(audited(&app, "dashboard.login_failed").await, 1);

    // Bearer tokens open nothing: /admin knows only its session cookie.
    let no_redirects = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().expect("client");
    for token in [customer_token, app.token().await] {
        let answer = no_redirects.get(app.url("/admin")).bearer_auth(&token).send().await.expect("request");
        assert_eq!(answer.status(), 303);
        assert_eq!(answer.headers()["location"], "/admin/login");
        let answer =
            no_redirects.get(app.url("/admin/overview/stream")).bearer_auth(&token).send().await.expect("request");
        assert_eq!(answer.status(), 303);
    }

    // Signed in as an admin, the audit log shows those refusals, filtered
    // by action (underscores included).
    sign_in(&mut browser, &app, "admin").await;
    browser.open(&app.url("/admin/audit?action=dashboard.login_failed")).await.expect("audit log");
    let events = browser.wait_for_text("#audit", |text| text.contains("dashboard.login_failed")).await.expect("audit");
    assert!(!events.contains("dashboard.login_refused"), "{events}");
    browser.shot("audit-log").await.expect("shot");

    // A form without its CSRF token is refused.
    let (source, _) = funded_pair(&app).await;
    let status = post_from_page(
        &browser,
        &format!("/admin/accounts/{source}/status"),
        json!({ "change": "freeze", "key": Uuid::new_v4().to_string() }),
    )
    .await;
    assert_eq!(status, 403);
    let status = post_from_page(
        &browser,
        &format!("/admin/accounts/{source}/status"),
        json!({ "csrf": "forged", "change": "freeze", "key": Uuid::new_v4().to_string() }),
    )
    .await;
    assert_eq!(status, 403);
    assert_eq!(audited(&app, "account.freeze_requested").await, 0);
    // The page's headers: a strict policy, no framing.
    let answer = no_redirects.get(app.url("/admin/login")).send().await.expect("request");
    let policy = answer.headers()["content-security-policy"].to_str().expect("policy").to_owned();
    assert!(policy.contains("script-src 'self'") && !policy.contains("unsafe-inline"), "{policy}");
    assert_eq!(answer.headers()["x-frame-options"], "DENY");
    let cookie = answer.headers()["set-cookie"].to_str().expect("cookie").to_owned();
    assert!(cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"), "{cookie}");
    browser.close().await;
    stop.cancel();
}

/// Scenario 4: the overview keeps updating over Server-Sent Events for 10 s
/// without a reload.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_overview_keeps_updating_for_ten_seconds_without_a_reload() {
    let (app, stop) = stack().await;
    let mut browser = Browser::start("4-live").await.expect("browser");
    sign_in(&mut browser, &app, "ops").await;
    browser.run("window.ledgerlineMarker = 'same page'; arguments[0](true)", json!([])).await.expect("mark the page");
    let count = || async {
        browser.run("arguments[0](Number(document.body.dataset.updates || 0))", json!([])).await.expect("updates")
    };
    let first = count().await.as_u64().expect("a count");
    let first_stamp = browser.text("#updated").await.expect("stamp");
    let (source, destination) = funded_pair(&app).await;
    for _ in 0..3 {
        transfer(&app, source, destination, "1.00").await;
    }
    tokio::time::sleep(Duration::from_secs(10)).await;
    let last = count().await.as_u64().expect("a count");
    let last_stamp = browser.text("#updated").await.expect("stamp");
    assert!(last >= first + 8, "only {} updates in 10 s", last - first);
    assert_ne!(first_stamp, last_stamp);
    let marker = browser.run("arguments[0](window.ledgerlineMarker || null)", json!([])).await.expect("marker");
    assert_eq!(marker, "same page", "the page was reloaded");
    let bars = browser
        .run("arguments[0](document.querySelectorAll('#chart rect.applied').length)", json!([]))
        .await
        .expect("chart");
    assert!(bars.as_u64().is_some_and(|bars| bars >= 1), "the chart shows the transfers: {bars}");
    browser.shot("overview-after-10s").await.expect("shot");
    browser.close().await;
    stop.cancel();
}

/// Signs in over plain HTTP (no browser): the session cookie's value.
async fn http_sign_in(app: &TestApp, client: &reqwest::Client, email: &str) -> String {
    let page = client.get(app.url("/admin/login")).send().await.expect("sign-in page");
    let login_cookie = cookie_value(&page, "ll_login").expect("the form's cookie");
    let answer = client
        .post(app.url("/admin/login"))
        .header("cookie", format!("ll_login={login_cookie}"))
        .form(&[("email", email), ("password", USER_PASSWORD), ("csrf", &login_cookie)])
        .send()
        .await
        .expect("sign in");
    assert_eq!(answer.status(), 303, "signed in");
    cookie_value(&answer, "ll_staff").expect("the session cookie")
}

fn cookie_value(answer: &reqwest::Response, name: &str) -> Option<String> {
    answer.headers().get_all("set-cookie").iter().filter_map(|value| value.to_str().ok()).find_map(|value| {
        let (pair, _) = value.split_once(';')?;
        let (key, value) = pair.split_once('=')?;
        (key == name && !value.is_empty()).then(|| value.to_owned())
    })
}

/// A session ends when idle too long, when too old, at sign-out, and when
/// its user is frozen or loses the staff role: each then meets the sign-in
/// page.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_ends_idle_old_signed_out_frozen_or_demoted() {
    let app = TestApp::spawn_configured(|config| config.dashboard.cookie_secure = false).await;
    let client = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().expect("client");
    let email = format!("admin-{}@bank.example", Uuid::new_v4().simple());
    app.user_token(&email, "admin").await;
    let open = |session: String| {
        let client = client.clone();
        let url = app.url("/admin/transfers");
        async move { client.get(url).header("cookie", format!("ll_staff={session}")).send().await.expect("page").status() }
    };
    let age = |column: &'static str, session: &str| {
        let hash = {
            use sha2::Digest as _;
            sha2::Sha256::digest(session.as_bytes()).to_vec()
        };
        let pool = app.pool.clone();
        async move {
            sqlx::query(&format!(
                "update staff_sessions set {column} = {column} - interval '9 hours' where token_hash = $1"
            ))
            .bind(hash)
            .execute(&pool)
            .await
            .expect("age the session");
        }
    };

    let idle = http_sign_in(&app, &client, &email).await;
    assert_eq!(open(idle.clone()).await, 200);
    age("last_seen_at", &idle).await;
    assert_eq!(open(idle).await, 303, "idle past the timeout");

    let old = http_sign_in(&app, &client, &email).await;
    age("created_at", &old).await;
    assert_eq!(open(old).await, 303, "past the absolute timeout, however recently used");

    let signed_out = http_sign_in(&app, &client, &email).await;
    let page = client
        .get(app.url("/admin/transfers"))
        .header("cookie", format!("ll_staff={signed_out}"))
        .send()
        .await
        .expect("page")
        .text()
        .await
        .expect("html");
    let csrf = page.split("name=\"csrf\" value=\"").nth(1).and_then(|rest| rest.split('"').next()).expect("csrf");
    let answer = client
        .post(app.url("/admin/logout"))
        .header("cookie", format!("ll_staff={signed_out}"))
        .form(&[("csrf", csrf)])
        .send()
        .await
        .expect("sign out");
    assert_eq!(answer.status(), 303);
    assert_eq!(open(signed_out).await, 303, "signed out");

    // Watching the overview's stream is not use: it does not hold the
    // session open; a page is.
    let watched = http_sign_in(&app, &client, &email).await;
    let hash = {
        use sha2::Digest as _;
        sha2::Sha256::digest(watched.as_bytes()).to_vec()
    };
    let idle_for = |hash: Vec<u8>| {
        let pool = app.pool.clone();
        async move {
            sqlx::query_scalar::<_, f64>(
                "select extract(epoch from now() - last_seen_at)::float8 from staff_sessions where token_hash = $1",
            )
            .bind(hash)
            .fetch_one(&pool)
            .await
            .expect("session")
        }
    };
    sqlx::query("update staff_sessions set last_seen_at = now() - interval '5 minutes' where token_hash = $1")
        .bind(&hash)
        .execute(&app.pool)
        .await
        .expect("age");
    let stream = client
        .get(app.url("/admin/overview/stream"))
        .header("cookie", format!("ll_staff={watched}"))
        .send()
        .await
        .expect("stream");
    assert_eq!(stream.status(), 200);
    drop(stream);
    assert!(idle_for(hash.clone()).await > 290.0, "the stream counted as use");
    assert_eq!(open(watched).await, 200);
    assert!(idle_for(hash).await < 60.0, "a page counts as use");

    let demoted = http_sign_in(&app, &client, &email).await;
    sqlx::query("update users set role = 'customer' where email = $1")
        .bind(&email)
        .execute(&app.pool)
        .await
        .expect("demote");
    assert_eq!(open(demoted.clone()).await, 303, "no longer staff");
    sqlx::query("update users set role = 'admin' where email = $1")
        .bind(&email)
        .execute(&app.pool)
        .await
        .expect("promote");
    assert_eq!(open(demoted.clone()).await, 200, "staff again, same session");
    sqlx::query("update users set disabled_at = now() where email = $1")
        .bind(&email)
        .execute(&app.pool)
        .await
        .expect("freeze");
    assert_eq!(open(demoted).await, 303, "frozen");
}
