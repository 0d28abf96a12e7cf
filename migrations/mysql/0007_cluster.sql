-- Cluster mode (docs/cluster.md): the members and the shard leases, kept in the store
-- that holds the data. Times are the database's clock (milliseconds), never a node's,
-- so clock skew between nodes cannot make two of them think they hold one lease.

CREATE TABLE cluster_members (
    node_id       VARCHAR(128) PRIMARY KEY,
    -- How peers reach this node's HTTP API (forwarded requests).
    url           VARCHAR(512) NOT NULL,
    -- Last I-am-alive, database time in ms; a member older than the lease TTL is dead.
    heartbeat_at  BIGINT NOT NULL,
    started_at    BIGINT NOT NULL
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

-- One row per virtual shard, created by the first node that starts.
CREATE TABLE shard_leases (
    shard       INT PRIMARY KEY,
    owner       VARCHAR(128) NULL,
    -- The fencing token: grows by one on every change of owner. A group commit checks,
    -- in its own transaction, that its node still holds each shard it writes at the
    -- epoch it loaded under.
    epoch       BIGINT NOT NULL DEFAULT 0,
    expires_at  BIGINT NOT NULL DEFAULT 0
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

-- The decision of each placement whose SKUs have different owners: the placing node
-- inserts "committed" in the commit that stores the order; an owner that reserved
-- stock for it and never heard back inserts "aborted" if nothing is there. The primary
-- key makes the first one the decision (docs/cluster.md, "Orders that span owners").
CREATE TABLE placement_outcomes (
    order_id    VARCHAR(36) PRIMARY KEY,
    outcome     VARCHAR(16) NOT NULL,
    decided_at  BIGINT NOT NULL
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
