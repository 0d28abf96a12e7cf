//! Cluster mode's rules: which virtual shard a SKU belongs to, what a fair share of the
//! shards is, and which leases a node should claim or give back after reading the lease
//! table. Pure functions; the lease keeper (`actors/cluster/keeper.rs`) runs them and the SQL
//! store (`persistence/sql/cluster.rs`) applies their decisions.

/// A virtual shard: SKU hash modulo the configured shard count.
pub(crate) type Shard = u32;

/// The shard of a key. FNV-1a over the bytes, so every node (whatever its build or
/// platform) maps a SKU to the same shard; `std`'s hasher makes no such promise.
pub fn shard_of(key: &str, shards: u32) -> Shard {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in key.as_bytes() {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    (hash % u64::from(shards.max(1))) as Shard
}

/// "This write is valid only while `node` holds `shard` at `epoch`": checked by the
/// group commit in its own transaction. A write-set carries one per shard it writes.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
pub struct Fence {
    pub(crate) shard: Shard,
    pub(crate) node: String,
    pub(crate) epoch: i64,
}

/// How many shards the member at `rank` (0-based, in node-id order) should hold when
/// `members` live nodes share `shards`: an even split, the first `shards % members`
/// members taking one more.
pub(crate) fn fair_share(shards: u32, members: usize, rank: usize) -> usize {
    let members = members.max(1);
    let shards = shards as usize;
    shards / members + usize::from(rank < shards % members)
}

/// The live members and `me` in the order fair shares are handed out: by node id.
fn ranked<'a>(me: &'a str, live_members: &'a [String]) -> Vec<&'a str> {
    let mut members: Vec<&str> = live_members.iter().map(String::as_str).collect();
    members.push(me);
    members.sort_unstable();
    members.dedup();
    members
}

/// The fair share of `shards` that node `me` should hold among the live members.
pub(crate) fn share_of(me: &str, live_members: &[String], shards: u32) -> usize {
    let members = ranked(me, live_members);
    let rank = members.iter().position(|m| *m == me).unwrap_or(0);
    fair_share(shards, members.len(), rank)
}

/// One row of the lease table as read, with the database's verdict on its expiry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LeaseView {
    pub(crate) shard: Shard,
    /// `None`: released, never taken, or its owner's lease has expired.
    pub(crate) owner: Option<String>,
}

/// What a node should do after reading the lease table.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Rebalance {
    /// Free shards to claim, up to this node's fair share.
    pub(crate) claim: Vec<Shard>,
    /// Shards this node holds beyond its fair share while another live member holds
    /// less than its own: handed over (released) so that member can claim them.
    pub(crate) release: Vec<Shard>,
}

