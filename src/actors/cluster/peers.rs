//! Calls to the other nodes of a cluster: the peer-only API's messages (orders that span
//! owners, payment outcomes consumed elsewhere) and the one pooled client that sends them.

use super::Ownership;
use crate::domain::cluster::Fence;
use crate::domain::ids::Sku;
use crate::error::Cause;
use serde::Serialize;
use std::sync::Arc;
use std::time::Duration;

/// The header a peer call carries: the cluster's shared secret.
pub(crate) const PEER_HEADER: &str = "emporium-peer";

/// `POST /internal/v1/reservations`: reserve on the owner's SKU actor for an order
/// another node places (an order spanning owners).
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub(crate) struct RemoteReserve {
    pub(crate) order: crate::domain::ids::OrderId,
    pub(crate) sku: Sku,
    pub(crate) qty: i64,
    pub(crate) expires_at: crate::domain::Millis,
}

/// The owner's answer: the journal entry it decided (none when the reservation existed
/// already), the unit price, and the fence the placing node's commit must check.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub(crate) struct RemoteReserved {
    pub(crate) entry: Option<crate::persistence::JournalEntry>,
    pub(crate) unit_price: crate::domain::money::Money,
    pub(crate) fence: Fence,
}

/// A refusal of a remote reservation as the owner gave it.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub(crate) struct RemoteRefusal {
    /// `out_of_stock`, `unknown_sku` or `unavailable`.
    pub(crate) reason: String,
    pub(crate) requested: i64,
    pub(crate) available: i64,
}

/// `POST /internal/v1/reservations/settle`: after the order's decision is durable, its
/// owner applies it to its reservation (the owner reads the decision from the store;
/// `confirm` is what the caller recorded). Also the body of `/forget`.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub(crate) struct RemoteSettle {
    pub(crate) order: crate::domain::ids::OrderId,
    pub(crate) sku: Sku,
    pub(crate) confirm: bool,
}

#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub(crate) struct RemoteSettled {
    pub(crate) entry: Option<crate::persistence::JournalEntry>,
    pub(crate) fence: Fence,
}

/// `POST /internal/v1/payments`: a payment outcome consumed by a node that does not own
/// the order, for the node that runs its saga (`payment.mode = "kafka"`).
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub(crate) struct RemotePayment {
    pub(crate) order: crate::domain::ids::OrderId,
    /// The order's smallest SKU: its owner runs the saga.
    pub(crate) sku: Sku,
    /// `None` when the payment succeeded, else why it failed.
    pub(crate) failure: Option<String>,
    pub(crate) consumed: crate::persistence::Consumed,
}

/// Why a remote inventory call failed.
#[derive(Debug, Clone)]
pub(crate) enum RemoteFailure {
    Refused(RemoteRefusal),
    /// The owner did not answer, or no longer owns the SKU: retry (maybe elsewhere).
    Unavailable(Cause),
}

/// Calls other nodes' SKU actors (orders spanning owners). One pooled HTTP client.
pub(crate) struct PeerClient {
    ownership: Arc<Ownership>,
    client: reqwest::Client,
    secret: String,
}

impl PeerClient {
    pub fn new(ownership: Arc<Ownership>, secret: String, timeout: Duration) -> Arc<Self> {
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .pool_max_idle_per_host(64)
            .build()
            .unwrap_or_default();
        Arc::new(Self {
            ownership,
            client,
            secret,
        })
    }

    pub(crate) fn ownership(&self) -> &Arc<Ownership> {
        &self.ownership
    }

    pub(crate) fn secret(&self) -> &str {
        &self.secret
    }

    pub(crate) fn client(&self) -> &reqwest::Client {
        &self.client
    }

    async fn call<B: Serialize, T: serde::de::DeserializeOwned>(
        &self,
        sku: &Sku,
        path: &str,
        body: &B,
    ) -> Result<T, RemoteFailure> {
        let Some(base) = self.ownership.peer_of(sku) else {
            return Err(RemoteFailure::Unavailable(format!("no live owner of {sku}").into()));
        };
        let answer = self
            .client
            .post(format!("{}{path}", base.trim_end_matches('/')))
            .header(PEER_HEADER, &self.secret)
            .json(body)
            .send()
            .await
            .map_err(|e| RemoteFailure::Unavailable(Cause::new(e)))?;
        let status = answer.status();
        if status.is_success() {
            return answer
                .json()
                .await
                .map_err(|e| RemoteFailure::Unavailable(Cause::new(e)));
        }
        if matches!(status.as_u16(), 404 | 409 | 422) {
            if let Ok(refusal) = answer.json::<RemoteRefusal>().await {
                return Err(RemoteFailure::Refused(refusal));
            }
        }
        Err(RemoteFailure::Unavailable(
            format!("{base}{path} answered {status}").into(),
        ))
    }

    pub async fn reserve(&self, request: &RemoteReserve) -> Result<RemoteReserved, RemoteFailure> {
        self.call(&request.sku, "/internal/v1/reservations", request).await
    }

    /// Drops a reservation the placing node will not commit (a later resolution from the
    /// store would drop it too; this is sooner).
    pub async fn forget(&self, sku: &Sku, order: crate::domain::ids::OrderId) -> Result<(), RemoteFailure> {
        let request = RemoteSettle {
            order,
            sku: sku.clone(),
            confirm: false,
        };
        self.call::<_, serde_json::Value>(sku, "/internal/v1/reservations/forget", &request)
            .await
            .map(|_| ())
    }

    pub(crate) async fn settle(&self, request: &RemoteSettle) -> Result<RemoteSettled, RemoteFailure> {
        self.call(&request.sku, "/internal/v1/reservations/settle", request)
            .await
    }

    /// Hands a consumed payment outcome to the node running the order's saga; it
    /// applies it with the consumed event's id, as a local consumer would.
    pub(crate) async fn payment(&self, request: &RemotePayment) -> Result<(), RemoteFailure> {
        self.call::<_, serde_json::Value>(&request.sku, "/internal/v1/payments", request)
            .await
            .map(|_| ())
    }
}
