//! Layer compression, detected from the first bytes rather than trusted media types.

use std::io::{self, BufRead, BufReader, Read};

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
        }
    }
}
