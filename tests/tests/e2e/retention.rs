//! Retention: ingest's pruning task removes recorded requests, audit
//! events, refresh tokens and password resets past their retention, a batch
//! at a time, keeps the fresh ones, and redacts the reset token of a
//! notification that died long enough ago.

use std::time::Duration;

use ledgerline_tests::{TestApp, WAIT_MAX, unique_key};
use serde_json::{Value, json};
use uuid::Uuid;

/// Ages in days, relative to the defaults: 90 days for requests, 7 years
/// for the audit log, 30 days of grace after a token's expiry.
const REQUEST_OLD_DAYS: i32 = 91;
const REQUEST_FRESH_DAYS: i32 = 89;
const AUDIT_OLD_DAYS: i32 = 7 * 365 + 1;
const AUDIT_FRESH_DAYS: i32 = 6 * 365;
const EXPIRED_OLD_DAYS: i32 = 31;
const EXPIRED_FRESH_DAYS: i32 = 29;

async fn request_aged(app: &TestApp, days: i32) -> Uuid {
    let id = Uuid::new_v4();
    sqlx::query(
        r"insert into accepted_requests (transfer_id, api_client_id, idempotency_key, request, created_at, published_at)
          values ($1, $2, $3, '{}', now() - make_interval(days => $4), now() - make_interval(days => $4))",
    )
    .bind(id)
    .bind(app.client_id)
    .bind(unique_key("old"))
    .bind(days)
    .execute(&app.pool)
    .await
    .expect("request");
    id
}

async fn audit_aged(app: &TestApp, days: i32) -> i64 {
    sqlx::query_scalar(
        "insert into audit_log (at, action) values (now() - make_interval(days => $1), 'test') returning id",
    )
    .bind(days)
    .fetch_one(&app.pool)
    .await
    .expect("audit row")
}

async fn refresh_token_expired(app: &TestApp, user_id: Uuid, days: i32) -> Uuid {
    let id = Uuid::new_v4();
    sqlx::query(
        r"insert into refresh_tokens (id, family_id, user_id, token_hash, issued_at, expires_at)
          values ($1, $1, $2, $3, now() - make_interval(days => $4 + 30), now() - make_interval(days => $4))",
    )
    .bind(id)
    .bind(user_id)
    .bind(id.as_bytes().to_vec())
    .bind(days)
    .execute(&app.pool)
    .await
    .expect("refresh token");
    id
}

async fn reset_expired(app: &TestApp, user_id: Uuid, days: i32) -> Uuid {
    let id = Uuid::new_v4();
    sqlx::query(
        r"insert into password_resets (id, user_id, token_hash, created_at, expires_at)
          values ($1, $2, $3, now() - make_interval(days => $4), now() - make_interval(days => $4))",
    )
    .bind(id)
    .bind(user_id)
    .bind(id.as_bytes().to_vec())
    .bind(days)
    .execute(&app.pool)
    .await
    .expect("password reset");
    id
}

/// A notification that ran out of attempts `minutes` ago, with a reset
/// token in its payload.
async fn dead_notification(app: &TestApp, minutes: i32) -> i64 {
    let payload = json!({ "type": "password_reset.requested", "email": "jane@example.com", "token": "s3cr3t-token" });
    sqlx::query_scalar(
        r"insert into outbox (destination, event_type, message_key, payload, attempts, dead_at, last_error)
          values ('notifications', 'password_reset.requested', 'jane', $1::json, 10,
                  now() - make_interval(mins => $2), 'HTTP 503')
          returning id",
    )
    .bind(payload.to_string())
    .bind(minutes)
    .fetch_one(&app.pool)
    .await
    .expect("dead notification")
}

async fn exists(app: &TestApp, sql: &str, id: impl ToString) -> bool {
    sqlx::query_scalar::<_, bool>(&format!("select exists ({sql} '{}')", id.to_string()))
        .fetch_one(&app.pool)
        .await
        .expect("exists")
}

