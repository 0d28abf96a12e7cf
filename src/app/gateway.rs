//! `emporium gateway`: the simulated payment gateway as its own process, shared by every
//! node of a test cluster (`payment.gateway_url`).
//!
//! It runs the same simulation as the in-process gateway ([`PaymentActor`], same test
//! tokens) behind HTTP, keyed by order id like a real gateway:
//! - `POST /charges` `{order_id, amount, token, attempt}`: the first final answer of an
//!   order (captured: 200, declined: 402) is recorded; a later charge of that order
//!   answers the recorded one without charging again. A transient failure (503) or a
//!   timeout (504) is not recorded: the next attempt charges.
//! - `POST /refunds` `{order_id, amount}`: gives a capture back once (200
//!   `{"outcome":"refunded"}`; a repeated refund answers the same without refunding
//!   again). An order with nothing captured is voided (200 `{"outcome":"voided"}`): its
//!   outcome is recorded as `voided`, so a charge of it still in flight, or any later
//!   one, answers 402 and captures nothing. This is what lets a node cancel an order
//!   whose charge it may have sent and then die: the refund asked for with the cancel
//!   either gives the money back or makes sure none is taken.
//! - `GET /captures`: every capture with its refunded flag, for audits.
//!
//! Captures and refunds are kept in the gateway's own SQLite file (`--store`), so a
//! restarted gateway still knows them.

use crate::actors::payment::{
    self, Charge, ChargeRequest, PaymentActor, PaymentError, Refund, RefundAnswer, RefundOutcome, RefundRequest,
};
use crate::config::Settings;
use crate::domain::money::{Currency, Money};
use actix::{Actor, Addr};
use actix_web::{web, HttpResponse, ResponseError};
use serde::Serialize;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions};
use sqlx::{Row, SqlitePool};
use std::path::Path;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub(crate) enum GatewayError {
    #[error("gateway store: {0}")]
    Store(#[from] sqlx::Error),
    #[error("stored amount of order {0} is not valid money")]
    BadRecord(String),
}

impl ResponseError for GatewayError {}

/// One recorded charge, as `GET /captures` lists it.
#[derive(Debug, Serialize)]
pub(crate) struct Capture {
    pub(crate) order_id: String,
    pub(crate) amount: i64,
    pub(crate) currency: String,
    pub(crate) token: String,
    /// Refunds that gave money back: 0 or 1.
    pub(crate) refunds: i64,
    pub(crate) refunded: bool,
    /// Refund calls received (repeats included).
    pub(crate) refund_requests: i64,
}

/// The gateway's SQLite file: one row per order with a final charge outcome.
#[derive(Clone)]
pub(crate) struct GatewayStore {
    pool: SqlitePool,
}

const CAPTURED: &str = "captured";
const DECLINED: &str = "declined";
/// Refunded before anything was captured: no charge of the order captures any more.
const VOIDED: &str = "voided";

/// What a refund call finds for its order.
#[derive(Debug, PartialEq)]
enum RefundTarget {
    /// A capture not given back yet: its amount and token.
    Capture(Money, String),
    RefundedAlready,
    /// Declined, or voided by this call or an earlier one.
    NothingCaptured,
}

impl GatewayStore {
    pub async fn open(path: &Path) -> Result<Self, GatewayError> {
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .busy_timeout(Duration::from_secs(5));
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(options)
            .await?;
        sqlx::query(
            "CREATE TABLE IF NOT EXISTS charges (
                order_id        TEXT PRIMARY KEY,
                amount          INTEGER NOT NULL,
                currency        TEXT NOT NULL,
                token           TEXT NOT NULL,
                outcome         TEXT NOT NULL,
                refunds         INTEGER NOT NULL DEFAULT 0,
                refund_requests INTEGER NOT NULL DEFAULT 0
            )",
        )
        .execute(&pool)
        .await?;
        Ok(Self { pool })
    }

    /// The recorded outcome of `order`'s charge, if any.
    async fn outcome(&self, order: &str) -> Result<Option<String>, GatewayError> {
        let row = sqlx::query("SELECT outcome FROM charges WHERE order_id = ?")
            .bind(order)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|r| r.try_get("outcome")).transpose()?)
    }

    /// Records `outcome` unless the order has one; returns the one that stands.
    async fn record(&self, charge: &ChargeRequest, outcome: &str) -> Result<String, GatewayError> {
        let order = charge.order_id.to_string();
        sqlx::query(
            "INSERT OR IGNORE INTO charges (order_id, amount, currency, token, outcome) VALUES (?, ?, ?, ?, ?)",
        )
        .bind(&order)
        .bind(charge.amount.amount)
        .bind(charge.amount.currency.as_str())
        .bind(&charge.token)
        .bind(outcome)
        .execute(&self.pool)
        .await?;
        Ok(self.outcome(&order).await?.unwrap_or_else(|| outcome.to_owned()))
    }

    /// Counts a refund call and says what it refunds. An order with no outcome yet is
    /// voided first, in one statement, so a charge that finishes later finds `voided`
    /// recorded and captures nothing.
    async fn refund_call(&self, refund: &RefundRequest) -> Result<RefundTarget, GatewayError> {
        let order = refund.order_id.to_string();
        sqlx::query(
            "INSERT OR IGNORE INTO charges (order_id, amount, currency, token, outcome) VALUES (?, ?, ?, '', ?)",
        )
        .bind(&order)
        .bind(refund.amount.amount)
        .bind(refund.amount.currency.as_str())
        .bind(VOIDED)
        .execute(&self.pool)
        .await?;
        sqlx::query("UPDATE charges SET refund_requests = refund_requests + 1 WHERE order_id = ?")
            .bind(&order)
            .execute(&self.pool)
            .await?;
        let row = sqlx::query("SELECT outcome, amount, currency, token, refunds FROM charges WHERE order_id = ?")
            .bind(&order)
            .fetch_one(&self.pool)
            .await?;
        if row.try_get::<String, _>("outcome")? != CAPTURED {
            return Ok(RefundTarget::NothingCaptured);
        }
        if row.try_get::<i64, _>("refunds")? > 0 {
            return Ok(RefundTarget::RefundedAlready);
        }
        let currency: String = row.try_get("currency")?;
        let amount = Currency::parse(&currency)
            .ok()
            .and_then(|c| Money::new(row.try_get("amount").ok()?, c).ok())
            .ok_or_else(|| GatewayError::BadRecord(order.clone()))?;
        Ok(RefundTarget::Capture(amount, row.try_get("token")?))
    }

    /// Marks the refund done; a concurrent refund that got there first leaves it at one.
    async fn refunded(&self, order: &str) -> Result<(), GatewayError> {
        sqlx::query("UPDATE charges SET refunds = 1 WHERE order_id = ? AND refunds = 0")
            .bind(order)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    pub(crate) async fn captures(&self) -> Result<Vec<Capture>, GatewayError> {
        let rows = sqlx::query(
            "SELECT order_id, amount, currency, token, refunds, refund_requests FROM charges
             WHERE outcome = ? ORDER BY order_id",
        )
        .bind(CAPTURED)
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter()
            .map(|r| {
                let refunds: i64 = r.try_get("refunds")?;
                Ok(Capture {
                    order_id: r.try_get("order_id")?,
                    amount: r.try_get("amount")?,
                    currency: r.try_get("currency")?,
                    token: r.try_get("token")?,
                    refunds,
                    refunded: refunds > 0,
                    refund_requests: r.try_get("refund_requests")?,
                })
            })
            .collect()
    }
}

