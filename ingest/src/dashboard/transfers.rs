//! Finding a transfer and following its life: search by id, account,
//! status, rejection reason, kind and time, paged; the detail of one
//! transfer with both legs, the balances after, and what happened to it from
//! the request to the events, webhooks and provider calls it caused.
//!
//! A search without an id reads the transfers decided in its time range
//! (the last hour unless given; at most [`RANGE_MAX_DAYS`]), through the
//! BRIN index on `decided_at`.

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::response::Response;
use chrono::{DateTime, Duration, Utc};
use maud::{Markup, html};
use rust_decimal::Decimal;
use serde::Deserialize;
use uuid::Uuid;

use super::page;
use super::session::Staff;
use crate::AppState;
use crate::domain::permissions::Permission;
use crate::error::ApiError;

/// Transfers on one page of results.
const PAGE_SIZE: i64 = 50;
/// The longest time range one search reads.
const RANGE_MAX_DAYS: i64 = 31;
/// The statuses and kinds a search may name (the ledger's own).
const STATUSES: [&str; 6] = ["completed", "rejected", "held", "posted", "voided", "expired"];
const KINDS: [&str; 7] = ["transfer", "deposit", "hold", "post", "void", "reversal", "payout"];

#[derive(Debug, Default, Deserialize)]
pub(crate) struct Search {
    id: Option<String>,
    account: Option<String>,
    status: Option<String>,
    reason: Option<String>,
    kind: Option<String>,
    /// `YYYY-MM-DDTHH:MM` in UTC (a `datetime-local` field).
    from: Option<String>,
    to: Option<String>,
    /// The page after this transfer (`decided_at` and id of the last row).
    before: Option<String>,
}

/// The filters of a search, checked.
#[derive(Debug)]
struct Filters {
    id: Option<Uuid>,
    account: Option<Uuid>,
    status: Option<String>,
    reason: Option<String>,
    kind: Option<String>,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    before: Option<(DateTime<Utc>, Uuid)>,
}

fn uuid_of(text: Option<&String>, what: &str) -> Result<Option<Uuid>, ApiError> {
    page::given(text)
        .map(|text| {
            Uuid::parse_str(text).map_err(|_| ApiError::bad_request("invalid_query", format!("{what} is not an id")))
        })
        .transpose()
}

fn one_of(text: Option<&String>, known: &[&str], what: &str) -> Result<Option<String>, ApiError> {
    page::given(text)
        .map(|text| {
            if known.contains(&text) {
                Ok(text.to_owned())
            } else {
                Err(ApiError::bad_request("invalid_query", format!("{what} is one of {}", known.join(", "))))
            }
        })
        .transpose()
}

