//! Placing an order: reserve every SKU or none (in this node's SKU actors, at the
//! owners of the others in cluster mode, or under row locks), commit the order with
//! its reservations and idempotency record in one group commit, start its saga. An
//! idempotent retry answers the stored outcome; a commit that ended in an outage is
//! resolved from the store.

use super::retry::with_backoff;
use super::step_sets::order_write_set;
use super::{Orders, PlaceError, PlaceOrder, Placed};
use crate::actors::cluster::{RemoteFailure, RemoteReserve};
use crate::actors::inventory::InventoryFailure;
use crate::actors::write_behind::CommitError;
use crate::domain::idempotency::{replay, IdempotencyKey, Replay, RequestHash};
use crate::domain::ids::{OrderId, Sku, UserId};
use crate::domain::inventory::InventoryError;
use crate::domain::now_millis;
use crate::domain::order::{quantities_by_sku, Order};
use crate::error::Cause;
use crate::persistence::{StoreError, WriteSet};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;
use tracing::info;

impl Orders {
    /// Places an order: reserve every SKU or none, group-commit, start the saga.
    /// Runs on its own task so a client that hangs up cannot leave a reservation behind.
    pub async fn place(&self, request: PlaceOrder) -> Result<Placed, PlaceError> {
        let this = self.clone();
        // The placement task stays in the request's trace.
        let span = tracing::debug_span!("order.place", user = %request.user);
        tokio::spawn(tracing::Instrument::instrument(
            async move { this.place_detached(request).await },
            span,
        ))
        .await
        .unwrap_or_else(|e| Err(PlaceError::Unavailable(Cause::new(e))))
    }

    async fn place_detached(&self, request: PlaceOrder) -> Result<Placed, PlaceError> {
        let Some((key, hash)) = request.idempotency.clone() else {
            return self.reserve_and_commit(request).await;
        };
        let slot = (request.user.clone(), key.clone());
        if let Some(stored) = self.stored_answer(&request.user, &key, &hash).await? {
            return Ok(stored);
        }
        if self.deps.keys_in_flight.insert(slot.clone(), ()).is_some() {
            return Err(PlaceError::KeyInProgress);
        }
        // Checked again under the in-flight mark: the first request may have finished in between.
        let result = match self.stored_answer(&request.user, &key, &hash).await {
            Ok(Some(stored)) => Ok(stored),
            Ok(None) => self.reserve_and_commit(request).await,
            Err(e) => Err(e),
        };
        self.deps.keys_in_flight.remove(&slot);
        result
    }

    async fn stored_answer(
        &self,
        user: &UserId,
        key: &IdempotencyKey,
        hash: &RequestHash,
    ) -> Result<Option<Placed>, PlaceError> {
        let stored = self
            .deps
            .store
            .find_idempotency(user, key.as_str())
            .await
            .map_err(|e| PlaceError::Unavailable(Cause::new(e)))?;
        let Some(record) = stored else {
            return Ok(None);
        };
        match replay(&RequestHash::stored(record.request_hash), hash) {
            Replay::Mismatch => Err(PlaceError::IdempotencyMismatch),
            Replay::StoredAnswer => {
                let order =
                    serde_json::from_str(&record.response).map_err(|e| PlaceError::Unavailable(Cause::new(e)))?;
                Ok(Some(Placed { order }))
            }
        }
    }

    async fn reserve_and_commit(&self, request: PlaceOrder) -> Result<Placed, PlaceError> {
        let deps = &self.deps;
        let wanted = quantities_by_sku(&request.items, deps.options.limits)?;
        let id = OrderId::generate();
        let now = now_millis();
        let expires_at = now + deps.options.reservation_ttl.as_millis() as i64;
        deps.keeper.place(self, request, wanted, id, now, expires_at).await
    }