async fn payload(app: &TestApp, id: i64) -> Value {
    let text: String = sqlx::query_scalar("select payload::text from outbox where id = $1")
        .bind(id)
        .fetch_one(&app.pool)
        .await
        .expect("row");
    serde_json::from_str(&text).expect("JSON")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_past_their_retention_are_pruned_in_batches_and_fresh_ones_are_kept() {
    // Rounds every second, two rows per statement: three old rows of a
    // table take two rounds.
    let app = TestApp::spawn_configured(|config| {
        config.retention.interval_s = 1;
        config.retention.batch_max = 2;
    })
    .await;
    app.user_token("jane@example.com", "customer").await;
    let jane: Uuid = sqlx::query_scalar("select id from users where email = 'jane@example.com'")
        .fetch_one(&app.pool)
        .await
        .expect("jane");

    let mut old_requests = Vec::new();
    let mut old_audit = Vec::new();
    let mut old_tokens = Vec::new();
    let mut old_resets = Vec::new();
    for _ in 0..3 {
        old_requests.push(request_aged(&app, REQUEST_OLD_DAYS).await);
        old_audit.push(audit_aged(&app, AUDIT_OLD_DAYS).await);
        old_tokens.push(refresh_token_expired(&app, jane, EXPIRED_OLD_DAYS).await);
        old_resets.push(reset_expired(&app, jane, EXPIRED_OLD_DAYS).await);
    }
    let fresh_request = request_aged(&app, REQUEST_FRESH_DAYS).await;
    let fresh_audit = audit_aged(&app, AUDIT_FRESH_DAYS).await;
    let fresh_token = refresh_token_expired(&app, jane, EXPIRED_FRESH_DAYS).await;
    let fresh_reset = reset_expired(&app, jane, EXPIRED_FRESH_DAYS).await;
    let long_dead = dead_notification(&app, 120).await;
    let just_dead = dead_notification(&app, 10).await;

    let requests = "select 1 from accepted_requests where transfer_id =";
    let audit = "select 1 from audit_log where id =";
    let tokens = "select 1 from refresh_tokens where id =";
    let resets = "select 1 from password_resets where id =";
    let deadline = tokio::time::Instant::now() + WAIT_MAX;
    loop {
        let mut left = 0;
        for (sql, ids) in [
            (requests, old_requests.iter().map(Uuid::to_string).collect::<Vec<_>>()),
            (audit, old_audit.iter().map(i64::to_string).collect()),
            (tokens, old_tokens.iter().map(Uuid::to_string).collect()),
            (resets, old_resets.iter().map(Uuid::to_string).collect()),
        ] {
            for id in ids {
                left += usize::from(exists(&app, sql, id).await);
            }
        }
        if left == 0 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{left} rows past their retention are still there");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(exists(&app, requests, fresh_request).await, "a request within its retention is kept");
    assert!(exists(&app, audit, fresh_audit).await, "an audit event within its retention is kept");
    assert!(exists(&app, tokens, fresh_token).await, "a token expired within the grace is kept");
    assert!(exists(&app, resets, fresh_reset).await, "a reset expired within the grace is kept");
    let live_sessions = app.count(&format!("select count(*) from refresh_tokens where user_id = '{jane}'")).await;
    assert_eq!(live_sessions, 2, "jane's live session and the fresh expired token");

    let deadline = tokio::time::Instant::now() + WAIT_MAX;
    while payload(&app, long_dead).await["token"] != "redacted" {
        assert!(tokio::time::Instant::now() < deadline, "the long-dead notification keeps its token");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let redacted = payload(&app, long_dead).await;
    assert_eq!(redacted["email"], "jane@example.com", "only the token goes: {redacted}");
    assert_eq!(
        payload(&app, just_dead).await["token"],
        "s3cr3t-token",
        "a notification dead for minutes may be retried"
    );
    let dead = app.count("select count(*) from outbox where dead_at is not null").await;
    assert_eq!(dead, 2, "dead rows stay for operators to see");
}