impl Search {
    fn filters(&self, now: DateTime<Utc>) -> Result<Filters, ApiError> {
        let to = page::utc_time(self.to.as_ref(), "to")?.unwrap_or(now);
        let from = page::utc_time(self.from.as_ref(), "from")?.unwrap_or(to - Duration::hours(1));
        if from > to || to - from > Duration::days(RANGE_MAX_DAYS) {
            return Err(ApiError::bad_request(
                "invalid_query",
                format!("from must be before to, at most {RANGE_MAX_DAYS} days apart"),
            ));
        }
        let before = page::given(self.before.as_ref())
            .map(|text| {
                let (at, id) = text.split_once('_').unwrap_or_default();
                let at = DateTime::parse_from_rfc3339(at).map(|at| at.with_timezone(&Utc));
                match (at, Uuid::parse_str(id)) {
                    (Ok(at), Ok(id)) => Ok((at, id)),
                    _ => Err(ApiError::bad_request("invalid_query", "before is not a page position")),
                }
            })
            .transpose()?;
        let reason = page::given(self.reason.as_ref()).map(str::to_owned);
        if reason
            .as_ref()
            .is_some_and(|reason| reason.len() > 64 || !reason.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'))
        {
            return Err(ApiError::bad_request(
                "invalid_query",
                "reason is a rejection code such as insufficient_funds",
            ));
        }
        Ok(Filters {
            id: uuid_of(self.id.as_ref(), "id")?,
            account: uuid_of(self.account.as_ref(), "account")?,
            status: one_of(self.status.as_ref(), &STATUSES, "status")?,
            reason,
            kind: one_of(self.kind.as_ref(), &KINDS, "kind")?,
            from,
            to,
            before,
        })
    }
}

#[derive(Debug)]
struct Row {
    id: Uuid,
    kind: String,
    status: String,
    rejection_reason: Option<String>,
    source_account_id: Option<Uuid>,
    destination_account_id: Option<Uuid>,
    amount: Option<Decimal>,
    currency: Option<String>,
    decided_at: DateTime<Utc>,
}

async fn find(state: &AppState, filters: &Filters) -> Result<Vec<Row>, ApiError> {
    let (before_at, before_id) = filters.before.map_or((None, None), |(at, id)| (Some(at), Some(id)));
    Ok(sqlx::query_as!(
        Row,
        r#"select id, kind, status, rejection_reason, source_account_id, destination_account_id, amount,
                  currency::text as currency, decided_at
           from transfers
           where ($1::uuid is null or id = $1)
             and ($2::uuid is null or source_account_id = $2 or destination_account_id = $2)
             and ($3::text is null or status = $3)
             and ($4::text is null or rejection_reason = $4)
             and ($5::text is null or kind = $5)
             and ($1::uuid is not null or decided_at between $6 and $7)
             and ($8::timestamptz is null or (decided_at, id) < ($8, $9::uuid))
           order by decided_at desc, id desc
           limit $10"#,
        filters.id,
        filters.account,
        filters.status,
        filters.reason,
        filters.kind,
        filters.from,
        filters.to,
        before_at,
        before_id,
        PAGE_SIZE,
    )
    .fetch_all(&state.pool)
    .await?)
}

/// The search page, with its results.
pub(crate) async fn search(
    State(state): State<AppState>,
    staff: Staff,
    query: Result<Query<Search>, QueryRejection>,
) -> Response {
    if !Permission::ReadLedger.granted_to(&staff.user.role) {
        return page::error_page(Some(&staff), page::forbidden(Permission::ReadLedger));
    }
    let search = match query {
        Ok(Query(search)) => search,
        Err(rejection) => return page::error_page(Some(&staff), rejection.into()),
    };
    let filters = match search.filters(Utc::now()) {
        Ok(filters) => filters,
        Err(error) => return page::error_page(Some(&staff), error),
    };
    let rows = match find(&state, &filters).await {
        Ok(rows) => rows,
        Err(error) => return page::error_page(Some(&staff), error),
    };
    page::shell(&staff, "/admin/transfers", "Transfers", &results(&search, &filters, &rows))
}

fn field(search: Option<&String>) -> String {
    search.cloned().unwrap_or_default()
}

fn results(search: &Search, filters: &Filters, rows: &[Row]) -> Markup {
    let range = |at: DateTime<Utc>| at.format("%Y-%m-%dT%H:%M").to_string();
    html! {
        form.filters method="get" action="/admin/transfers" {
            label { "Transfer id" input type="text" name="id" value=(field(search.id.as_ref())) placeholder="uuid" size="36"; }
            label { "Account id" input type="text" name="account" value=(field(search.account.as_ref())) placeholder="uuid" size="36"; }
            label { "Status" select name="status" {
                option value="" { "any" }
                @for status in STATUSES { option value=(status) selected[filters.status.as_deref() == Some(status)] { (status) } }
            } }
            label { "Kind" select name="kind" {
                option value="" { "any" }
                @for kind in KINDS { option value=(kind) selected[filters.kind.as_deref() == Some(kind)] { (kind) } }
            } }
            label { "Rejection reason" input type="text" name="reason" value=(field(search.reason.as_ref())) placeholder="insufficient_funds"; }
            label { "From (UTC)" input type="datetime-local" name="from" value=(field(search.from.as_ref())) title={ "empty: an hour before To (now " (range(filters.from)) ")" }; }
            label { "To (UTC)" input type="datetime-local" name="to" value=(field(search.to.as_ref())) title="empty: now"; }
            button.primary type="submit" { "Search" }
        }
        @if rows.is_empty() {
            p.empty { "No transfer matches. Widen the time range or remove a filter." }
        } @else {
            table.results #transfers {
                thead { tr { th { "Decided (UTC)" } th { "Transfer" } th { "Kind" } th { "Status" } th { "From" } th { "To" } th.num { "Amount" } } }
                tbody {
                    @for row in rows {
                        tr {
                            td { (page::time(row.decided_at)) }
                            td { a href={ "/admin/transfers/" (row.id) } title=(row.id) { code { (page::short(row.id)) } } }
                            td { (row.kind) }
                            td { span class={ "status " (row.status) } { (row.status) } @if let Some(reason) = &row.rejection_reason { " " code { (reason) } } }
                            td { (page::account_link(row.source_account_id)) }
                            td { (page::account_link(row.destination_account_id)) }
                            td.num { (page::optional_money(row.amount, row.currency.as_deref())) }
                        }
                    }
                }
            }
            @if let Some(last) = rows.last().filter(|_| i64::try_from(rows.len()).unwrap_or(0) == PAGE_SIZE) {
                p { a.next href=(next_page(search, last)) { "Older transfers →" } }
            }
        }
    }
}

