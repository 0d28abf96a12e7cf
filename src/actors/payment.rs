//! The payment actor: talks to the (simulated) payment gateway.
//!
//! Owns: the gateway connection settings. Takes: [`Charge`], [`Refund`]. Promises: one
//! answer per attempt; the order saga (charges) and the refunder (refunds) decide about
//! retries, timeouts and compensation.
//!
//! The simulated gateway understands the test tokens of docs/design.md: `test_ok` (the
//! default) succeeds, `test_decline` is declined, `test_flaky` fails its first two
//! attempts and then succeeds, `test_down` never answers within the attempt timeout,
//! `test_slow` succeeds after `payment.slow_ms` (so a cancel can win meanwhile; its refund
//! takes as long), `test_slow_refund_flaky` charges like `test_slow` and fails the first
//! three refund calls of its order.
//!
//! With `payment.gateway_url` set, the actor sends every call to that gateway instead
//! (`emporium gateway`, `app::gateway`, which runs this same simulation behind HTTP and
//! remembers each order's outcome), so several nodes share one gateway.

use crate::domain::ids::OrderId;
use crate::domain::money::Money;
use actix::{Actor, Addr, Context, Handler, Message, ResponseFuture};
use std::time::Duration;

/// The payment tokens the simulated gateway knows.
pub(crate) const TEST_TOKENS: [&str; 6] = [
    "test_ok",
    "test_decline",
    "test_flaky",
    "test_down",
    "test_slow",
    "test_slow_refund_flaky",
];

/// Refund calls of a `test_slow_refund_flaky` order that fail before one succeeds.
const FLAKY_REFUND_FAILURES: u32 = 3;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum PaymentError {
    #[error("payment declined")]
    Declined,
    #[error("payment gateway error: {0}")]
    Transient(String),
    #[error("payment gateway did not answer in time")]
    Timeout,
}

impl PaymentError {
    /// A declined card stays declined; anything else may work on the next attempt.
    pub(crate) fn is_retryable(&self) -> bool {
        !matches!(self, Self::Declined)
    }
}

#[derive(Message, Debug, Clone)]
#[rtype(result = "Result<(), PaymentError>")]
pub(crate) struct Charge {
    pub(crate) order: OrderId,
    pub(crate) amount: Money,
    pub(crate) token: String,
    /// 1-based attempt number; the gateway sees the order id as its idempotency key.
    pub(crate) attempt: u32,
}

/// Gives back what a charge of `order` took, or, where the gateway took nothing, voids
/// the order there so that no charge of it still in flight captures anything. The
/// gateway keys refunds by the order id, so asking twice (a retry, a restart between
/// the gateway's answer and our commit) refunds once.
#[derive(Message, Debug, Clone)]
#[rtype(result = "Result<RefundOutcome, PaymentError>")]
pub(crate) struct Refund {
    pub(crate) order: OrderId,
    pub(crate) amount: Money,
    /// The token the order was charged with.
    pub(crate) token: String,
}

/// What a refund came to at the gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum RefundOutcome {
    /// The capture was given back (now or by an earlier call).
    Refunded,
    /// Nothing had been captured; the order is void at the gateway: a charge of it that
    /// is still in flight answers declined and takes nothing.
    Voided,
}

/// One gateway call (a charge attempt or a refund): the actor's answer, or `Timeout`
/// when it does not come within `timeout`.
pub(crate) async fn call<M, T>(payment: &Addr<PaymentActor>, request: M, timeout: Duration) -> Result<T, PaymentError>
where
    M: Message<Result = Result<T, PaymentError>> + Send + 'static,
    T: Send + 'static,
    PaymentActor: Handler<M>,
{
    match tokio::time::timeout(timeout, payment.send(request)).await {
        Ok(Ok(outcome)) => outcome,
        Ok(Err(mailbox)) => Err(PaymentError::Transient(mailbox.to_string())),
        Err(_) => Err(PaymentError::Timeout),
    }
}

