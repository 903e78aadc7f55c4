//! `stackd semaphore …`: acquire N of M permits, renew, release and inspect semaphores.

use clap::Subcommand;

use super::{AcquireArgs, LeaseArgs, RenewArgs, Target};
use crate::api::semaphores::AcquireBody;

#[derive(Subcommand, Debug)]
pub enum SemaphoreCmd {
    /// Take PERMITS of a semaphore of CAPACITY permits; prints the lease's fence (use it to
    /// renew and release, or in a transaction's compare).
    Acquire {
        name: String,
        /// Who holds the permits (shown to others while held).
        #[arg(long)]
        holder: String,
        /// Permits to take, 1..=capacity.
        #[arg(long, default_value_t = 1)]
        permits: u32,
        /// The semaphore's permits; must match while any are held or waited for.
        #[arg(long)]
        capacity: u32,
        #[command(flatten)]
        lease: AcquireArgs,
    },
    /// Extend the lease with FENCE.
    Renew(RenewArgs),
    /// Release the permits of the lease with FENCE.
    Release(LeaseArgs),
    /// Show a semaphore's capacity, its leases and how many wait.
    Get {
        name: String,
        #[command(flatten)]
        target: Target,
    },
}

pub async fn run(cmd: SemaphoreCmd) -> anyhow::Result<()> {
    match cmd {
        SemaphoreCmd::Acquire {
            name,
            holder,
            permits,
            capacity,
            lease:
                AcquireArgs {
                    ttl_ms,
                    wait_ms,
                    target,
                },
        } => {
            let req = AcquireBody {
                holder,
                permits,
                capacity,
                ttl_ms,
                wait_ms,
            };
            let g = target.client()?.semaphore_acquire(&name, &req).await?;
            outln!("{}", g.fence);
        }
        SemaphoreCmd::Renew(RenewArgs {
            lease:
                LeaseArgs {
                    name,
                    fence,
                    target,
                },
            ttl_ms,
        }) => {
            target
                .client()?
                .semaphore_renew(&name, fence, ttl_ms)
                .await?;
            outln!("renewed {name}:{fence} for {ttl_ms} ms");
        }
        SemaphoreCmd::Release(LeaseArgs {
            name,
            fence,
            target,
        }) => {
            let r = target.client()?.semaphore_release(&name, fence).await?;
            outln!("released {name}:{fence} ({} permits)", r.permits);
        }
        SemaphoreCmd::Get { name, target } => {
            let s = target.client()?.semaphore_get(&name).await?;
            outln!(
                "capacity {}  held {}  free {}  waiting {}",
                s.capacity,
                s.held,
                s.free,
                s.waiting
            );
            for l in s.holders {
                outln!(
                    "  fence {}  {}  {} permits  expires in {} ms",
                    l.fence,
                    l.holder,
                    l.permits,
                    l.expires_in_ms
                );
            }
        }
    }
    Ok(())
}
