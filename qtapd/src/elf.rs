//! Reading ELF files that a user may have made: the executables and
//! libraries of selected processes. A file is opened only when it is a
//! regular file of root or of the process's owner, at most [`MAX_BYTES`]
//! long ([`open_trusted`]), and read piecewise through
//! `object::ReadCache`: the headers, then whole sections, never the whole
//! file (and never mapped: a file truncated under a mapping faults).

use std::{
    fs,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

use object::{
    elf::{FileHeader64, SHT_DYNSYM, SHT_SYMTAB},
    read::elf::{FileHeader, SectionHeader, SectionTable, Sym},
    Endianness, ReadCache, SectionIndex, StringTable,
};
use tracing::debug;

use crate::ebpf::{TlsSymbols, TLS_LIBRARIES};

/// Files larger than this are not read.
pub const MAX_BYTES: u64 = 256 << 20;

/// An opened ELF file, read piecewise.
pub type File = ReadCache<fs::File>;

/// Opens `path` (its target, not a symlink to it: `libssl.so` → `.so.3`)
/// when it is a regular file that root or `owner` owns, at most
/// [`MAX_BYTES`] long: its real path, the file and its metadata. The
/// checks are made on the open file, so the checks and the reads are of
/// one and the same file.
pub fn open_trusted(path: &Path, owner: u32) -> Option<(PathBuf, File, fs::Metadata)> {
    let path = fs::canonicalize(path).ok()?;
    let file = fs::File::open(&path).ok()?;
    let meta = file.metadata().ok()?;
    if !meta.is_file() || (meta.uid() != 0 && meta.uid() != owner) {
        debug!(path = %path.display(), uid = meta.uid(), "not read: not a regular file of root or the process's owner");
        return None;
    }
    if meta.len() > MAX_BYTES {
        debug!(path = %path.display(), len = meta.len(), "not read: too large");
        return None;
    }
    Some((path, ReadCache::new(file), meta))
}

type Sections<'a> = SectionTable<'a, FileHeader64<Endianness>, &'a File>;

/// The section table of a 64-bit ELF file.
fn sections(file: &File) -> Option<(Endianness, Sections<'_>)> {
    let header = FileHeader64::<Endianness>::parse(file).ok()?;
    let endian = header.endian().ok()?;
    let sections = header.sections(endian, file).ok()?;
    Some((endian, sections))
}

/// The bytes of the section named `name` (one read).
pub fn section<'a>(file: &'a File, name: &str) -> Option<&'a [u8]> {
    let (endian, sections) = sections(file)?;
    let (_, header) = sections.section_by_name(endian, name.as_bytes())?;
    header.data(endian, file).ok()
}

/// Whether the file's code is x86-64's.
pub fn is_x86_64(file: &File) -> bool {
    FileHeader64::<Endianness>::parse(file)
        .ok()
        .and_then(|h| Some(h.e_machine(h.endian().ok()?)))
        == Some(object::elf::EM_X86_64)
}

/// Where in the file the byte at `address` (in memory) is, through the
/// section that holds it.
pub fn file_offset(file: &File, address: u64) -> Option<u64> {
    let (endian, sections) = sections(file)?;
    sections.iter().find_map(|s| {
        let start = s.sh_addr(endian);
        let inside = s.sh_type(endian) != object::elf::SHT_NOBITS
            && start != 0
            && (start..start.saturating_add(s.sh_size(endian))).contains(&address);
        inside.then(|| address - start + s.sh_offset(endian))
    })
}

/// The address of the section named `name`.
pub fn section_address(file: &File, name: &str) -> Option<u64> {
    let (endian, sections) = sections(file)?;
    let (_, header) = sections.section_by_name(endian, name.as_bytes())?;
    Some(header.sh_addr(endian))
}

/// `len` bytes of the file at `offset` (one read).
pub fn bytes_at(file: &File, offset: u64, len: u64) -> Option<&[u8]> {
    object::ReadRef::read_bytes_at(file, offset, len).ok()
}

/// Whether `needle` occurs in the section named `name`.
pub fn section_contains(file: &File, name: &str, needle: &[u8]) -> bool {
    section(file, name).is_some_and(|data| data.windows(needle.len()).any(|w| w == needle))
}

/// The Go toolchain that built the file (`go1.22.2`), from its
/// `.go.buildinfo` section; `None` when it is not a Go program.
pub fn go_version(file: &File) -> Option<String> {
    let info = section(file, ".go.buildinfo")?;
    let at = info.windows(4).position(|w| w == b"go1.")?;
    let version: Vec<u8> = info[at..]
        .iter()
        .copied()
        .take_while(|b| b.is_ascii_alphanumeric() || *b == b'.' || *b == b'-')
        .collect();
    Some(String::from_utf8_lossy(&version).into_owned())
}

/// The functions of the TLS libraries qtap probes (OpenSSL's `SSL_*`,
/// GnuTLS's `gnutls_*`) that a 64-bit ELF file defines (a static build,
/// or the library itself; a dynamically linked program only imports
/// them), by
/// file offset: from the dynamic symbol table, else from `.symtab`. Each
/// table and its strings are read whole, in one read each (names read
/// one by one through `ReadCache` cost two syscalls each).
pub fn tls_symbols(cache: &File) -> TlsSymbols {
    let mut found = TlsSymbols::new();
    let Some((endian, sections)) = sections(cache) else {
        return found;
    };
    for kind in [SHT_DYNSYM, SHT_SYMTAB] {
        let Some(table) = sections.iter().find(|s| s.sh_type(endian) == kind) else {
            continue;
        };
        let (Ok(symbols), Ok(strings)) = (
            table.data_as_array::<object::elf::Sym64<Endianness>, _>(endian, cache),
            sections
                .section(SectionIndex(table.sh_link(endian) as usize))
                .and_then(|s| s.data(endian, cache)),
        ) else {
            continue;
        };
        let strings = StringTable::new(strings, 0, strings.len() as u64);
        for symbol in symbols {
            if symbol.is_undefined(endian) || symbol.st_type() != object::elf::STT_FUNC {
                continue;
            }
            let Ok(name) = symbol.name(endian, strings) else {
                continue;
            };
            if !TLS_LIBRARIES
                .iter()
                .any(|(_, prefix, _)| name.starts_with(prefix.as_bytes()))
            {
                continue;
            }
            let Ok(section) = sections.section(SectionIndex(symbol.st_shndx(endian).into())) else {
                continue;
            };
            // From the address in memory to the offset in the file.
            let address = symbol.st_value(endian);
            let Some(offset) = address
                .checked_sub(section.sh_addr(endian))
                .and_then(|o| o.checked_add(section.sh_offset(endian)))
            else {
                continue;
            };
            found.insert(String::from_utf8_lossy(name).into_owned(), offset);
        }
        if !found.is_empty() {
            break;
        }
    }
    found
}
