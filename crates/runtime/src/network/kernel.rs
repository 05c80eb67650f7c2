//! A network's kernel state: its bridge (netlink) and its nftables table. Netlink runs on
//! a short-lived thread of its own with its own runtime ([`with_netlink`]), so callers are
//! synchronous and work the same from the CLI and from inside the supervisor's runtime;
//! one call does all a caller's steps over one connection.

use super::{Network, NetworkError};
use vessel_net::link::Netlink;
use vessel_net::nft::{self, NetworkRules};
use vessel_net::subnet::Subnet;

/// Runs `work` against a netlink connection in the calling thread's network namespace.
pub(super) fn with_netlink<T, F, Fut>(work: F) -> Result<T, NetworkError>
where
    F: FnOnce(Netlink) -> Fut + Send,
    Fut: std::future::Future<Output = Result<T, NetworkError>>,
    T: Send,
{
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(|source| NetworkError::Io {
                        action: "start a runtime for",
                        path: "netlink".into(),
                        source,
                    })?;
                runtime.block_on(async { work(Netlink::connect().await?).await })
            })
            .join()
            .expect("the netlink thread panicked")
    })
}

/// Creates what is missing of the bridge, its address and the rules; idempotent.
/// `bridge_existed`: what the caller just learned of the bridge.
pub(super) async fn ensure_kernel_state(
    netlink: &Netlink,
    network: &Network,
    bridge_existed: bool,
) -> Result<(), NetworkError> {
    let (table, bridge) = (network.table(), network.bridge());
    netlink.ensure_bridge(&bridge, network.gateway, network.subnet.prefix_len()).await?;
    // A new bridge gets its rules; an old one only when they went missing (`nft flush
    // ruleset`). `nft` is a process start, on every container start.
    if !bridge_existed || !nft::table_exists(&table)? {
        if !network.internal {
            nft::enable_ip_forward()?;
        }
        nft::apply(&NetworkRules {
            table: &table,
            bridge: &bridge,
            subnet: network.subnet,
            internal: network.internal,
            dns_port: super::DNS_PORT,
        })?;
    }
    Ok(())
}

/// Deletes the bridge and the rules; what is already gone is fine.
pub(super) fn tear_down(network: &Network) -> Result<(), NetworkError> {
    let bridge = network.bridge();
    with_netlink(|netlink| async move {
        netlink.delete_link(&bridge).await?;
        Ok(())
    })?;
    nft::delete_table(&network.table())?;
    Ok(())
}

/// What the host's own addresses and routes cover.
pub(super) fn host_subnets() -> Result<Vec<Subnet>, NetworkError> {
    with_netlink(|netlink| async move { Ok(netlink.host_subnets().await?) })
}
