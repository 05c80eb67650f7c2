//! A QMP client, just enough to save and restore VMs: the greeting, commands and their
//! answers, and events. QEMU talks it on one end of a socket pair it inherits
//! (`-chardev socket,fd=N`), so nothing waits for a socket file to appear.

use serde_json::{json, Value};
use std::io;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::UnixStream;

/// How long QEMU may take to answer one command.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug)]
pub struct Qmp {
    reader: BufReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
    /// Events that arrived while a command waited for its answer.
    events: Vec<Value>,
}

impl Qmp {
    /// Reads QEMU's greeting and leaves capabilities negotiation.
    pub async fn handshake(stream: UnixStream) -> io::Result<Qmp> {
        let (reader, writer) = stream.into_split();
        let mut qmp = Qmp { reader: BufReader::new(reader), writer, events: Vec::new() };
        let greeting = qmp.read_message().await?;
        if greeting.get("QMP").is_none() {
            return Err(invalid(format!("QEMU's monitor greeted with {greeting}")));
        }
        qmp.execute("qmp_capabilities", json!({})).await?;
        Ok(qmp)
    }

    /// Runs `command` and returns its answer; QEMU's error becomes an `io::Error`.
    pub async fn execute(&mut self, command: &str, arguments: Value) -> io::Result<Value> {
        let mut line = json!({ "execute": command, "arguments": arguments }).to_string();
        line.push('\n');
        self.writer.write_all(line.as_bytes()).await?;
        let answer = async {
            loop {
                let message = self.read_message().await?;
                if let Some(answer) = message.get("return") {
                    return Ok(answer.clone());
                }
                if let Some(error) = message.get("error") {
                    let text = error.get("desc").and_then(Value::as_str).unwrap_or("?");
                    return Err(io::Error::other(format!("QEMU refused {command}: {text}")));
                }
                self.events.push(message);
            }
        };
        tokio::time::timeout(ANSWER_TIMEOUT, answer)
            .await
            .map_err(|_| timed_out(format!("no answer to {command} within {ANSWER_TIMEOUT:?}")))?
    }

    /// Waits up to `timeout` for an event named `name` whose data `matches`.
    pub async fn wait_event(
        &mut self,
        name: &str,
        matches: impl Fn(&Value) -> bool,
        timeout: Duration,
    ) -> io::Result<Value> {
        let is_it = |message: &Value| {
            message.get("event").and_then(Value::as_str) == Some(name)
                && matches(message.get("data").unwrap_or(&Value::Null))
        };
        if let Some(at) = self.events.iter().position(is_it) {
            return Ok(self.events.remove(at));
        }
        let wait = async {
            loop {
                let message = self.read_message().await?;
                if is_it(&message) {
                    return Ok(message);
                }
            }
        };
        tokio::time::timeout(timeout, wait)
            .await
            .map_err(|_| timed_out(format!("no {name} event within {timeout:?}")))?
    }

    async fn read_message(&mut self) -> io::Result<Value> {
        let mut line = String::new();
        if self.reader.read_line(&mut line).await? == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "QEMU closed its monitor"));
        }
        serde_json::from_str(&line).map_err(|err| invalid(format!("QMP said {line:?}: {err}")))
    }
}

fn invalid(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message)
}

fn timed_out(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, message)
}
