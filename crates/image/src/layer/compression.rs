//! Layer compression, detected from the first bytes rather than trusted media types.

use std::io::{self, BufRead, BufReader, Read};
use std::sync::mpsc::{sync_channel, Receiver};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

impl Compression {
    pub fn name(self) -> &'static str {
        match self {
            Compression::None => "uncompressed",
            Compression::Gzip => "gzip",
            Compression::Zstd => "zstd",
        }
    }
}

/// What the magic bytes say. `Err` names a compression that is recognised but not
/// supported.
pub fn detect(head: &[u8]) -> Result<Compression, &'static str> {
    if head.starts_with(&[0x1F, 0x8B]) {
        Ok(Compression::Gzip)
    } else if head.starts_with(&[0x28, 0xB5, 0x2F, 0xFD]) {
        Ok(Compression::Zstd)
    } else if head.starts_with(&[0xFD, b'7', b'z', b'X', b'Z', 0]) {
        Err("xz")
    } else if head.starts_with(b"BZh") {
        Err("bzip2")
    } else {
        Ok(Compression::None)
    }
}

/// Wraps `r` in the decoder its content calls for.
pub fn decoder<'a, R: Read + 'a>(r: R) -> io::Result<(Compression, Box<dyn Read + 'a>)> {
    let mut br = BufReader::with_capacity(256 << 10, r);
    let head = br.fill_buf()?;
    let c = detect(head).map_err(|name| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{name}-compressed layers are not supported"),
        )
    })?;
    let d: Box<dyn Read + 'a> = match c {
        Compression::None => Box::new(br),
        Compression::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(br)),
        Compression::Zstd => Box::new(zstd::stream::read::Decoder::with_buffer(br)?),
    };
    Ok((c, d))
}

/// Decompresses on a helper thread, so that decompression overlaps parsing and writing
/// (the decoder is the slowest stage for gzip layers).
pub fn threaded_decoder<R: Read + Send + 'static>(r: R) -> io::Result<(Compression, Pipe)> {
    let mut br = BufReader::with_capacity(256 << 10, r);
    let c = detect(br.fill_buf()?).map_err(|name| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{name}-compressed layers are not supported"),
        )
    })?;
    let (tx, rx) = sync_channel::<io::Result<Vec<u8>>>(4);
    std::thread::Builder::new().name("layer-decoder".into()).spawn(move || {
        let mut d: Box<dyn Read> = match c {
            Compression::None => Box::new(br),
            Compression::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(br)),
            Compression::Zstd => match zstd::stream::read::Decoder::with_buffer(br) {
                Ok(d) => Box::new(d),
                Err(e) => {
                    let _ = tx.send(Err(e));
                    return;
                }
            },
        };
        loop {
            let mut buf = vec![0u8; 1 << 20];
            let mut n = 0;
            while n < buf.len() {
                match d.read(&mut buf[n..]) {
                    Ok(0) => break,
                    Ok(k) => n += k,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        let _ = tx.send(Err(e));
                        return;
                    }
                }
            }
            buf.truncate(n);
            let eof = n == 0;
            // An empty chunk marks the end; a send fails only when the reader is gone.
            if tx.send(Ok(buf)).is_err() || eof {
                return;
            }
        }
    })?;
    Ok((c, Pipe { rx, cur: Vec::new(), pos: 0, eof: false }))
}

/// The reading end of [`threaded_decoder`].
#[derive(Debug)]
pub struct Pipe {
    rx: Receiver<io::Result<Vec<u8>>>,
    cur: Vec<u8>,
    pos: usize,
    eof: bool,
}

impl Read for Pipe {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.pos == self.cur.len() {
            if self.eof {
                return Ok(0);
            }
            match self.rx.recv() {
                Ok(Ok(chunk)) => {
                    self.eof = chunk.is_empty();
                    self.cur = chunk;
                    self.pos = 0;
                }
                Ok(Err(e)) => return Err(e),
                Err(_) => return Err(io::Error::other("the layer decoder stopped unexpectedly")),
            }
        }
        let n = buf.len().min(self.cur.len() - self.pos);
        buf[..n].copy_from_slice(&self.cur[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn magic() {
        assert_eq!(detect(&[0x1F, 0x8B, 8]), Ok(Compression::Gzip));
        assert_eq!(detect(&[0x28, 0xB5, 0x2F, 0xFD]), Ok(Compression::Zstd));
        assert_eq!(detect(b"etc/passwd"), Ok(Compression::None));
        assert_eq!(detect(b""), Ok(Compression::None));
        assert!(detect(b"BZh9").is_err());
    }

    #[test]
    fn threaded_errors_surface() {
        let mut gz = {
            use std::io::Write;
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            e.write_all(&[5u8; 100_000]).unwrap();
            e.finish().unwrap()
        };
        gz.truncate(gz.len() / 2);
        let (_, mut r) = threaded_decoder(std::io::Cursor::new(gz)).unwrap();
        assert!(r.read_to_end(&mut Vec::new()).is_err());
    }

    #[test]
    fn round_trips() {
        use std::io::Write;
        let data = b"some tar bytes".repeat(100);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&data).unwrap();
        let gz = gz.finish().unwrap();
        let zs = zstd::encode_all(&data[..], 1).unwrap();
        for (bytes, want) in
            [(gz, Compression::Gzip), (zs, Compression::Zstd), (data.clone(), Compression::None)]
        {
            let (c, mut r) = decoder(&bytes[..]).unwrap();
            assert_eq!(c, want);
            let mut out = Vec::new();
            r.read_to_end(&mut out).unwrap();
            assert_eq!(out, data);
            let (c, mut r) = threaded_decoder(std::io::Cursor::new(bytes.clone())).unwrap();
            assert_eq!(c, want);
            let mut out = Vec::new();
            r.read_to_end(&mut out).unwrap();
            assert_eq!(out, data);
        }
    }
}