/// The retry rule, one place for the local saga and the payment service: after failed
/// attempt `attempt` (1-based) of `attempts`, try again after the returned backoff
/// (doubling from `backoff_base`), or give up (`None`: declined, or no attempts left).
pub(crate) fn retry_after(
    error: &PaymentError,
    attempt: u32,
    attempts: u32,
    backoff_base: Duration,
) -> Option<Duration> {
    (error.is_retryable() && attempt < attempts).then(|| backoff_base * 2u32.saturating_pow(attempt.saturating_sub(1)))
}

/// Charges until the gateway gives a final answer under [`retry_after`]; returns it
/// with the number of attempts made. The payment service runs this per order.
pub(crate) async fn charge_until_final(
    payment: &Addr<PaymentActor>,
    order: OrderId,
    amount: Money,
    token: &str,
    attempts: u32,
    attempt_timeout: Duration,
    backoff_base: Duration,
) -> (Result<(), PaymentError>, u32) {
    let mut n = 0;
    loop {
        n += 1;
        let charge = Charge {
            order,
            amount,
            token: token.to_owned(),
            attempt: n,
        };
        match call(payment, charge, attempt_timeout).await {
            Ok(()) => return (Ok(()), n),
            Err(e) => match retry_after(&e, n, attempts, backoff_base) {
                Some(backoff) => tokio::time::sleep(backoff).await,
                None => return (Err(e), n),
            },
        }
    }
}

pub(crate) struct PaymentActor {
    latency: Duration,
    /// How long `test_down` hangs: longer than any attempt timeout, bounded so hung
    /// simulated calls do not pile up forever.
    hang: Duration,
    /// How long the `test_slow*` tokens take.
    slow: Duration,
    /// Refund calls seen per order: the simulated gateway's memory, for
    /// `test_slow_refund_flaky` (a real gateway keeps its own).
    refund_calls: std::collections::HashMap<OrderId, u32>,
    /// `payment.gateway_url` set: every charge and refund goes to that shared gateway
    /// (`emporium gateway`) instead of the simulation in this process.
    remote: Option<RemoteGateway>,
}

impl PaymentActor {
    pub fn new(latency: Duration, attempt_timeout: Duration, slow: Duration) -> Self {
        Self {
            latency,
            hang: attempt_timeout * 2,
            slow,
            refund_calls: Default::default(),
            remote: None,
        }
    }

    /// Charges and refunds through the gateway at `url` (`emporium gateway`); each call
    /// waits at most `timeout`.
    pub(crate) fn with_remote(mut self, url: &str, timeout: Duration) -> Result<Self, reqwest::Error> {
        self.remote = Some(RemoteGateway::new(url, timeout)?);
        Ok(self)
    }
}

/// A charge as the gateway's `POST /charges` takes it.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub(crate) struct ChargeRequest {
    pub(crate) order_id: OrderId,
    pub(crate) amount: Money,
    pub(crate) token: String,
    pub(crate) attempt: u32,
}

/// A refund as the gateway's `POST /refunds` takes it.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub(crate) struct RefundRequest {
    pub(crate) order_id: OrderId,
    pub(crate) amount: Money,
}

/// The client of a shared gateway (`emporium gateway`). Its answers: 200 done, 402
/// declined, anything else a transient failure; no answer within the timeout is a
/// timeout.
#[derive(Clone)]
struct RemoteGateway {
    client: reqwest::Client,
    base: String,
}

impl RemoteGateway {
    fn new(url: &str, timeout: Duration) -> Result<Self, reqwest::Error> {
        let client = reqwest::Client::builder().timeout(timeout).build()?;
        Ok(Self {
            client,
            base: url.trim_end_matches('/').to_owned(),
        })
    }

    async fn post(self, path: &str, body: &impl serde::Serialize) -> Result<reqwest::Response, PaymentError> {
        let sent = self.client.post(format!("{}{path}", self.base)).json(body).send().await;
        match sent {
            Ok(r) if r.status().is_success() => Ok(r),
            Ok(r) if r.status() == reqwest::StatusCode::PAYMENT_REQUIRED => Err(PaymentError::Declined),
            Ok(r) if r.status() == reqwest::StatusCode::GATEWAY_TIMEOUT => Err(PaymentError::Timeout),
            Ok(r) => Err(PaymentError::Transient(format!("gateway answered {}", r.status()))),
            Err(e) if e.is_timeout() => Err(PaymentError::Timeout),
            Err(e) => Err(PaymentError::Transient(format!("gateway unreachable: {e}"))),
        }
    }

