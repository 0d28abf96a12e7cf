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
pub const PEER_HEADER: &str = "emporium-peer";

/// `POST /internal/v1/reservations`: reserve on the owner's SKU actor for an order
/// another node places (an order spanning owners).
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct RemoteReserve {
    pub order: crate::domain::ids::OrderId,
    pub sku: Sku,
    pub qty: i64,
    pub expires_at: crate::domain::Millis,
}

/// The owner's answer: the journal entry it decided (none when the reservation existed
/// already), the unit price, and the fence the placing node's commit must check.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct RemoteReserved {
    pub entry: Option<crate::persistence::JournalEntry>,
    pub unit_price: crate::domain::money::Money,
    pub fence: Fence,
}

/// A refusal of a remote reservation as the owner gave it.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct RemoteRefusal {
    /// `out_of_stock`, `unknown_sku` or `unavailable`.
    pub reason: String,
    pub requested: i64,
    pub available: i64,
}

/// `POST /internal/v1/reservations/settle`: after the order's decision is durable, its
/// owner applies it to its reservation (the owner reads the decision from the store;
/// `confirm` is what the caller recorded). Also the body of `/forget`.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct RemoteSettle {
    pub order: crate::domain::ids::OrderId,
    pub sku: Sku,
    pub confirm: bool,
}

#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct RemoteSettled {
    pub entry: Option<crate::persistence::JournalEntry>,
    pub fence: Fence,
}

/// `POST /internal/v1/payments`: a payment outcome consumed by a node that does not own
/// the order, for the node that runs its saga (`payment.mode = "kafka"`).
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct RemotePayment {
    pub order: crate::domain::ids::OrderId,
    /// The order's smallest SKU: its owner runs the saga.
    pub sku: Sku,
    /// `None` when the payment succeeded, else why it failed.
    pub failure: Option<String>,
    pub consumed: crate::persistence::Consumed,
}

/// Why a remote inventory call failed.
#[derive(Debug, Clone)]
pub enum RemoteFailure {
    Refused(RemoteRefusal),
    /// The owner did not answer, or no longer owns the SKU: retry (maybe elsewhere).
    Unavailable(Cause),
}

/// Calls other nodes' SKU actors (orders spanning owners). One pooled HTTP client.
pub struct PeerClient {
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

    pub fn ownership(&self) -> &Arc<Ownership> {
        &self.ownership
    }

    pub fn secret(&self) -> &str {
        &self.secret
    }

    pub fn client(&self) -> &reqwest::Client {
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

    pub async fn settle(&self, request: &RemoteSettle) -> Result<RemoteSettled, RemoteFailure> {
        self.call(&request.sku, "/internal/v1/reservations/settle", request)
            .await
    }

    /// Hands a consumed payment outcome to the node running the order's saga; it
    /// applies it with the consumed event's id, as a local consumer would.
    pub async fn payment(&self, request: &RemotePayment) -> Result<(), RemoteFailure> {
        self.call::<_, serde_json::Value>(&request.sku, "/internal/v1/payments", request)
            .await
            .map(|_| ())
    }
}
