//! Kernel records to typed values, defensively: the length is checked
//! against the kind's layout, bytes are copied with `read_unaligned`, and
//! anything malformed is an error the caller counts, never a panic.

use std::mem::size_of;

use qtap_common::{kind, ExecRecord, ForkRecord, Header, SyscallRecord, TlsRecord, ABI_VERSION};

/// One decoded kernel record; data records carry the payload bytes the
/// kernel captured after them (empty unless a session asked).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Record<'a> {
    Syscall(SyscallRecord, &'a [u8]),
    Exec(ExecRecord),
    Fork(ForkRecord),
    Exit(Header),
    /// The process left the restricted sessions in `sessions`.
    Creds(Header),
    Tls(TlsRecord, &'a [u8]),
}

impl Record<'_> {
    /// The header every record starts with.
    #[must_use]
    pub fn header(&self) -> &Header {
        match self {
            Record::Syscall(r, _) => &r.hdr,
            Record::Exec(r) => &r.hdr,
            Record::Fork(r) => &r.hdr,
            Record::Exit(h) | Record::Creds(h) => h,
            Record::Tls(r, _) => &r.hdr,
        }
    }
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("record of {len} bytes is shorter than its {what} ({need} bytes)")]
    Short {
        what: &'static str,
        len: usize,
        need: usize,
    },
    #[error("record ABI version {0}, expected {ABI_VERSION}")]
    Abi(u16),
    #[error("unknown record kind {0}")]
    Kind(u16),
}

/// Copies a `T` from the start of `bytes`.
fn read<T: Copy>(bytes: &[u8], what: &'static str) -> Result<T, DecodeError> {
    let need = size_of::<T>();
    if bytes.len() < need {
        return Err(DecodeError::Short {
            what,
            len: bytes.len(),
            need,
        });
    }
    // SAFETY: `bytes` holds at least `size_of::<T>()` bytes, and every `T`
    // used here is a `#[repr(C)]` plain-old-data record from
    // `qtap_common`, valid for any bit pattern.
    Ok(unsafe { bytes.as_ptr().cast::<T>().read_unaligned() })
}

/// The bytes after a `T` at the start of `bytes` (checked by `read`).
fn after<T>(bytes: &[u8]) -> &[u8] {
    bytes.get(size_of::<T>()..).unwrap_or_default()
}

/// Decodes one ring buffer item.
pub fn decode(bytes: &[u8]) -> Result<Record<'_>, DecodeError> {
    let header: Header = read(bytes, "header")?;
    if header.abi != ABI_VERSION {
        return Err(DecodeError::Abi(header.abi));
    }
    match header.kind {
        kind::SYSCALL => {
            read(bytes, "syscall record").map(|r| Record::Syscall(r, after::<SyscallRecord>(bytes)))
        }
        kind::EXEC => read(bytes, "exec record").map(Record::Exec),
        kind::FORK => read(bytes, "fork record").map(Record::Fork),
        kind::EXIT => Ok(Record::Exit(header)),
        kind::CREDS => Ok(Record::Creds(header)),
        kind::TLS => read(bytes, "tls record").map(|r| Record::Tls(r, after::<TlsRecord>(bytes))),
        other => Err(DecodeError::Kind(other)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes_of<T: Copy>(value: &T) -> Vec<u8> {
        // SAFETY: reading the bytes of a plain-old-data record.
        unsafe {
            std::slice::from_raw_parts(std::ptr::from_ref(value).cast::<u8>(), size_of::<T>())
        }
        .to_vec()
    }

    fn syscall() -> SyscallRecord {
        SyscallRecord {
            hdr: Header {
                kind: kind::SYSCALL,
                abi: ABI_VERSION,
                pid: 7,
                tid: 8,
                ..Header::default()
            },
            ret: 42,
            bytes: 42,
            fd: 3,
            ..SyscallRecord::default()
        }
    }

    #[test]
    fn decodes_each_kind() {
        let rec = syscall();
        assert_eq!(decode(&bytes_of(&rec)), Ok(Record::Syscall(rec, &[])));
        let mut with_payload = bytes_of(&rec);
        with_payload.extend_from_slice(b"GET /");
        assert_eq!(decode(&with_payload), Ok(Record::Syscall(rec, b"GET /")));
        let exit = Header {
            kind: kind::EXIT,
            abi: ABI_VERSION,
            pid: 9,
            ..Header::default()
        };
        assert_eq!(decode(&bytes_of(&exit)), Ok(Record::Exit(exit)));
    }

    #[test]
    fn truncated_records_are_errors() {
        let bytes = bytes_of(&syscall());
        for len in [0, 1, 47, 48, 127, 167] {
            assert!(
                matches!(decode(&bytes[..len]), Err(DecodeError::Short { .. })),
                "len {len}"
            );
        }
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        let mut rec = syscall();
        rec.hdr.kind = 999;
        assert_eq!(decode(&bytes_of(&rec)), Err(DecodeError::Kind(999)));
        rec.hdr.abi = 77;
        assert_eq!(decode(&bytes_of(&rec)), Err(DecodeError::Abi(77)));
        // Deterministic pseudo-random bytes of every length.
        let mut x: u32 = 1;
        for len in 0..400 {
            let junk: Vec<u8> = (0..len)
                .map(|_| {
                    x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
                    (x >> 16) as u8
                })
                .collect();
            let _ = decode(&junk);
        }
    }

    #[test]
    fn unaligned_input_is_fine() {
        let mut bytes = vec![0u8];
        bytes.extend(bytes_of(&syscall()));
        assert_eq!(decode(&bytes[1..]), Ok(Record::Syscall(syscall(), &[])));
    }

    proptest::proptest! {
        /// Any bytes decode to a record or an error, never a panic; a
        /// valid header with any tail decodes as long as the kind's layout
        /// fits.
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..400)) {
            let _ = decode(&bytes);
            let mut framed = bytes_of(&syscall());
            framed.truncate(bytes.len().min(framed.len()));
            let _ = decode(&framed);
        }
    }
}