    /// The actor strategy's placement: reserve in each SKU actor (in SKU order), then
    /// group-commit the order; memory forgets what the database refused.
    pub(super) async fn place_in_memory(
        &self,
        request: PlaceOrder,
        wanted: BTreeMap<Sku, i64>,
        id: OrderId,
        now: i64,
        expires_at: i64,
    ) -> Result<Placed, PlaceError> {
        let deps = &self.deps;
        // Cluster mode: the order belongs to its smallest SKU's shard, and only that
        // shard's owner may place it, so the node that places it is the one that runs its
        // saga (and the accept commit is fenced on that shard). A node that lost the shard
        // since the request was routed here refuses; the client's retry reaches the owner.
        if wanted
            .keys()
            .next()
            .is_some_and(|first| !deps.ownership.holds_sku(first))
        {
            return Err(PlaceError::Unavailable(
                ("this node does not hold the order's shard (any more)".to_owned()).into(),
            ));
        }
        let mut journal = Vec::with_capacity(wanted.len());
        let mut prices = HashMap::with_capacity(wanted.len());
        // Cluster mode: SKUs another node owns are reserved there (in SKU order like the
        // rest); their entries are committed here under those nodes' fences.
        let mut remote_fences = Vec::new();
        let mut failure = None;
        for (sku, qty) in &wanted {
            if !deps.ownership.holds_sku(sku) {
                let request = RemoteReserve {
                    order: id,
                    sku: sku.clone(),
                    qty: *qty,
                    expires_at,
                };
                match deps.peers.reserve(&request).await {
                    Ok(reserved) => {
                        prices.insert(sku.clone(), reserved.unit_price);
                        journal.extend(reserved.entry);
                        remote_fences.push(reserved.fence);
                        continue;
                    }
                    Err(RemoteFailure::Refused(refusal)) => {
                        failure = Some(match refusal.reason.as_str() {
                            "out_of_stock" => PlaceError::OutOfStock {
                                sku: sku.clone(),
                                requested: refusal.requested,
                                available: refusal.available,
                            },
                            "unknown_sku" => PlaceError::UnknownSku(sku.clone()),
                            other => PlaceError::Unavailable(format!("{sku}: {other}").into()),
                        });
                    }
                    Err(RemoteFailure::Unavailable(e)) => failure = Some(PlaceError::Unavailable(e)),
                }
                break;
            }
            match deps.inventory.reserve(sku, id, *qty, expires_at).await {
                Ok(reserved) => {
                    prices.insert(sku.clone(), reserved.unit_price);
                    journal.extend(reserved.entry);
                }
                Err(e) => {
                    failure = Some(match e {
                        InventoryFailure::UnknownSku(sku) => PlaceError::UnknownSku(sku),
                        InventoryFailure::Rule(InventoryError::OutOfStock { requested, available }) => {
                            PlaceError::OutOfStock {
                                sku: sku.clone(),
                                requested,
                                available,
                            }
                        }
                        other => PlaceError::Unavailable(Cause::new(other)),
                    });
                    break;
                }
            }
        }
        let set = failure.map_or_else(|| order_write_set(&request, id, &prices, journal, now, expires_at), Err);
        let set = match set {
            Ok(set) => WriteSet { remote_fences, ..set },
            Err(e) => {
                self.forget_all(prices.keys(), id).await;
                return Err(e);
            }
        };
        let order = set.new_order.clone().expect("an order write-set carries its order");
        match deps.write_behind.commit(set).await {
            Ok(()) => {
                deps.metrics.orders_created.inc();
                self.start_saga(order.clone(), request.traceparent, false);
                Ok(Placed { order })
            }
            Err(CommitError::Store(StoreError::Unavailable(e))) => {
                // The outcome is unknown: the connection may have broken after the database
                // committed. Keep holding the stock (never oversell) until the store can say
                // which it was; the client hears 503 and may retry with its Idempotency-Key.
                let this = self.clone();
                deps.in_doubt.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                tokio::spawn(async move {
                    this.resolve_in_doubt(order, request.traceparent).await;
                    this.deps.in_doubt.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
                });
                Err(PlaceError::Unavailable(e))
            }
            Err(e) => {
                // Memory never keeps what the database does not.
                self.forget_all(prices.keys(), id).await;
                Err(PlaceError::Unavailable(Cause::new(e)))
            }
        }
    }

    /// The `sql_row_lock` strategy: the whole placement is one locking transaction.
    pub(super) async fn place_row_locked(
        &self,
        request: PlaceOrder,
        wanted: BTreeMap<Sku, i64>,
        id: OrderId,
        now: i64,
        expires_at: i64,
    ) -> Result<Placed, PlaceError> {
        use crate::persistence::row_lock::Refusal;
        let placed = self
            .deps
            .store
            .place_row_locked(id, &wanted, expires_at, |prices, journal| {
                order_write_set(&request, id, prices, journal, now, expires_at).map_err(|e| e.to_string())
            })
            .await;
        match placed {
            Ok(set) => {
                let order = set.new_order.expect("an order write-set carries its order");
                self.deps.metrics.orders_created.inc();
                self.start_saga(order.clone(), request.traceparent, false);
                Ok(Placed { order })
            }
            Err(Refusal::UnknownSku(sku)) => Err(PlaceError::UnknownSku(sku)),
            Err(Refusal::Rule {
                sku,
                rule: InventoryError::OutOfStock { requested, available },
            }) => Err(PlaceError::OutOfStock {
                sku,
                requested,
                available,
            }),
            Err(Refusal::Rule { rule, .. }) => Err(PlaceError::Rejected(rule.to_string())),
            Err(Refusal::Invalid(e)) => Err(PlaceError::Rejected(e)),
            // A duplicate idempotency key: another process placed this request at the same time.
            Err(Refusal::Store(StoreError::Conflict(_))) => Err(PlaceError::KeyInProgress),
            Err(Refusal::Store(e)) => Err(PlaceError::Unavailable(Cause::new(e))),
        }
    }

    /// Settles an order whose commit ended in an outage: started if it was committed,
    /// its reservations dropped if it was not.
    async fn resolve_in_doubt(&self, order: Order, traceparent: Option<String>) {
        let stored = with_backoff(Duration::from_millis(50), Duration::from_secs(2), || async {
            self.deps.store.get_order(order.id).await.ok()
        })
        .await;
        if stored.is_some() {
            info!(order_id = %order.id, "order in doubt was committed; starting its saga");
            self.deps.metrics.orders_created.inc();
            self.start_saga(order, traceparent, false);
        } else {
            let skus: BTreeSet<&Sku> = order.lines.iter().map(|l| &l.sku).collect();
            self.forget_all(skus.into_iter(), order.id).await;
        }
    }
}