fn next_page(search: &Search, last: &Row) -> String {
    let mut url = String::from("/admin/transfers?");
    let pairs = [
        ("id", search.id.as_ref()),
        ("account", search.account.as_ref()),
        ("status", search.status.as_ref()),
        ("reason", search.reason.as_ref()),
        ("kind", search.kind.as_ref()),
        ("from", search.from.as_ref()),
        ("to", search.to.as_ref()),
    ];
    for (name, value) in pairs {
        if let Some(value) = page::given(value) {
            url.push_str(&format!("{name}={}&", page::query_value(value)));
        }
    }
    url.push_str(&format!("before={}", page::query_value(&format!("{}_{}", last.decided_at.to_rfc3339(), last.id))));
    url
}

#[derive(Debug)]
struct Detail {
    id: Uuid,
    kind: String,
    status: String,
    rejection_reason: Option<String>,
    source_account_id: Option<Uuid>,
    destination_account_id: Option<Uuid>,
    amount: Option<Decimal>,
    currency: Option<String>,
    related_transfer_id: Option<Uuid>,
    requested_at: DateTime<Utc>,
    decided_at: DateTime<Utc>,
    kafka_partition: i32,
    kafka_offset: i64,
    accepted_at: Option<DateTime<Utc>>,
    published_at: Option<DateTime<Utc>>,
}

#[derive(Debug)]
struct Leg {
    account_id: Uuid,
    amount: Decimal,
    currency: String,
    balance_after: Decimal,
}

#[derive(Debug)]
struct Delivery {
    destination: String,
    event_type: String,
    attempts: i32,
    delivered_at: Option<DateTime<Utc>>,
    dead_at: Option<DateTime<Utc>>,
    last_error: Option<String>,
    outcome: Option<String>,
}

#[derive(Debug)]
struct Outcome {
    result: String,
    origin: String,
    provider_code: Option<String>,
    reported_at: DateTime<Utc>,
}