/// Decides the claims and releases of node `me` from the lease table and the live
/// members (node ids). Deterministic, so every node reading the same table agrees on
/// who should move: only nodes over their share release, only nodes under it claim.
pub(crate) fn rebalance(me: &str, live_members: &[String], leases: &[LeaseView]) -> Rebalance {
    let members = ranked(me, live_members);
    let shards = leases.len() as u32;
    let share_of = |node: &str| {
        members
            .iter()
            .position(|m| *m == node)
            .map_or(0, |rank| fair_share(shards, members.len(), rank))
    };
    let held = |node: &str| leases.iter().filter(|l| l.owner.as_deref() == Some(node)).count();
    let mine: Vec<Shard> = leases
        .iter()
        .filter(|l| l.owner.as_deref() == Some(me))
        .map(|l| l.shard)
        .collect();
    let target = share_of(me);
    let mut plan = Rebalance::default();
    if mine.len() < target {
        // Free shards in a per-node order, so nodes claiming at once mostly reach for
        // different shards instead of racing for the lowest numbers.
        let mut free: Vec<Shard> = leases.iter().filter(|l| l.owner.is_none()).map(|l| l.shard).collect();
        let offset = shard_of(me, shards.max(1));
        free.sort_unstable_by_key(|s| (s + shards - offset) % shards.max(1));
        plan.claim = free.into_iter().take(target - mine.len()).collect();
    } else if mine.len() > target {
        let someone_short = members.iter().any(|m| *m != me && held(m) < share_of(m));
        if someone_short {
            let mut surplus = mine;
            surplus.sort_unstable();
            plan.release = surplus.split_off(target);
        }
    }
    plan
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn table(owners: &[Option<&str>]) -> Vec<LeaseView> {
        owners
            .iter()
            .enumerate()
            .map(|(i, o)| LeaseView {
                shard: i as Shard,
                owner: o.map(str::to_owned),
            })
            .collect()
    }

    fn ids(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn shards_are_stable_and_in_range() {
        assert_eq!(shard_of("TSHIRT-RED-M", 256), shard_of("TSHIRT-RED-M", 256));
        // Pinned: a change of the hash would move every SKU of a running cluster.
        assert_eq!(shard_of("", 256), (0xcbf2_9ce4_8422_2325u64 % 256) as u32);
        assert!((0..1000).all(|i| shard_of(&format!("SKU-{i}"), 7) < 7));
    }

    #[test]
    fn fair_shares_add_up_and_differ_by_at_most_one() {
        for members in 1..10 {
            let shares: Vec<usize> = (0..members).map(|r| fair_share(256, members, r)).collect();
            assert_eq!(shares.iter().sum::<usize>(), 256);
            assert!(shares.iter().max().unwrap() - shares.iter().min().unwrap() <= 1);
        }
    }

    #[test]
    fn a_lone_node_claims_everything() {
        let plan = rebalance("a", &ids(&["a"]), &table(&[None; 8]));
        assert_eq!(plan.claim.len(), 8);
        assert!(plan.release.is_empty());
    }

    #[test]
    fn a_joining_node_gets_shards_from_the_one_holding_too_many() {
        let leases = table(&[Some("a"); 8]);
        let members = ids(&["a", "b"]);
        let a = rebalance("a", &members, &leases);
        assert_eq!(a.release, vec![4, 5, 6, 7]);
        let b = rebalance("b", &members, &leases);
        assert!(b.claim.is_empty(), "nothing is free yet");
        let after: Vec<Option<&str>> = (0..8).map(|s| (s < 4).then_some("a")).collect();
        let b = rebalance("b", &members, &table(&after));
        assert_eq!(b.claim.len(), 4);
    }

    #[test]
    fn a_node_over_its_share_keeps_it_while_nobody_is_short() {
        // "c" is live but already holds its share: "a" keeps its extra shard.
        let leases = table(&[Some("a"), Some("a"), Some("b"), Some("c")]);
        let plan = rebalance("a", &ids(&["a", "b", "c"]), &leases);
        assert_eq!(plan, Rebalance::default());
    }

    proptest! {
        #[test]
        fn claims_are_free_shards_within_the_share(owners in proptest::collection::vec(0u8..4, 1..64)) {
            // 0 = free, 1..=3 = nodes n1..n3 (all live).
            let names = ["n1", "n2", "n3"];
            let leases: Vec<LeaseView> = owners.iter().enumerate().map(|(i, o)| LeaseView {
                shard: i as Shard,
                owner: (*o > 0).then(|| names[*o as usize - 1].to_owned()),
            }).collect();
            let members = ids(&names);
            for (rank, me) in names.iter().enumerate() {
                let plan = rebalance(me, &members, &leases);
                let held = leases.iter().filter(|l| l.owner.as_deref() == Some(*me)).count();
                let share = fair_share(leases.len() as u32, 3, rank);
                prop_assert!(plan.claim.is_empty() || plan.release.is_empty());
                prop_assert!(held + plan.claim.len() <= share.max(held));
                for s in &plan.claim {
                    prop_assert!(leases[*s as usize].owner.is_none());
                }
                for s in &plan.release {
                    prop_assert_eq!(leases[*s as usize].owner.as_deref(), Some(*me));
                }
                prop_assert_eq!(held - plan.release.len().min(held), if plan.release.is_empty() { held } else { share });
            }
        }
    }
}
