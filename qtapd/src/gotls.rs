//! Where the gotls probes go in a Go executable: the entry and every `RET`
//! instruction of `crypto/tls.(*Conn).Write` and `(*Conn).Read`, as file
//! offsets.
//!
//! Functions are found in `.gopclntab`, Go's own function table, which
//! stripped binaries (`-ldflags=-s -w`) keep, in the layout of Go 1.18 and
//! later; the `RET`s by decoding each function's code (`iced-x86`). What
//! the kernel side then reads (registers of Go's ABI, the fd under a
//! `*tls.Conn`) is amd64's and holds from Go 1.17 (`qtap_common::go`), so
//! Go 1.18 and later on x86-64 are supported; anything else is refused
//! with the reason.

use iced_x86::{Decoder, DecoderOptions, Mnemonic};
use qtap_common::go;

use crate::elf;

/// The two methods, as `.gopclntab` names them.
pub const WRITE: &str = "crypto/tls.(*Conn).Write";
pub const READ: &str = "crypto/tls.(*Conn).Read";
/// The oldest Go whose function table this reads (its header changed in
/// 1.18); the register ABI the probes read is 1.17's.
const MIN_MINOR: u32 = 18;
const _: () = assert!(MIN_MINOR >= go::MIN_MINOR);

/// A function's probe sites, as offsets in the file.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Sites {
    pub entry: u64,
    pub rets: Vec<u64>,
}

/// The gotls probe sites of one executable.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GoTls {
    /// `go1.19.8`.
    pub version: String,
    pub write: Sites,
    pub read: Sites,
}

