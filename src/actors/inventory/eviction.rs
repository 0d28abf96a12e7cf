//! The cap on live SKU actors (`max_live_actors`): past it, each activation asks the
//! least recently used actor that can go to stop (approximate LRU, the CLOCK
//! algorithm); an actor still holding something only in memory stays and looks again.

use super::sku_actor::{SkuActor, SkuStats};
use super::Shared;
use crate::domain::ids::Sku;
use actix::{ActorFutureExt, AsyncContext, Context, Handler, Message, WrapFuture};
use std::sync::atomic::Ordering;
use std::time::Duration;

/// The registry is over its live-actor cap and chose this actor: stop if nothing of it
/// lives only in memory, else stay (and go back in the eviction queue).
#[derive(Message, Clone)]
#[rtype(result = "()")]
pub(super) struct Evict;

/// How long an evicted actor waits before it looks again whether its last settle is
/// durable (see [`SkuActor::last_settle_seq`]).
const EVICT_RETRY: Duration = Duration::from_millis(100);
/// Likewise for an actor still holding reservations (they last until paid or expired).
const HELD_RETRY: Duration = Duration::from_secs(1);

impl SkuActor {
    /// Chosen for eviction but not able to go yet: tries again after `delay` if the
    /// registry is still over its cap, else goes back in the queue like any live actor.
    pub(super) fn evict_later(&mut self, ctx: &mut Context<Self>, delay: Duration) {
        ctx.run_later(delay, |act, ctx| {
            if act.shared.actors.len() > act.shared.max_live {
                ctx.notify(Evict);
            } else {
                act.shared.requeue(&act.sku);
            }
        });
    }
}

impl Handler<Evict> for SkuActor {
    type Result = ();
    fn handle(&mut self, _msg: Evict, ctx: &mut Self::Context) {
        if self.inventory.has_reservations() {
            // Held units live in memory until their orders settle: look again later.
            self.evict_later(ctx, HELD_RETRY);
            return;
        }
        if self.last_settle_seq == 0 {
            // Nothing handed out that is not durable already (reservations taken since
            // activation are settled, forgotten or held; stock changes are committed
            // before they are answered): the store holds exactly this state.
            self.stop_now(ctx);
            return;
        }
        // A settle was handed out: go only once the store has it. `wait` holds this
        // actor's mailbox meanwhile, so nothing changes between the read and the stop.
        let store = self.shared.store.clone();
        let sku = self.sku.clone();
        ctx.wait(
            async move { store.load_sku(&sku).await.ok().flatten().map(|r| r.seq) }
                .into_actor(self)
                .map(|durable, act, ctx| {
                    if durable.is_some_and(|seq| seq >= act.last_settle_seq) && !act.inventory.has_reservations() {
                        act.stop_now(ctx);
                    } else {
                        act.evict_later(ctx, EVICT_RETRY);
                    }
                }),
        );
    }
}

impl Shared {
    /// Puts `sku` back at the end of the eviction queue (an actor that could not go yet).
    pub(super) fn requeue(&self, sku: &Sku) {
        if self.max_live > 0 {
            self.clock
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push_back(sku.clone());
        }
    }

    /// Over the cap: asks the least recently used live actor that is not `except` to go.
    /// Approximate LRU: an actor used since the hand last passed gets a second chance.
    /// Usually a few steps per activation; at most one turn of the clock, which clears
    /// every second-chance bit it passes, so an activation over the cap always asks
    /// someone to go (a bound of a few steps left the set over the cap for good when the
    /// last activations met only recently used actors).
    pub(super) fn evict_over_cap(&self, except: &Sku) {
        if self.max_live == 0 || self.actors.len() <= self.max_live {
            return;
        }
        let mut clock = self.clock.lock().unwrap_or_else(|e| e.into_inner());
        if clock.len() > 2 * self.max_live.max(self.actors.len()) {
            // Entries of actors that idled out; drop them so the queue stays bounded too.
            clock.retain(|sku| self.actors.contains_key(sku));
        }
        let turn = clock.len() + 1;
        let mut steps = 0;
        while let Some(sku) = clock.pop_front() {
            steps += 1;
            if steps > turn || self.actors.len() <= self.max_live {
                clock.push_front(sku);
                return;
            }
            if &sku == except {
                clock.push_back(sku);
                continue;
            }
            let Some(live) = self.actors.get(&sku).map(|l| l.clone()) else {
                continue; // idled out meanwhile
            };
            if live.stats.referenced.swap(false, Ordering::Relaxed) {
                clock.push_back(sku);
                continue;
            }
            // The actor decides (it alone knows whether it still holds anything); if it
            // stays, it puts itself back in the queue.
            live.addr.do_send(Evict);
            return;
        }
    }
}

/// Tells the eviction clock this actor was used. Read first: under a sale every worker
/// looks the same SKU up, and an unconditional store would bounce its cache line.
pub(super) fn mark_used(stats: &SkuStats) {
    if !stats.referenced.load(Ordering::Relaxed) {
        stats.referenced.store(true, Ordering::Relaxed);
    }
}
