//! A sub-millisecond async sleep for the pacer.
//!
//! tokio's timer wheel rounds deadlines up to whole milliseconds, which would
//! add up to 1 ms of send lag to every request. On Linux the pacer instead
//! arms a `timerfd` (nanosecond resolution) registered with the runtime's
//! reactor: the worker thread wakes from `epoll_wait` right when the slot is
//! due, and the request task it then spawns runs on the same thread without
//! a cross-thread wake-up. Elsewhere it falls back to tokio's timer.

use std::io;
use std::time::Instant;

/// A reusable one-shot timer with sub-millisecond resolution (on Linux).
#[derive(Debug)]
pub struct PreciseTimer {
    #[cfg(target_os = "linux")]
    fd: Option<tokio::io::unix::AsyncFd<std::os::fd::OwnedFd>>,
}

impl PreciseTimer {
    /// Must be called inside a tokio runtime. Falls back to tokio's timer if
    /// the timerfd cannot be created.
    pub fn new() -> PreciseTimer {
        #[cfg(target_os = "linux")]
        {
            use rustix::time::{timerfd_create, TimerfdClockId, TimerfdFlags};
            // `AsyncFd::new` is deprecated in favour of the unsafe
            // `register`, whose condition (the descriptor stays valid and the
            // same while registered) an `OwnedFd` upholds by construction;
            // the crate forbids `unsafe`, so the safe constructor is kept.
            #[allow(deprecated)]
            let fd = timerfd_create(
                TimerfdClockId::Monotonic,
                TimerfdFlags::NONBLOCK | TimerfdFlags::CLOEXEC,
            )
            .ok()
            .and_then(|fd| tokio::io::unix::AsyncFd::new(fd).ok());
            PreciseTimer { fd }
        }
        #[cfg(not(target_os = "linux"))]
        {
            PreciseTimer {}
        }
    }

    /// Whether the sub-millisecond timer is in use.
    pub fn is_precise(&self) -> bool {
        #[cfg(target_os = "linux")]
        {
            self.fd.is_some()
        }
        #[cfg(not(target_os = "linux"))]
        {
            false
        }
    }

    /// Sleep until `due` (returns at once if it has passed).
    pub async fn sleep_until(&mut self, due: Instant) -> io::Result<()> {
        let now = Instant::now();
        if due <= now {
            return Ok(());
        }
        #[cfg(target_os = "linux")]
        if let Some(fd) = &self.fd {
            use rustix::time::{timerfd_settime, Itimerspec, TimerfdTimerFlags, Timespec};
            let d = due - now;
            let spec = Itimerspec {
                it_interval: Timespec {
                    tv_sec: 0,
                    tv_nsec: 0,
                },
                it_value: Timespec {
                    tv_sec: d.as_secs() as _,
                    tv_nsec: d.subsec_nanos().max(1) as _,
                },
            };
            timerfd_settime(fd.get_ref(), TimerfdTimerFlags::empty(), &spec)?;
            loop {
                let mut guard = fd.readable().await?;
                let mut buf = [0u8; 8];
                match guard.try_io(|inner| {
                    rustix::io::read(inner.get_ref(), &mut buf).map_err(io::Error::from)
                }) {
                    Ok(Ok(_)) => return Ok(()),
                    Ok(Err(e)) => return Err(e),
                    Err(_would_block) => {
                        if Instant::now() >= due {
                            return Ok(());
                        }
                    }
                }
            }
        }
        tokio::time::sleep_until(due.into()).await;
        Ok(())
    }
}

impl Default for PreciseTimer {
    fn default() -> Self {
        Self::new()
    }
}