/// One transfer: both legs with the balances after, and its lifecycle.
pub(crate) async fn detail(
    State(state): State<AppState>,
    staff: Staff,
    path: Result<Path<Uuid>, axum::extract::rejection::PathRejection>,
) -> Response {
    if !Permission::ReadLedger.granted_to(&staff.user.role) {
        return page::error_page(Some(&staff), page::forbidden(Permission::ReadLedger));
    }
    let result = async {
        let Path(id) = path?;
        let transfer = sqlx::query_as!(
            Detail,
            r#"select transfer.id, transfer.kind, transfer.status, transfer.rejection_reason,
                      transfer.source_account_id, transfer.destination_account_id, transfer.amount,
                      transfer.currency::text as currency, transfer.related_transfer_id, transfer.requested_at,
                      transfer.decided_at, transfer.kafka_partition, transfer.kafka_offset,
                      request.created_at as "accepted_at?", request.published_at as "published_at?"
               from transfers transfer left join accepted_requests request on request.transfer_id = transfer.id
               where transfer.id = $1"#,
            id,
        )
        .fetch_optional(&state.pool)
        .await?
        .ok_or_else(|| ApiError::not_found("transfer_not_found", "no transfer has this id (or it is not decided yet)"))?;
        let legs = sqlx::query_as!(
            Leg,
            r#"select account_id, amount, currency::text as "currency!", balance_after from entries
               where transfer_id = $1 order by id"#,
            id,
        )
        .fetch_all(&state.pool)
        .await?;
        // The batch's rows share the transfer's transaction time; webhook
        // rows are fanned out from its events row within minutes.
        let deliveries = sqlx::query_as!(
            Delivery,
            r#"select destination, event_type, attempts, delivered_at, dead_at, last_error, outcome
               from outbox
               where (created_at = $2 and (destination <> 'payments' or message_key = $1::text)
                      and payload::text like '%' || $1::text || '%')
                  or (destination = 'webhooks' and created_at between $2 and $2 + interval '10 minutes'
                      and payload::text like '%' || $1::text || '%')
               order by id
               limit 100"#,
            id.to_string(),
            transfer.decided_at,
        )
        .fetch_all(&state.pool)
        .await?;
        let outcomes = sqlx::query_as!(
            Outcome,
            "select result, origin, provider_code, reported_at from payout_outcomes where payment_id = $1 order by reported_at",
            id,
        )
        .fetch_all(&state.pool)
        .await?;
        Ok::<_, ApiError>((transfer, legs, deliveries, outcomes))
    }
    .await;
    match result {
        Ok((transfer, legs, deliveries, outcomes)) => {
            let title = format!("Transfer {}", page::short(transfer.id));
            page::shell(&staff, "/admin/transfers", &title, &detail_body(&transfer, &legs, &deliveries, &outcomes))
        }
        Err(error) => page::error_page(Some(&staff), error),
    }
}

