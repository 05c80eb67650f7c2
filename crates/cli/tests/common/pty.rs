//! Driving vessel through a real pseudo-terminal, as a user at a terminal would.

use std::io::Write;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub struct PtySession {
    child: Child,
    master: std::fs::File,
    output: Arc<Mutex<String>>,
}

impl PtySession {
    /// Starts `command` with a terminal of `rows` x `columns` as its stdio and controlling
    /// terminal (so window changes send it SIGWINCH, as a shell's would).
    pub fn spawn(mut command: Command, rows: u16, columns: u16) -> PtySession {
        let size = nix::pty::Winsize { ws_row: rows, ws_col: columns, ws_xpixel: 0, ws_ypixel: 0 };
        let pty = nix::pty::openpty(Some(&size), None).unwrap();
        command
            .stdin(Stdio::from(pty.slave.try_clone().unwrap()))
            .stdout(Stdio::from(pty.slave.try_clone().unwrap()))
            .stderr(Stdio::from(pty.slave.try_clone().unwrap()));
        // SAFETY: setsid and TIOCSCTTY are async-signal-safe; the terminal becomes the
        // child's controlling terminal.
        unsafe {
            command.pre_exec(|| {
                nix::unistd::setsid()?;
                if libc::ioctl(0, libc::TIOCSCTTY, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = command.spawn().unwrap();
        drop(pty.slave);
        let output = Arc::new(Mutex::new(String::new()));
        let master = std::fs::File::from(pty.master);
        let mut reader = master.try_clone().unwrap();
        let collected = output.clone();
        std::thread::spawn(move || {
            let mut buffer = [0u8; 4096];
            while let Ok(n @ 1..) = std::io::Read::read(&mut reader, &mut buffer) {
                collected.lock().unwrap().push_str(&String::from_utf8_lossy(&buffer[..n]));
            }
        });
        PtySession { child, master, output }
    }

    /// Everything the terminal showed so far.
    pub fn output(&self) -> String {
        self.output.lock().unwrap().clone()
    }

    /// Waits (up to a minute) until the terminal has shown `text`.
    pub fn wait_for(&self, text: &str) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !self.output.lock().unwrap().contains(text) {
            assert!(Instant::now() < deadline, "no {text:?} in {:?}", self.output());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Types `text`.
    pub fn type_text(&mut self, text: &str) {
        self.master.write_all(text.as_bytes()).unwrap();
    }

    pub fn resize(&self, rows: u16, columns: u16) {
        let size =
            rustix::termios::Winsize { ws_row: rows, ws_col: columns, ws_xpixel: 0, ws_ypixel: 0 };
        rustix::termios::tcsetwinsize(&self.master, size).unwrap();
    }

    pub fn wait(mut self) -> ExitStatus {
        self.child.wait().unwrap()
    }
}
