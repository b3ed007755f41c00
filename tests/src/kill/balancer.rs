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
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Balancer {
    /// Runs on a thread and runtime of its own, with a deep accept queue: the
    /// harness's thousands of clients on the same cores must not be what slows
    /// the origin's traffic down.
    pub async fn start(backends: Vec<SocketAddr>) -> anyhow::Result<Balancer> {
        let socket = tokio::net::TcpSocket::new_v4()?;
        socket.bind(SocketAddr::from(([127, 0, 0, 1], 0)))?;
        let addr = socket.local_addr()?;
        let std_listener = socket.listen(4096)?.into_std()?;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        std::thread::Builder::new().name("kill-balancer".into()).spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime");
            runtime.block_on(async move {
                let listener = TcpListener::from_std(std_listener).expect("the balancer's listener");
                tokio::select! {
                    _ = serve(listener, Arc::new(backends)) => {}
                    _ = stopped => {}
                }
            });
        })?;
        Ok(Balancer { addr, stop: Some(stop) })
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

async fn serve(listener: TcpListener, backends: Arc<Vec<SocketAddr>>) {
    let next = Arc::new(AtomicUsize::new(0));
    loop {
        let Ok((inbound, _)) = listener.accept().await else {
            // Out of descriptors, say: wait rather than spin.
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
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
}

impl Drop for Balancer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}
