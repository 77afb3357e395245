//! SIGINT and SIGTERM for the daemons: blocked in every thread (call [`watch`] before starting
//! any) and read from a signalfd by one thread, so a stop runs the daemon's own clean-up
//! (sockets removed, peers told) and the process exits 0. A second signal exits at once (130).

use std::io;

/// Blocks SIGINT and SIGTERM and calls `on_signal(name)` on the first one that arrives.
pub fn watch(on_signal: impl FnOnce(&'static str) + Send + 'static) -> io::Result<()> {
    use nix::sys::signal::{SigSet, Signal};
    use nix::sys::signalfd::SignalFd;
    let mut mask = SigSet::empty();
    mask.add(Signal::SIGINT);
    mask.add(Signal::SIGTERM);
    mask.thread_block().map_err(io::Error::from)?;
    let sfd = SignalFd::new(&mask).map_err(io::Error::from)?;
    std::thread::Builder::new()
        .name("spate-signals".into())
        .spawn(move || {
            let mut first = Some(on_signal);
            loop {
                match sfd.read_signal() {
                    Ok(Some(info)) => {
                        let name = if info.ssi_signo == Signal::SIGINT as u32 {
                            "SIGINT"
                        } else {
                            "SIGTERM"
                        };
                        match first.take() {
                            Some(f) => {
                                tracing::info!("{name} received: stopping");
                                f(name);
                            }
                            None => {
                                tracing::warn!("second signal ({name}): exiting now");
                                std::process::exit(130);
                            }
                        }
                    }
                    Ok(None) => {}
                    Err(e) => {
                        tracing::error!(error = %e, "reading signals failed");
                        return;
                    }
                }
            }
        })?;
    Ok(())
}