struct Gateway {
    store: GatewayStore,
    simulated: Addr<PaymentActor>,
    timeout: Duration,
}

/// A charge's answer: 200 when captured, 402 when declined or voided.
fn answer(outcome: &str) -> HttpResponse {
    let body = serde_json::json!({ "outcome": outcome });
    if outcome == CAPTURED {
        HttpResponse::Ok().json(body)
    } else {
        HttpResponse::PaymentRequired().json(body)
    }
}

async fn charge(gateway: web::Data<Gateway>, body: web::Json<ChargeRequest>) -> Result<HttpResponse, GatewayError> {
    let request = body.into_inner();
    if let Some(outcome) = gateway.store.outcome(&request.order_id.to_string()).await? {
        return Ok(answer(&outcome));
    }
    let simulated = Charge {
        order: request.order_id,
        amount: request.amount,
        token: request.token.clone(),
        attempt: request.attempt,
    };
    match payment::call(&gateway.simulated, simulated, gateway.timeout).await {
        Ok(()) => Ok(answer(&gateway.store.record(&request, CAPTURED).await?)),
        Err(PaymentError::Declined) => Ok(answer(&gateway.store.record(&request, DECLINED).await?)),
        Err(PaymentError::Timeout) => Ok(HttpResponse::GatewayTimeout().finish()),
        Err(PaymentError::Transient(e)) => Ok(HttpResponse::ServiceUnavailable().body(e)),
    }
}

async fn refund(gateway: web::Data<Gateway>, body: web::Json<RefundRequest>) -> Result<HttpResponse, GatewayError> {
    let refunded = || {
        HttpResponse::Ok().json(RefundAnswer {
            outcome: RefundOutcome::Refunded,
        })
    };
    let (amount, token) = match gateway.store.refund_call(&body).await? {
        RefundTarget::Capture(amount, token) => (amount, token),
        RefundTarget::RefundedAlready => return Ok(refunded()),
        RefundTarget::NothingCaptured => {
            return Ok(HttpResponse::Ok().json(RefundAnswer {
                outcome: RefundOutcome::Voided,
            }));
        }
    };
    let simulated = Refund {
        order: body.order_id,
        amount,
        token,
    };
    match payment::call(&gateway.simulated, simulated, gateway.timeout).await {
        Ok(_) => {
            gateway.store.refunded(&body.order_id.to_string()).await?;
            Ok(refunded())
        }
        Err(PaymentError::Timeout) => Ok(HttpResponse::GatewayTimeout().finish()),
        Err(e) => Ok(HttpResponse::ServiceUnavailable().body(e.to_string())),
    }
}

