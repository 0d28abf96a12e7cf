//! A Tansu Kafka-protocol broker of a test's own (`EMPORIUM_TEST_TANSU` names the
//! binary; `scripts/services.sh env kafka` prints it). A broker per test keeps consumer
//! groups that start from the earliest offset from seeing other tests' events.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The value of a required test variable; when unset, the server is started through
/// scripts/services.sh ([`super::services::test_env`]). `None`, with the reason printed,
/// only when that is impossible; under `CI=true` that fails the test instead.
pub fn required_env(name: &str) -> Option<String> {
    super::services::test_env(name)
}

pub struct Tansu {
    pub brokers: String,
    child: Child,
}

impl Tansu {
    /// Starts a fresh in-memory broker on a free port and waits until it listens.
    pub async fn start(binary: &str) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let url = format!("tcp://127.0.0.1:{port}");
        let child = Command::new(binary)
            .args(["broker", "--listener-url", &url, "--advertised-listener-url", &url])
            .args(["--storage-engine", "memory://tansu/"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("tansu starts");
        let deadline = Instant::now() + Duration::from_secs(30);
        while tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_err() {
            assert!(Instant::now() < deadline, "tansu never listened");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Self {
            brokers: format!("127.0.0.1:{port}"),
            child,
        }
    }
}

impl Drop for Tansu {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