    async fn charge(self, body: ChargeRequest) -> Result<(), PaymentError> {
        self.post("/charges", &body).await.map(|_| ())
    }

    async fn refund(self, body: RefundRequest) -> Result<RefundOutcome, PaymentError> {
        let answered = self.post("/refunds", &body).await?;
        let answer: RefundAnswer = answered
            .json()
            .await
            .map_err(|e| PaymentError::Transient(format!("gateway's refund answer unreadable: {e}")))?;
        Ok(answer.outcome)
    }
}

/// The gateway's answer to `POST /refunds`.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub(crate) struct RefundAnswer {
    pub(crate) outcome: RefundOutcome,
}

impl Actor for PaymentActor {
    type Context = Context<Self>;
}

impl Handler<Charge> for PaymentActor {
    type Result = ResponseFuture<Result<(), PaymentError>>;

    fn handle(&mut self, msg: Charge, _ctx: &mut Self::Context) -> Self::Result {
        if let Some(remote) = self.remote.clone() {
            let body = ChargeRequest {
                order_id: msg.order,
                amount: msg.amount,
                token: msg.token,
                attempt: msg.attempt,
            };
            return Box::pin(remote.charge(body));
        }
        let (latency, hang, slow) = (self.latency, self.hang, self.slow);
        let span = tracing::debug_span!("payment_charge", order_id = %msg.order, attempt = msg.attempt);
        Box::pin(tracing::Instrument::instrument(
            async move {
                tokio::time::sleep(latency).await;
                match msg.token.as_str() {
                    "test_decline" => Err(PaymentError::Declined),
                    "test_flaky" if msg.attempt <= 2 => {
                        Err(PaymentError::Transient("simulated gateway failure".into()))
                    }
                    "test_down" => {
                        tokio::time::sleep(hang).await;
                        Err(PaymentError::Timeout)
                    }
                    "test_slow" | "test_slow_refund_flaky" => {
                        tokio::time::sleep(slow).await;
                        Ok(())
                    }
                    _ => Ok(()),
                }
            },
            span,
        ))
    }
}

impl Handler<Refund> for PaymentActor {
    type Result = ResponseFuture<Result<RefundOutcome, PaymentError>>;

    /// The simulation keeps no captures (they die with the process): it gives back
    /// whatever the charge took, so every refund it answers is `Refunded`.
    fn handle(&mut self, msg: Refund, _ctx: &mut Self::Context) -> Self::Result {
        if let Some(remote) = self.remote.clone() {
            let body = RefundRequest {
                order_id: msg.order,
                amount: msg.amount,
            };
            return Box::pin(remote.refund(body));
        }
        let calls = self.refund_calls.entry(msg.order).or_insert(0);
        *calls += 1;
        let call = *calls;
        let (latency, slow) = (self.latency, self.slow);
        let span = tracing::debug_span!("payment_refund", order_id = %msg.order, call);
        Box::pin(tracing::Instrument::instrument(
            async move {
                tokio::time::sleep(latency).await;
                match msg.token.as_str() {
                    "test_slow" => {
                        tokio::time::sleep(slow).await;
                        Ok(RefundOutcome::Refunded)
                    }
                    "test_slow_refund_flaky" if call <= FLAKY_REFUND_FAILURES => {
                        Err(PaymentError::Transient("simulated refund failure".into()))
                    }
                    _ => Ok(RefundOutcome::Refunded),
                }
            },
            span,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn declines_are_final_and_other_errors_back_off_until_the_last_attempt() {
        let base = Duration::from_millis(10);
        assert_eq!(retry_after(&PaymentError::Declined, 1, 3, base), None);
        assert_eq!(retry_after(&PaymentError::Timeout, 1, 3, base), Some(base));
        assert_eq!(
            retry_after(&PaymentError::Transient("x".into()), 2, 3, base),
            Some(base * 2)
        );
        assert_eq!(retry_after(&PaymentError::Timeout, 3, 3, base), None);
    }
}
