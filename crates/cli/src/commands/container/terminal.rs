//! The local terminal: raw mode and its window size.

use rustix::termios::{tcgetattr, tcgetwinsize, tcsetattr, OptionalActions, Termios};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;

/// Puts stdin's terminal in raw mode until dropped.
#[derive(Debug)]
pub struct RawMode {
    saved: Termios,
}

impl RawMode {
    pub fn enter() -> anyhow::Result<RawMode> {
        let stdin = std::io::stdin();
        let saved = tcgetattr(&stdin)?;
        let mut raw = saved.clone();
        raw.make_raw();
        tcsetattr(&stdin, OptionalActions::Now, &raw)?;
        Ok(RawMode { saved })
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        let _ = tcsetattr(std::io::stdin(), OptionalActions::Now, &self.saved);
    }
}

/// The window size of our terminal (24x80 without one), and each change (SIGWINCH).
pub fn watch_size() -> anyhow::Result<watch::Receiver<(u16, u16)>> {
    let (sender, receiver) = watch::channel(size());
    let mut winch = signal(SignalKind::window_change())?;
    tokio::spawn(async move {
        while winch.recv().await.is_some() {
            if sender.send(size()).is_err() {
                return;
            }
        }
    });
    Ok(receiver)
}

pub fn size() -> (u16, u16) {
    [tcgetwinsize(std::io::stdout()), tcgetwinsize(std::io::stdin())]
        .into_iter()
        .flatten()
        .find(|size| size.ws_row > 0 && size.ws_col > 0)
        .map_or((24, 80), |size| (size.ws_row, size.ws_col))
}
