//! A container's log: one JSON object per line, as docker's json-file driver writes it:
//! `{"log":"hello\n","stream":"stdout","time":"2026-11-27T03:19:29.123456789Z"}`.

use serde::{Deserialize, Serialize};
use std::io::{BufRead, Write};
use std::path::Path;

/// Longest line kept whole; longer output is split into several entries (docker: 16 KiB).
const MAX_ENTRY: usize = 16 * 1024;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LogEntry {
    pub log: String,
    pub stream: String,
    pub time: String,
}

/// Appends output to a log file, one entry per line of output.
#[derive(Debug)]
pub struct LogWriter {
    file: std::fs::File,
    /// Output of each stream not yet ended by a newline: [stdout, stderr].
    pending: [Vec<u8>; 2],
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

impl Stream {
    fn name(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }
}

impl LogWriter {
    pub fn open(path: &Path) -> std::io::Result<LogWriter> {
        let file = std::fs::OpenOptions::new().create(true).append(true).open(path)?;
        Ok(LogWriter { file, pending: Default::default() })
    }

    /// Records output; whole lines are written now, a partial one when it ends or fills.
    pub fn write(&mut self, stream: Stream, mut data: &[u8]) -> std::io::Result<()> {
        let index = stream as usize;
        while !data.is_empty() {
            let room = MAX_ENTRY - self.pending[index].len();
            let take = match data.iter().position(|&b| b == b'\n') {
                Some(newline) if newline < room => newline + 1,
                _ => data.len().min(room),
            };
            self.pending[index].extend_from_slice(&data[..take]);
            data = &data[take..];
            let line = &self.pending[index];
            if line.ends_with(b"\n") || line.len() >= MAX_ENTRY {
                self.emit(stream)?;
            }
        }
        Ok(())
    }

    /// Writes out what is left of a stream's last line (at its end).
    pub fn flush_stream(&mut self, stream: Stream) -> std::io::Result<()> {
        if !self.pending[stream as usize].is_empty() {
            self.emit(stream)?;
        }
        Ok(())
    }

    fn emit(&mut self, stream: Stream) -> std::io::Result<()> {
        let bytes = std::mem::take(&mut self.pending[stream as usize]);
        let entry = LogEntry {
            log: String::from_utf8_lossy(&bytes).into_owned(),
            stream: stream.name().to_string(),
            time: crate::time::rfc3339(crate::time::now_nanos()),
        };
        let mut line = serde_json::to_vec(&entry)?;
        line.push(b'\n');
        // One write per entry: a reader following the file never sees half of one for long.
        self.file.write_all(&line)
    }
}

/// Reads the entries of a log from a byte offset, returning the offset after the last
/// whole line (a line still being written is left for the next read). Lines that are not
/// valid entries are skipped.
pub fn read_from(path: &Path, offset: u64) -> std::io::Result<(Vec<LogEntry>, u64)> {
    use std::io::Seek;
    let mut file = match std::fs::File::open(path) {
        Ok(file) => file,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok((Vec::new(), offset)),
        Err(err) => return Err(err),
    };
    file.seek(std::io::SeekFrom::Start(offset))?;
    let mut reader = std::io::BufReader::new(file);
    let mut entries = Vec::new();
    let mut position = offset;
    let mut line = Vec::new();
    loop {
        line.clear();
        let read = reader.read_until(b'\n', &mut line)?;
        if read == 0 || !line.ends_with(b"\n") {
            break;
        }
        position += read as u64;
        if let Ok(entry) = serde_json::from_slice(&line) {
            entries.push(entry);
        }
    }
    Ok((entries, position))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_become_entries_and_partial_lines_wait() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        let mut log = LogWriter::open(&path).unwrap();
        log.write(Stream::Stdout, b"one\ntw").unwrap();
        log.write(Stream::Stderr, b"err\n").unwrap();
        log.write(Stream::Stdout, b"o\nthree").unwrap();
        log.flush_stream(Stream::Stdout).unwrap();
        let (entries, end) = read_from(&path, 0).unwrap();
        let got: Vec<(&str, &str)> =
            entries.iter().map(|e| (e.stream.as_str(), e.log.as_str())).collect();
        assert_eq!(
            got,
            [("stdout", "one\n"), ("stderr", "err\n"), ("stdout", "two\n"), ("stdout", "three")]
        );
        assert!(entries[0].time.ends_with('Z'));
        assert_eq!(end, std::fs::metadata(&path).unwrap().len());
        assert!(read_from(&path, end).unwrap().0.is_empty());
    }

    #[test]
    fn long_lines_are_split() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        let mut log = LogWriter::open(&path).unwrap();
        log.write(Stream::Stdout, &vec![b'x'; MAX_ENTRY * 2 + 5]).unwrap();
        log.flush_stream(Stream::Stdout).unwrap();
        let (entries, _) = read_from(&path, 0).unwrap();
        assert_eq!(
            entries.iter().map(|e| e.log.len()).collect::<Vec<_>>(),
            [MAX_ENTRY, MAX_ENTRY, 5]
        );
    }
}
