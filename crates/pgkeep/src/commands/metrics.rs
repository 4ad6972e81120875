//! `pgkeep metrics [--listen ADDR]`: the Prometheus exposition of the engine's `observe` look
//! (PostgreSQL, the pg_wal backlog, the volumes, the result records), to stdout once, or served
//! on `GET /metrics` at ADDR with a fresh look per scrape (the `metrics` container in the db pod
//! runs `pgkeep metrics --listen 0.0.0.0:9187`). Nothing is kept between scrapes.
//!
//! A failure never ends the server (in the db pod that would make the pod unready): a scrape
//! that cannot reach PostgreSQL reports `pgkeep_up 0`, a port that cannot be bound is retried.
//!
//! The server speaks just enough HTTP/1.1 for a scraper: it reads one request head (at most
//! 8 KiB, within 10 seconds), answers and closes the connection. One scrape at a time is looked
//! at; others wait for it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use pgkeep_engine::db::ConnParams;
use pgkeep_engine::inspect::Site;
use pgkeep_engine::settings::{Settings, Target};
use pgkeep_engine::{metrics, observe};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::cli::Ctx;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Serve `GET /metrics` on this address (e.g. 0.0.0.0:9187) until stopped, instead of
    /// printing once.
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<SocketAddr>,
}

pub async fn run(args: Args, ctx: Ctx) -> anyhow::Result<()> {
    if ctx.target() == Target::Kube {
        // The metrics container mounts every volume it reports on.
        return crate::cluster::run_local_in_container(&ctx, METRICS_CONTAINER, &["metrics"]).await;
    }
    let settings = Arc::new(ctx.settings().clone());
    match args.listen {
        None => {
            print!("{}", scrape(&settings).await);
            Ok(())
        }
        Some(addr) => serve(addr, settings).await,
    }
}

/// The db pod's container that runs `pgkeep metrics --listen`.
pub const METRICS_CONTAINER: &str = pgkeep_kube::manifests::deployment::METRICS_CONTAINER;

async fn scrape(s: &Settings) -> String {
    let site = Site::of(s);
    let o = observe::observe(&site, &ConnParams::from_settings(s), &s.wal).await;
    metrics::render(&o)
}

async fn serve(addr: SocketAddr, settings: Arc<Settings>) -> anyhow::Result<()> {
    let mut stop = crate::stop::Stop::install();
    // In the db pod a container that exits makes the whole pod unready (and the Service drop
    // PostgreSQL), so a port that cannot be bound is retried and logged, never fatal; the
    // scraper sees the target down.
    let listener = loop {
        match tokio::net::TcpListener::bind(addr).await {
            Ok(l) => break l,
            Err(e) => {
                let e = anyhow::Error::new(e).context(format!(
                    "listening on {addr} (is the port taken?); retrying in 10s"
                ));
                tracing::error!(error = %format!("{e:#}"), "metrics not served");
                tokio::select! {
                    _ = stop.requested() => return Ok(()),
                    _ = tokio::time::sleep(Duration::from_secs(10)) => {}
                }
            }
        }
    };
    tracing::info!(addr = %listener.local_addr()?, "serving /metrics");
    let one_at_a_time = Arc::new(tokio::sync::Mutex::new(()));
    loop {
        tokio::select! {
            _ = stop.requested() => return Ok(()),
            conn = listener.accept() => {
                let (sock, peer) = match conn {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let (s, lock) = (settings.clone(), one_at_a_time.clone());
                tokio::spawn(async move {
                    if let Err(e) = answer(sock, &s, &lock).await {
                        tracing::debug!(%peer, error = %e, "scrape connection");
                    }
                });
            }
        }
    }
}

async fn answer(
    mut sock: tokio::net::TcpStream,
    s: &Settings,
    lock: &tokio::sync::Mutex<()>,
) -> std::io::Result<()> {
    let mut head = Vec::with_capacity(1024);
    let read = tokio::time::timeout(Duration::from_secs(10), async {
        let mut buf = [0u8; 1024];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 8192 {
            let n = sock.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            head.extend_from_slice(&buf[..n]);
        }
        Ok::<_, std::io::Error>(())
    })
    .await;
    if !matches!(read, Ok(Ok(()))) {
        return Ok(());
    }
    let line = String::from_utf8_lossy(head.split(|b| *b == b'\n').next().unwrap_or_default())
        .trim_end()
        .to_owned();
    let mut parts = line.split(' ');
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = path.split('?').next().unwrap_or("");
    let (status, ctype, body) = match (method, path) {
        ("GET", "/metrics") => {
            let _one = lock.lock().await;
            ("200 OK", metrics::CONTENT_TYPE, scrape(s).await)
        }
        ("GET", _) => (
            "404 Not Found",
            "text/plain; charset=utf-8",
            "pgkeep serves /metrics\n".to_owned(),
        ),
        _ => (
            "405 Method Not Allowed",
            "text/plain; charset=utf-8",
            "GET /metrics\n".to_owned(),
        ),
    };
    let resp = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    sock.write_all(resp.as_bytes()).await?;
    sock.shutdown().await
}
