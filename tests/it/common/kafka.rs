//! Real Apache Kafka brokers of a test's own (KRaft, combined broker and controller),
//! started through `scripts/kafka-broker.sh` (`EMPORIUM_TEST_KAFKA_BROKER` names it;
//! `scripts/services.sh env kafka` prints it, after `install kafka` fetched the jars from
//! Maven Central). A broker per test keeps consumer groups that start from the earliest
//! offset from seeing other tests' events. Each broker keeps its log in a directory of
//! the test's, so a broker killed with SIGKILL comes back with its log.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a broker (a JVM, on a shared 2-core machine) may take to answer.
const START_BOUND: Duration = Duration::from_secs(120);

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

/// One broker process: its ports and log directory outlive the process, so it can be
/// killed and started again as the same node.
pub struct KafkaBroker {
    pub node_id: u32,
    pub port: u16,
    script: String,
    dir: PathBuf,
    controller_port: u16,
    voters: String,
    extra: Vec<String>,
    child: Option<Child>,
}

impl KafkaBroker {
    /// A single broker of this test's own; `None` (the reason printed) only where the
    /// broker cannot be had outside CI.
    pub async fn start() -> Option<Self> {
        Self::start_on(free_port(), &[]).await
    }

    /// A single broker listening on `port`, with extra `key=value` settings (for
    /// example an advertised listener behind a proxy).
    pub async fn start_on(port: u16, extra: &[String]) -> Option<Self> {
        let script = super::services::test_env("EMPORIUM_TEST_KAFKA_BROKER")?;
        let dir = tempfile::Builder::new()
            .prefix("emporium-kafka-")
            .tempdir()
            .expect("temp dir")
            .keep();
        let controller_port = free_port();
        let mut broker = Self {
            node_id: 1,
            port,
            script,
            dir,
            controller_port,
            voters: format!("1@127.0.0.1:{controller_port}"),
            extra: extra.to_vec(),
            child: None,
        };
        broker.spawn();
        wait_for_brokers(&broker.advertised(), 1).await;
        Some(broker)
    }

    /// `127.0.0.1:PORT`, as clients bootstrap from it.
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Where clients reach it: an `advertised.listeners` override, else its own port.
    fn advertised(&self) -> String {
        self.extra
            .iter()
            .find_map(|kv| kv.strip_prefix("advertised.listeners=PLAINTEXT://"))
            .map_or_else(|| self.address(), str::to_owned)
    }

    fn spawn(&mut self) {
        let log = std::fs::File::create(self.dir.join(format!("broker-{}.out", self.node_id))).expect("log file");
        let child = Command::new("bash")
            .arg(&self.script)
            .arg(&self.dir)
            .arg(self.node_id.to_string())
            .arg(self.port.to_string())
            .arg(self.controller_port.to_string())
            .arg(&self.voters)
            .args(&self.extra)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .spawn()
            .expect("scripts/kafka-broker.sh starts");
        self.child = Some(child);
    }

    /// A crash: SIGKILL, no controlled shutdown.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the same node again on its log directory (after [`Self::kill9`]).
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "restart after kill9");
        self.spawn();
    }
}

impl Drop for KafkaBroker {
    fn drop(&mut self) {
        self.kill9();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Three brokers, each a voter of the one KRaft quorum: topics get replication factor 3
/// and `min.insync.replicas = 2` (the script's defaults for three voters).
pub struct KafkaCluster {
    pub brokers: Vec<KafkaBroker>,
}

impl KafkaCluster {
    pub async fn start(size: u32) -> Option<Self> {
        let script = super::services::test_env("EMPORIUM_TEST_KAFKA_BROKER")?;
        let ports: Vec<(u16, u16)> = (0..size).map(|_| (free_port(), free_port())).collect();
        let voters = ports
            .iter()
            .enumerate()
            .map(|(i, (_, controller))| format!("{}@127.0.0.1:{controller}", i + 1))
            .collect::<Vec<_>>()
            .join(",");
        let mut brokers: Vec<KafkaBroker> = ports
            .iter()
            .enumerate()
            .map(|(i, (port, controller_port))| KafkaBroker {
                node_id: i as u32 + 1,
                port: *port,
                script: script.clone(),
                dir: tempfile::Builder::new()
                    .prefix("emporium-kafka-")
                    .tempdir()
                    .expect("temp dir")
                    .keep(),
                controller_port: *controller_port,
                voters: voters.clone(),
                extra: Vec::new(),
                child: None,
            })
            .collect();
        for broker in &mut brokers {
            broker.spawn();
        }
        let cluster = Self { brokers };
        wait_for_brokers(&cluster.bootstrap(), size as usize).await;
        Some(cluster)
    }

    /// Every broker's address, comma-separated (`bootstrap.servers`).
    pub fn bootstrap(&self) -> String {
        self.brokers
            .iter()
            .map(KafkaBroker::address)
            .collect::<Vec<_>>()
            .join(",")
    }

    pub fn broker(&mut self, node_id: i32) -> &mut KafkaBroker {
        self.brokers
            .iter_mut()
            .find(|b| b.node_id as i32 == node_id)
            .expect("a broker with that node id")
    }
}

/// Waits until the brokers at `bootstrap` answer a metadata request naming `count` brokers.
pub async fn wait_for_brokers(bootstrap: &str, count: usize) {
    let deadline = Instant::now() + START_BOUND;
    loop {
        let seen = broker_count(bootstrap).await;
        if seen >= count {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "Kafka at {bootstrap} did not show {count} brokers within {START_BOUND:?} (saw {seen})"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn broker_count(bootstrap: &str) -> usize {
    let bootstrap = bootstrap.to_owned();
    tokio::task::spawn_blocking(move || {
        use rdkafka::consumer::{BaseConsumer, Consumer};
        let consumer: BaseConsumer = match rdkafka::ClientConfig::new()
            .set("bootstrap.servers", &bootstrap)
            .create()
        {
            Ok(c) => c,
            Err(_) => return 0,
        };
        consumer
            .fetch_metadata(None, Duration::from_secs(2))
            .map_or(0, |m| m.brokers().len())
    })
    .await
    .unwrap_or(0)
}

/// The leader of `topic`'s partition `partition`, as the cluster reports it.
pub async fn leader_of(bootstrap: &str, topic: &str, partition: i32) -> Option<i32> {
    let (bootstrap, topic) = (bootstrap.to_owned(), topic.to_owned());
    tokio::task::spawn_blocking(move || {
        use rdkafka::consumer::{BaseConsumer, Consumer};
        let consumer: BaseConsumer = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", &bootstrap)
            .create()
            .ok()?;
        let metadata = consumer.fetch_metadata(Some(&topic), Duration::from_secs(5)).ok()?;
        let topic = metadata.topics().first()?;
        let leader = topic.partitions().iter().find(|p| p.id() == partition)?.leader();
        (leader >= 0).then_some(leader)
    })
    .await
    .ok()
    .flatten()
}
