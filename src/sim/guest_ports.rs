//! The guest's own services (SSH, WinRM) as a client outside PVE sees them:
//! a VM whose agent spec names a `service_port` accepts TCP connections on
//! its static `ipconfig0` address once it has booted (`start + boot`), and
//! stops when the VM stops or is gone.
//!
//! Listeners are only ever opened on loopback (127.0.0.0/8 or `::1`): an
//! address elsewhere is skipped with a warning, so a test never listens on a
//! real network. Two VMs with one address cannot both listen: the second
//! one's bind fails and is logged (a collision the tests must never cause).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use super::simulator::Shared;
use super::vm::{self, Power};

/// How often (real time) the listeners follow the inventory.
const SYNC_EVERY: Duration = Duration::from_millis(100);

/// Keeps the listeners in step with the inventory until dropped.
pub(crate) async fn run(shared: Arc<Shared>) {
    let mut open: HashMap<(u32, SocketAddr), tokio::task::JoinHandle<()>> = HashMap::new();
    loop {
        let wanted = wanted(&shared);
        open.retain(|key, task| {
            let keep = wanted.contains(key) && !task.is_finished();
            if !keep {
                task.abort();
            }
            keep
        });
        for key in wanted {
            if open.contains_key(&key) {
                continue;
            }
            match std::net::TcpListener::bind(key.1).and_then(|listener| {
                listener.set_nonblocking(true)?;
                tokio::net::TcpListener::from_std(listener)
            }) {
                Ok(listener) => {
                    open.insert(key, tokio::spawn(accept(listener)));
                }
                Err(err) => {
                    tracing::warn!(vmid = key.0, address = %key.1, error = %err, "simulated guest could not open its service port");
                }
            }
        }
        tokio::time::sleep(SYNC_EVERY).await;
    }
}

/// Accepts and closes connections, as a service that is up.
async fn accept(listener: tokio::net::TcpListener) {
    while let Ok((stream, _)) = listener.accept().await {
        drop(stream);
    }
}

/// The (VMID, address) of every booted guest with a service port on a
/// loopback static address.
fn wanted(shared: &Shared) -> Vec<(u32, SocketAddr)> {
    let now = shared.clock.now();
    let boot = shared.timings.boot;
    let cluster = shared.cluster();
    let mut wanted = Vec::new();
    for guest in cluster.vms.values() {
        let (Some(port), Power::Running { since, paused: false }) = (guest.agent.service_port, guest.power) else {
            continue;
        };
        if now < since + boot {
            continue;
        }
        let ipconfig = guest.config.get("ipconfig0").cloned().unwrap_or_default();
        for key in ["ip", "ip6"] {
            let Some(ip) = vm::property(&ipconfig, key)
                .and_then(|value| value.split('/').next().and_then(|ip| ip.parse::<IpAddr>().ok()))
            else {
                continue;
            };
            if ip.is_loopback() {
                wanted.push((guest.vmid, SocketAddr::new(ip, port)));
            } else {
                tracing::debug!(vmid = guest.vmid, address = %ip, "simulated guest service stays closed: not a loopback address");
            }
        }
    }
    wanted
}
