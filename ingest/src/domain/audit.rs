//! The audit log's writer: security events (logins and failed logins, PIN
//! failures and lockouts, password changes and resets, reused refresh
//! tokens, staff actions) with actor, subject, IP, request id and time.

use std::net::SocketAddr;

use uuid::Uuid;

use crate::AppState;

/// One event to record.
#[derive(Debug, Clone)]
pub(crate) struct Event<'a> {
    pub action: &'a str,
    pub actor_user_id: Option<Uuid>,
    pub subject_user_id: Option<Uuid>,
    pub peer: Option<SocketAddr>,
    pub request_id: &'a str,
    pub detail: serde_json::Value,
}

impl<'a> Event<'a> {
    /// What a staff member did to something other than a user (an account,
    /// an API client, a dead letter), with the detail naming it.
    #[must_use]
    pub(crate) fn by_staff(
        action: &'a str,
        staff_user_id: Uuid,
        peer: SocketAddr,
        request_id: &'a str,
        detail: serde_json::Value,
    ) -> Self {
        Self { action, actor_user_id: Some(staff_user_id), subject_user_id: None, peer: Some(peer), request_id, detail }
    }

    /// What a user did to their own account, with no more detail.
    #[must_use]
    pub(crate) fn by_user(action: &'a str, user_id: Uuid, peer: SocketAddr, request_id: &'a str) -> Self {
        Self {
            action,
            actor_user_id: Some(user_id),
            subject_user_id: Some(user_id),
            peer: Some(peer),
            request_id,
            detail: serde_json::json!({}),
        }
    }
}

/// Records an event. A failure to record is logged, not returned: the
/// request it describes has already happened.
pub(crate) async fn record(state: &AppState, event: Event<'_>) {
    let action = event.action;
    let written = match state.pool.acquire().await {
        Ok(mut connection) => record_in(&mut connection, event).await,
        Err(error) => Err(error),
    };
    if let Err(error) = written {
        tracing::error!(%error, action, "writing the audit log failed");
    }
}

/// Records an event as part of the caller's transaction: the change and
/// its audit row commit together or not at all.
///
/// # Errors
/// When the row cannot be written.
pub(crate) async fn record_in(connection: &mut sqlx::PgConnection, event: Event<'_>) -> Result<(), sqlx::Error> {
    sqlx::query!(
        r"insert into audit_log (action, actor_user_id, subject_user_id, ip, request_id, detail)
          values ($1, $2, $3, $4, $5, $6)",
        event.action,
        event.actor_user_id,
        event.subject_user_id,
        event.peer.map(|peer| peer.ip().to_string()),
        event.request_id,
        &event.detail,
    )
    .execute(connection)
    .await?;
    Ok(())
}
