//! A TCP round-robin balancer in front of the origin instances, as a load balancer
//! stands in front of them in production. The edge has one `ORIGIN_URL` and the
//! payment provider one webhook URL: both point here.
//!
//! Each new connection goes to the next instance; one that refuses the connection
//! (its process is gone) is skipped, as a balancer's connect failure moves on to the
//! next target. Connections already open to an instance that dies are broken, as
//! they would be behind a real balancer: that is part of the fault under test.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};

pub struct Balancer {
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Balancer {
    pub async fn start(backends: Vec<SocketAddr>) -> anyhow::Result<Balancer> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let backends = Arc::new(backends);
        let next = Arc::new(AtomicUsize::new(0));
        let task = tokio::spawn(async move {
            loop {
                let Ok((inbound, _)) = listener.accept().await else { continue };
                let (backends, next) = (backends.clone(), next.clone());
                tokio::spawn(async move {
                    let first = next.fetch_add(1, Ordering::Relaxed);
                    for i in 0..backends.len() {
                        let target = backends[(first + i) % backends.len()];
                        let connected = tokio::time::timeout(Duration::from_secs(2), TcpStream::connect(target)).await;
                        if let Ok(Ok(mut outbound)) = connected {
                            let _ = outbound.set_nodelay(true);
                            let _ = inbound.set_nodelay(true);
                            let mut inbound = inbound;
                            let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                            return;
                        }
                    }
                    // No instance takes connections: the caller's connection is closed.
                });
            }
        });
        Ok(Balancer { addr, task })
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for Balancer {
    fn drop(&mut self) {
        self.task.abort();
    }
}