fn detail_body(transfer: &Detail, legs: &[Leg], deliveries: &[Delivery], outcomes: &[Outcome]) -> Markup {
    html! {
        dl.facts #transfer-facts {
            dt { "Id" } dd { code { (transfer.id) } }
            dt { "Kind" } dd { (transfer.kind) }
            dt { "Status" } dd #transfer-status { span class={ "status " (transfer.status) } { (transfer.status) } @if let Some(reason) = &transfer.rejection_reason { " " code #rejection-reason { (reason) } } }
            dt { "Amount" } dd.num { (page::optional_money(transfer.amount, transfer.currency.as_deref())) }
            dt { "From" } dd { (page::account_link(transfer.source_account_id)) }
            dt { "To" } dd { (page::account_link(transfer.destination_account_id)) }
            @if let Some(related) = transfer.related_transfer_id {
                dt { "Related" } dd { a href={ "/admin/transfers/" (related) } { code { (related) } } }
            }
            dt { "Command" } dd { "partition " (transfer.kafka_partition) ", offset " (transfer.kafka_offset) }
        }
        h2 { "Legs" }
        @if legs.is_empty() {
            p.empty { "No entries: " @if transfer.status == "rejected" { "a rejected transfer moves no money." } @else { "this transfer holds or settles money without moving a balance itself." } }
        } @else {
            table #legs {
                thead { tr { th { "Account" } th.num { "Amount" } th.num { "Balance after" } } }
                tbody {
                    @for leg in legs {
                        tr { td { (page::account_link(Some(leg.account_id))) } td.num { (page::money(leg.amount, &leg.currency)) } td.num { (page::money(leg.balance_after, &leg.currency)) } }
                    }
                }
            }
        }
        h2 { "Lifecycle" }
        ol.lifecycle #lifecycle {
            @if let Some(accepted_at) = transfer.accepted_at {
                li { strong { "Accepted" } " " (page::time(accepted_at)) " — recorded by ingest" }
            } @else {
                li { strong { "Requested" } " " (page::time(transfer.requested_at)) " — straight to Kafka, or the request record is past retention" }
            }
            @if let Some(published_at) = transfer.published_at { li { strong { "Published" } " " (page::time(published_at)) } }
            li { strong { "Decided" } " " (page::time(transfer.decided_at)) ": " (transfer.status) }
            @for delivery in deliveries {
                li {
                    strong { (delivery_label(&delivery.destination)) }
                    " " code { (delivery.event_type) } " · "
                    @if let Some(delivered_at) = delivery.delivered_at { "delivered " (page::time(delivered_at)) }
                    @else if delivery.dead_at.is_some() { span.alert { "dead, waiting for an operator" } }
                    @else { "pending" }
                    " · " (delivery.attempts) " attempt(s)"
                    @if let Some(outcome) = &delivery.outcome { " · outcome " code { (outcome) } }
                    @if let Some(error) = &delivery.last_error { div.muted { "last error: " (error) } }
                }
            }
            @if deliveries.is_empty() && transfer.status != "rejected" {
                li.muted { "No outbox rows kept for it (delivered rows are pruned after their retention)." }
            }
            @for outcome in outcomes {
                li { strong { "Provider outcome" } " " (outcome.result) " via " (outcome.origin) " " (page::time(outcome.reported_at)) @if let Some(code) = &outcome.provider_code { " · " code { (code) } } }
            }
        }
    }
}

fn delivery_label(destination: &str) -> &'static str {
    match destination {
        "events" => "Events published",
        "payments" => "Provider call",
        "webhooks" => "Webhook",
        "notifications" => "Notification",
        _ => "Delivery",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_search_defaults_to_the_last_hour_and_refuses_what_the_ledger_never_stores() {
        let now = Utc::now();
        let filters = Search::default().filters(now).expect("filters");
        assert_eq!(filters.to, now);
        assert_eq!(filters.from, now - Duration::hours(1));
        let bad = Search { status: Some("pending".into()), ..Search::default() };
        assert!(bad.filters(now).is_err());
        let bad =
            Search { from: Some("2026-01-02T00:00".into()), to: Some("2026-01-01T00:00".into()), ..Search::default() };
        assert!(bad.filters(now).is_err());
        let bad = Search { reason: Some("x' or 1=1".into()), ..Search::default() };
        assert!(bad.filters(now).is_err());
    }

    #[test]
    fn a_page_position_survives_the_round_trip() {
        let row = Row {
            id: Uuid::new_v4(),
            kind: "transfer".into(),
            status: "completed".into(),
            rejection_reason: None,
            source_account_id: None,
            destination_account_id: None,
            amount: None,
            currency: None,
            decided_at: Utc::now(),
        };
        let url = next_page(&Search { status: Some("completed".into()), ..Search::default() }, &row);
        let before = url.split("before=").nth(1).expect("before");
        let decoded: String = percent_decode(before);
        let search = Search { before: Some(decoded), ..Search::default() };
        let filters = search.filters(Utc::now()).expect("filters");
        assert_eq!(filters.before, Some((row.decided_at, row.id)));
        assert!(url.contains("status=completed&"));
    }

    fn percent_decode(text: &str) -> String {
        let bytes = text.as_bytes();
        let mut out = Vec::new();
        let mut index = 0;
        while index < bytes.len() {
            if bytes[index] == b'%' {
                out.push(u8::from_str_radix(&text[index + 1..index + 3], 16).expect("hex"));
                index += 3;
            } else {
                out.push(bytes[index]);
                index += 1;
            }
        }
        String::from_utf8(out).expect("utf8")
    }
}
