//! A TCP proxy the test controls, to take a backend "down" without touching the real
//! server (which other tests share): `cut()` drops every proxied connection and refuses
//! new ones (a clean reset), `freeze()` keeps every socket open and stops copying bytes
//! (a silent partition: the peer sees no error, only silence), until `restore()`.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

pub struct Proxy {
    pub addr: SocketAddr,
    cut: Arc<AtomicBool>,
    generation: watch::Sender<u64>,
    /// `true` while frozen; the copying tasks wait for `false`.
    frozen: watch::Sender<bool>,
}

/// Waits while the link is frozen.
async fn thawed(frozen: &mut watch::Receiver<bool>) {
    let _ = frozen.wait_for(|f| !*f).await;
}

/// Copies `from` to `to` until either closes, pausing while frozen (bytes the kernel
/// already took stay in the proxy until the thaw).
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut frozen: watch::Receiver<bool>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        thawed(&mut frozen).await;
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        thawed(&mut frozen).await;
        if to.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    let _ = to.shutdown().await;
}

impl Proxy {
    pub async fn start(target: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("proxy binds");
        let addr = listener.local_addr().expect("proxy addr");
        let cut = Arc::new(AtomicBool::new(false));
        let (generation, _) = watch::channel(0u64);
        let (frozen, _) = watch::channel(false);
        let (accept_cut, accept_generation, accept_frozen) = (cut.clone(), generation.clone(), frozen.clone());
        tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                if accept_cut.load(Ordering::SeqCst) {
                    continue; // dropped: the connection is refused while cut
                }
                let mut cut_signal = accept_generation.subscribe();
                let frozen = accept_frozen.subscribe();
                tokio::spawn(async move {
                    // A connection opened while frozen stays open and silent: its
                    // backend side is connected only after the thaw.
                    let mut waiting = frozen.clone();
                    tokio::select! {
                        _ = thawed(&mut waiting) => {}
                        _ = cut_signal.changed() => return,
                    }
                    let Ok(outbound) = TcpStream::connect(target).await else {
                        return;
                    };
                    let (in_read, in_write) = inbound.into_split();
                    let (out_read, out_write) = outbound.into_split();
                    tokio::select! {
                        _ = async {
                            tokio::join!(
                                pump(in_read, out_write, frozen.clone()),
                                pump(out_read, in_write, frozen.clone())
                            )
                        } => {}
                        _ = cut_signal.changed() => {}
                    }
                });
            }
        });
        Self {
            addr,
            cut,
            generation,
            frozen,
        }
    }

    /// Drops every live connection and refuses new ones.
    pub fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
        self.generation.send_modify(|g| *g += 1);
    }

    /// Keeps every connection open and stops copying in both directions; new
    /// connections are accepted and left silent.
    pub fn freeze(&self) {
        self.frozen.send_replace(true);
    }

    /// Ends a cut or a freeze: new connections are proxied, frozen ones copy again.
    pub fn restore(&self) {
        self.cut.store(false, Ordering::SeqCst);
        self.frozen.send_replace(false);
    }
}