/// Why a file gets no gotls probes.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum NotProbed {
    #[error("not a Go program")]
    NotGo,
    #[error("built by {0}: gotls supports Go 1.{MIN_MINOR} and later")]
    TooOld(String),
    #[error("not an x86-64 program: gotls reads amd64's registers")]
    NotX86,
    #[error("its function table (.gopclntab) is missing or unreadable")]
    NoTable,
    #[error("it does not use crypto/tls (no {0})")]
    NoCryptoTls(&'static str),
    #[error("{0}'s code could not be decoded")]
    Undecodable(&'static str),
}

/// The gotls probe sites of `file`, or why it has none.
pub fn sites(file: &elf::File) -> Result<GoTls, NotProbed> {
    let version = elf::go_version(file).ok_or(NotProbed::NotGo)?;
    if minor(&version).is_none_or(|m| m < MIN_MINOR) {
        return Err(NotProbed::TooOld(version));
    }
    if !elf::is_x86_64(file) {
        return Err(NotProbed::NotX86);
    }
    let table = Table::parse(elf::section(file, ".gopclntab").ok_or(NotProbed::NoTable)?)
        .ok_or(NotProbed::NoTable)?;
    let text = match table.text_start {
        0 => elf::section_address(file, ".text").ok_or(NotProbed::NoTable)?,
        start => start,
    };
    let [write, read] = table.find([WRITE, READ]);
    let site = |name, found: Option<(u32, u32)>| {
        let (start, end) = found.ok_or(NotProbed::NoCryptoTls(name))?;
        probe_sites(file, text + u64::from(start), text + u64::from(end))
            .ok_or(NotProbed::Undecodable(name))
    };
    Ok(GoTls {
        write: site(WRITE, write)?,
        read: site(READ, read)?,
        version,
    })
}

/// `19` of `go1.19.8`.
fn minor(version: &str) -> Option<u32> {
    let rest = version.strip_prefix("go1.")?;
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

/// The entry and `RET` sites of the function at `[start, end)` (addresses).
fn probe_sites(file: &elf::File, start: u64, end: u64) -> Option<Sites> {
    let offset = elf::file_offset(file, start)?;
    let code = elf::bytes_at(file, offset, end.checked_sub(start)?)?;
    let mut decoder = Decoder::with_ip(64, code, start, DecoderOptions::NONE);
    let mut rets = Vec::new();
    for instruction in &mut decoder {
        if instruction.is_invalid() {
            // Padding after the last instruction decodes as anything; an
            // invalid byte inside the code means we misread it.
            break;
        }
        if instruction.mnemonic() == Mnemonic::Ret {
            rets.push(instruction.ip() - start + offset);
        }
    }
    (!rets.is_empty()).then_some(Sites {
        entry: offset,
        rets,
    })
}

/// Go's function table (`runtime.pcHeader` and what follows it), 1.18+.
struct Table<'a> {
    data: &'a [u8],
    nfunc: usize,
    text_start: u64,
    names: usize,
    functab: usize,
}

impl<'a> Table<'a> {
    /// Magic numbers of the 1.18–1.19 and 1.20+ layouts (the same fields).
    const MAGICS: [u32; 2] = [0xffff_fff0, 0xffff_fff1];

    fn parse(data: &'a [u8]) -> Option<Table<'a>> {
        let magic = u32::from_le_bytes(data.get(..4)?.try_into().ok()?);
        // Pointer size 8, as amd64's.
        if !Self::MAGICS.contains(&magic) || data.get(7) != Some(&8) {
            return None;
        }
        let word = |at: usize| -> Option<u64> {
            Some(u64::from_le_bytes(data.get(at..at + 8)?.try_into().ok()?))
        };
        Some(Table {
            data,
            nfunc: usize::try_from(word(8)?).ok()?,
            text_start: word(24)?,
            names: usize::try_from(word(32)?).ok()?,
            functab: usize::try_from(word(64)?).ok()?,
        })
    }

    fn u32_at(&self, at: usize) -> Option<u32> {
        Some(u32::from_le_bytes(
            self.data.get(at..at.checked_add(4)?)?.try_into().ok()?,
        ))
    }

    /// The NUL-terminated name at `offset` in the name table.
    fn name(&self, offset: u32) -> Option<&'a [u8]> {
        let from = self.names.checked_add(offset as usize)?;
        let rest = self.data.get(from..)?;
        Some(&rest[..rest.iter().position(|&b| b == 0)?])
    }

    /// Each named function's `[start, end)`, as offsets from the text's
    /// start. The table is sorted by address, and ends with the text's
    /// end: a function ends where the next begins.
    fn find<const N: usize>(&self, wanted: [&str; N]) -> [Option<(u32, u32)>; N] {
        let mut found = [None; N];
        for i in 0..self.nfunc {
            let entry = |i: usize| self.u32_at(self.functab + i * 8);
            let (Some(start), Some(end), Some(func)) = (
                entry(i),
                entry(i + 1),
                self.u32_at(self.functab + i * 8 + 4),
            ) else {
                break;
            };
            // `runtime._func`: entryOff, then nameOff.
            let Some(name) = self
                .u32_at(self.functab + func as usize + 4)
                .and_then(|n| self.name(n))
            else {
                continue;
            };
            if let Some(k) = wanted.iter().position(|w| w.as_bytes() == name) {
                found[k] = Some((start, end));
                if found.iter().all(Option::is_some) {
                    break;
                }
            }
        }
        found
    }
}

#[cfg(test)]
mod tests {
    use std::{fs, path::Path, process::Command};

    use super::*;

    /// A Go program using crypto/tls, built here: it prints where its fd lives under a
    /// `*tls.Conn`, as `reflect` sees the structs.
    const PROGRAM: &str = r#"package main

import (
	"crypto/tls"
	"fmt"
	"net"
	"os"
	"reflect"
)

func main() {
	c := reflect.TypeOf(tls.Conn{})
	tcp := reflect.TypeOf(net.TCPConn{}).Field(0).Type
	fd := tcp.Field(0)
	pfd := fd.Type.Elem().Field(0)
	sysfd, _ := pfd.Type.FieldByName("Sysfd")
	fmt.Println(c.Field(0).Name, c.Field(0).Offset, fd.Name, fd.Offset, pfd.Name, pfd.Offset+sysfd.Offset)
	if len(os.Args) > 1 {
		conn, _ := tls.Dial("tcp", os.Args[1], nil)
		conn.Write([]byte("x"))
		conn.Read(make([]byte, 1))
	}
}
"#;

    fn open(path: &Path) -> elf::File {
        object::ReadCache::new(fs::File::open(path).unwrap())
    }

    /// The offsets the kernel reads are those of the Go installed here;
    /// the sites found in `.gopclntab` are those of the symbol table, the
    /// same in a stripped build, and each is a `RET` (0xc3).
    #[test]
    fn a_go_program_built_here_has_the_sites_and_offsets_qtap_assumes() {
        use object::{Object, ObjectSection, ObjectSymbol};
        let dir = std::env::temp_dir().join(format!("qtap-gotls-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let plain = qtap_tests::go_build(&dir, PROGRAM, false);
        let stripped = qtap_tests::go_build(&dir, PROGRAM, true);

        let printed = Command::new(&plain).output().unwrap();
        let printed = String::from_utf8_lossy(&printed.stdout).trim().to_owned();
        // `conn` is first, and an interface's data word is its second.
        assert_eq!(
            printed,
            format!(
                "conn {} fd {} pfd {}",
                go::CONN_DATA - 8,
                go::NETFD,
                go::SYSFD
            ),
            "qtap_common::go's offsets"
        );

        let found = sites(&open(&plain)).unwrap();
        assert!(found.version.starts_with("go1."), "{found:?}");
        let bytes = fs::read(&plain).unwrap();
        let object = object::File::parse(&*bytes).unwrap();
        for (name, sites) in [(WRITE, &found.write), (READ, &found.read)] {
            let symbol = object.symbols().find(|s| s.name() == Ok(name)).unwrap();
            let section = object
                .section_by_index(symbol.section_index().unwrap())
                .unwrap();
            let (start, _) = section.file_range().unwrap();
            let entry = symbol.address() - section.address() + start;
            assert_eq!(sites.entry, entry, "{name}");
            assert!(!sites.rets.is_empty(), "{name}");
            for &ret in &sites.rets {
                assert!(
                    ret > entry && ret < entry + symbol.size(),
                    "{name}: {ret:#x}"
                );
                assert_eq!(bytes[ret as usize], 0xc3, "{name}: {ret:#x}");
            }
        }
        let bare = sites(&open(&stripped)).unwrap();
        assert_eq!(bare.version, found.version);
        assert!(object::File::parse(&*fs::read(&stripped).unwrap())
            .unwrap()
            .symbols()
            .next()
            .is_none());
        // Stripping keeps the code where it was.
        assert_eq!(
            (bare.write.rets.len(), bare.read.rets.len()),
            (found.write.rets.len(), found.read.rets.len())
        );
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn other_programs_are_refused_with_the_reason() {
        let me = std::env::current_exe().unwrap();
        assert_eq!(sites(&open(&me)), Err(NotProbed::NotGo));
        assert_eq!(minor("go1.19.8"), Some(19));
        assert_eq!(minor("go1.21rc2"), Some(21));
        assert_eq!(minor("devel"), None);
    }
}
