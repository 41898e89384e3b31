//! The admin listener: `/metrics` (Prometheus), `/healthz` (process alive),
//! `/readyz` (serving a config and not shutting down), `/admin/health` (live
//! health and ejection state of every target), `/admin/config` (version
//! served, where it came from, when it was committed and applied, versions
//! applied and rejected, control-plane connection).

use crate::control::ConfigState;
use crate::gateway::Gateway;
use async_trait::async_trait;
use http::Response;
use metrics_exporter_prometheus::PrometheusHandle;
use pingora_core::apps::http_app::ServeHttp;
use pingora_core::protocols::http::ServerSession;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

pub struct AdminApp {
    pub gateway: Arc<Gateway>,
    pub metrics: PrometheusHandle,
    /// Cleared when shutdown starts so load balancers drain this edge.
    pub ready: Arc<AtomicBool>,
    /// The served config's metadata (readiness, `/admin/config`).
    pub config_state: Arc<ConfigState>,
    /// The client-facing listener; ready only once it accepts connections.
    pub listen: std::net::SocketAddr,
    /// Set once the client listener accepted a probe connection.
    pub listening: AtomicBool,
}

impl AdminApp {
    /// Whether the client-facing listener accepts connections (Pingora
    /// starts the admin and client services independently). Probed with a
    /// loopback connect until it succeeds once.
    fn client_listener_up(&self) -> bool {
        if self.listening.load(Ordering::Relaxed) {
            return true;
        }
        let mut addr = self.listen;
        if addr.ip().is_unspecified() {
            addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
        }
        let up = std::net::TcpStream::connect_timeout(&addr, std::time::Duration::from_millis(100))
            .is_ok();
        if up {
            self.listening.store(true, Ordering::Relaxed);
        }
        up
    }
}

fn reply(status: u16, content_type: &str, body: Vec<u8>) -> Response<Vec<u8>> {
    let mut r = Response::new(body);
    *r.status_mut() =
        http::StatusCode::from_u16(status).unwrap_or(http::StatusCode::INTERNAL_SERVER_ERROR);
    if let Ok(v) = http::HeaderValue::from_str(content_type) {
        r.headers_mut().insert(http::header::CONTENT_TYPE, v);
    }
    let len = r.body().len();
    r.headers_mut()
        .insert(http::header::CONTENT_LENGTH, http::HeaderValue::from(len));
    r
}

impl AdminApp {
    /// Live health of every target of the served config.
    fn target_views(&self) -> Vec<crate::routing::health::TargetView> {
        let cfg = self.gateway.config.load();
        let mut ids: Vec<(String, String)> = cfg
            .routes
            .values()
            .flat_map(|r| r.targets().map(|t| (t.provider.name.clone(), t.id.clone())))
            .collect();
        ids.sort();
        ids.dedup();
        self.gateway
            .router
            .health
            .view(&ids, tokio::time::Instant::now())
    }
}

#[async_trait]
impl ServeHttp for AdminApp {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let _ = session.drain_request_body().await;
        let path = session.req_header().uri.path().to_string();
        match path.as_str() {
            "/metrics" => {
                self.config_state.refresh_metrics();
                for t in self.target_views() {
                    crate::telemetry::metrics::target_state(&t.target, t.state);
                }
                reply(
                    200,
                    "text/plain; version=0.0.4",
                    self.metrics.render().into_bytes(),
                )
            }
            "/healthz" => reply(200, "text/plain", b"ok\n".to_vec()),
            "/readyz" => {
                if self.ready.load(Ordering::Relaxed)
                    && self.config_state.is_ready()
                    && self.client_listener_up()
                {
                    reply(200, "text/plain", b"ready\n".to_vec())
                } else if !self.config_state.is_serving() {
                    reply(503, "text/plain", b"not ready: no config yet\n".to_vec())
                } else {
                    reply(503, "text/plain", b"not ready\n".to_vec())
                }
            }
            "/admin/health" => {
                let view = self.target_views();
                let body = serde_json::json!({
                    "region": self.gateway.router.home_region,
                    "targets": view,
                });
                reply(
                    200,
                    "application/json",
                    serde_json::to_vec_pretty(&body).unwrap_or_default(),
                )
            }
            "/admin/config" => reply(
                200,
                "application/json",
                serde_json::to_vec_pretty(&self.config_state.view()).unwrap_or_default(),
            ),
            _ => reply(404, "text/plain", b"not found\n".to_vec()),
        }
    }
}