async fn captures(gateway: web::Data<Gateway>) -> Result<HttpResponse, GatewayError> {
    Ok(HttpResponse::Ok().json(gateway.store.captures().await?))
}

/// Serves the gateway on `listen` until SIGTERM or Ctrl-C; prints
/// `emporium gateway listening on http://ADDR` once it listens.
pub async fn run(settings: &Settings, listen: &str, store: &Path) -> anyhow::Result<()> {
    let store = GatewayStore::open(store).await?;
    let attempt_timeout = settings.payment.attempt_timeout;
    let latency = settings.payment.gateway_latency;
    let slow = settings.payment.slow;
    let simulated = PaymentActor::new(latency, attempt_timeout, slow).start();
    let gateway = web::Data::new(Gateway {
        store,
        simulated,
        timeout: attempt_timeout,
    });
    let server = actix_web::HttpServer::new(move || {
        actix_web::App::new()
            .app_data(gateway.clone())
            .route("/charges", web::post().to(charge))
            .route("/refunds", web::post().to(refund))
            .route("/captures", web::get().to(captures))
    })
    .workers(2)
    .disable_signals()
    .bind(listen)?;
    let addr = server
        .addrs()
        .first()
        .copied()
        .ok_or_else(|| anyhow::anyhow!("not listening"))?;
    let server = server.run();
    let handle = server.handle();
    println!("emporium gateway listening on http://{addr}");
    let serving = actix_rt::spawn(server);
    super::wait_for_signal().await;
    handle.stop(true).await;
    let _ = serving.await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::ids::OrderId;

    fn krw(amount: i64) -> Money {
        Money::new(amount, Currency::parse("KRW").unwrap()).unwrap()
    }

    fn charge(order: OrderId, token: &str) -> ChargeRequest {
        ChargeRequest {
            order_id: order,
            amount: krw(10),
            token: token.into(),
            attempt: 1,
        }
    }

    fn refund(order: OrderId) -> RefundRequest {
        RefundRequest {
            order_id: order,
            amount: krw(10),
        }
    }

    #[tokio::test]
    async fn the_first_outcome_of_an_order_stands_and_a_capture_is_refunded_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = GatewayStore::open(&dir.path().join("gateway.db")).await.unwrap();
        let (paid, declined) = (OrderId::generate(), OrderId::generate());
        assert_eq!(
            store.record(&charge(paid, "test_ok"), CAPTURED).await.unwrap(),
            CAPTURED
        );
        // A later charge of the same order answers what was recorded.
        assert_eq!(
            store.record(&charge(paid, "test_decline"), DECLINED).await.unwrap(),
            CAPTURED
        );
        assert_eq!(
            store.record(&charge(declined, "test_decline"), DECLINED).await.unwrap(),
            DECLINED
        );

        assert_eq!(
            store.refund_call(&refund(paid)).await.unwrap(),
            RefundTarget::Capture(krw(10), "test_ok".into())
        );
        store.refunded(&paid.to_string()).await.unwrap();
        assert_eq!(
            store.refund_call(&refund(paid)).await.unwrap(),
            RefundTarget::RefundedAlready
        );
        assert_eq!(
            store.refund_call(&refund(declined)).await.unwrap(),
            RefundTarget::NothingCaptured
        );
        assert_eq!(
            store.outcome(&declined.to_string()).await.unwrap().as_deref(),
            Some(DECLINED),
            "a refund does not rewrite a decline"
        );

        let captures = store.captures().await.unwrap();
        assert_eq!(captures.len(), 1, "declines are not captures");
        assert_eq!(captures[0].order_id, paid.to_string());
        assert_eq!(
            (captures[0].refunds, captures[0].refunded, captures[0].refund_requests),
            (1, true, 2)
        );

        // A restarted gateway still knows.
        drop(store);
        let store = GatewayStore::open(&dir.path().join("gateway.db")).await.unwrap();
        assert_eq!(
            store.outcome(&paid.to_string()).await.unwrap().as_deref(),
            Some(CAPTURED)
        );
    }

    /// The node cancelled while its charge was still at the gateway and asked for the
    /// refund with the cancel: the refund comes first, voids the order, and the charge
    /// finishing afterwards captures nothing (it answers `voided`, a 402).
    #[tokio::test]
    async fn a_refund_before_the_capture_voids_the_order_and_the_late_charge_takes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = GatewayStore::open(&dir.path().join("gateway.db")).await.unwrap();
        let order = OrderId::generate();
        assert_eq!(
            store.refund_call(&refund(order)).await.unwrap(),
            RefundTarget::NothingCaptured
        );
        assert_eq!(
            store.record(&charge(order, "test_slow"), CAPTURED).await.unwrap(),
            VOIDED
        );
        assert_eq!(answer(VOIDED).status(), actix_web::http::StatusCode::PAYMENT_REQUIRED);
        assert!(store.captures().await.unwrap().is_empty(), "nothing captured");
        // Asked again (a retry after a crash): still nothing to give back.
        assert_eq!(
            store.refund_call(&refund(order)).await.unwrap(),
            RefundTarget::NothingCaptured
        );
    }
}
