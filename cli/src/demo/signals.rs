//! SIGINT and SIGTERM for the demo: once [`Signals::install`]ed, they no longer end the
//! process; the demo polls [`Signals::received`] and shuts its children down itself.
//!
//! A Ctrl-C in the terminal reaches the whole foreground process group: the demo and every
//! child (they inherit it), and each child shuts down on it by itself. A SIGTERM sent to the
//! demo alone (`kill`, a test) reaches only the demo, which then stops its children.

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};

use anyhow::{Context as _, Result};

/// Which signal arrived first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Signal {
    /// SIGINT (Ctrl-C).
    Interrupt,
    /// SIGTERM.
    Terminate,
}

/// The signals received so far.
#[derive(Debug, Clone)]
pub(super) struct Signals {
    /// 0: none; 1: SIGINT; 2: SIGTERM (the first one wins).
    first: Arc<AtomicU8>,
}

impl Signals {
    /// Catches SIGINT and SIGTERM from now on, on a thread of its own.
    pub(super) fn install() -> Result<Self> {
        let first = Arc::new(AtomicU8::new(0));
        let record = first.clone();
        let (ready, installed) = std::sync::mpsc::channel::<std::io::Result<()>>();
        std::thread::Builder::new()
            .name("signals".to_owned())
            .spawn(move || {
                use tokio::signal::unix::{SignalKind, signal};
                let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                    Ok(runtime) => runtime,
                    Err(error) => {
                        let _ = ready.send(Err(error));
                        return;
                    }
                };
                runtime.block_on(async move {
                    let handlers =
                        signal(SignalKind::interrupt()).and_then(|i| Ok((i, signal(SignalKind::terminate())?)));
                    let (mut interrupt, mut terminate) = match handlers {
                        Ok(handlers) => handlers,
                        Err(error) => {
                            let _ = ready.send(Err(error));
                            return;
                        }
                    };
                    let _ = ready.send(Ok(()));
                    loop {
                        let code = tokio::select! {
                            _ = interrupt.recv() => 1,
                            _ = terminate.recv() => 2,
                        };
                        let _ = record.compare_exchange(0, code, Ordering::SeqCst, Ordering::SeqCst);
                    }
                });
            })
            .context("starting the signal thread")?;
        installed
            .recv()
            .context("the signal thread ended")?
            .context("installing the SIGINT and SIGTERM handlers")?;
        Ok(Self { first })
    }

    /// The first signal received, if any.
    pub(super) fn received(&self) -> Option<Signal> {
        match self.first.load(Ordering::SeqCst) {
            1 => Some(Signal::Interrupt),
            2 => Some(Signal::Terminate),
            _ => None,
        }
    }
}
