//! Finding OpenSSL 3's functions in an x86-64 executable that links it
//! statically and has no symbols for them (a stripped build).
//!
//! The signature: OpenSSL 3 reports an error with its function's own name
//! (`ERR_raise` passes `__func__` to `ERR_set_debug`), so the string
//! `"SSL_write"` sits in `.rodata` and one function's code loads its
//! address: `SSL_write` itself. The search
//! 1. checks that the file is OpenSSL's: `.rodata` holds the name of
//!    OpenSSL's `ssl/ssl_lib.c` (BoringSSL names `ssl_lib.cc`, and it
//!    reports errors without function names: it is named, not probed);
//! 2. finds each function name as a whole NUL-terminated string;
//! 3. finds the instructions in `.text` that load that string's address
//!    (`lea reg, [rip+disp32]`, or `mov reg32, imm32` in code that is not
//!    position-independent);
//! 4. takes the function holding each such instruction from the unwind
//!    table (`.eh_frame_hdr`, which stripping keeps: unwinding needs it);
//!    a name loaded from two functions is ambiguous, and not used;
//! 5. finds `SSL_read_ex`/`SSL_write_ex`, which report no error of their
//!    own, as the function right after `SSL_read`/`SSL_write` (their
//!    order in `ssl_lib.c`) when it calls `ssl_read_internal`/
//!    `ssl_write_internal` (found by name) or has it inlined (loads its
//!    name).
//!
//! `SSL_read` and `SSL_write` must be found; the others are probed when
//! found. OpenSSL 1.1 reports errors by number, not name: it is not found.
//! The unit tests check the search against the symbol tables of this
//! machine's `libssl.so.3` and of Node.js.

use std::collections::HashMap;

use crate::{
    ebpf::TlsSymbols,
    elf::{self, File},
};

/// Why a file got no OpenSSL probes from the search.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotFound {
    #[error("no OpenSSL in it")]
    NotOpenssl,
    #[error(
        "BoringSSL without symbols: it reports errors without function names, \
         so its functions cannot be found"
    )]
    Boringssl,
    #[error("OpenSSL without symbols in a file that is not x86-64: only x86-64 code is searched")]
    Architecture,
    #[error("OpenSSL without an unwind table (.eh_frame_hdr) to bound its functions")]
    NoFunctionTable,
    #[error(
        "OpenSSL without symbols, and no single function names {0} in its errors \
         (OpenSSL 1.1 and older report errors by number)"
    )]
    Unlocated(&'static str),
}

/// The source file OpenSSL names in its errors (`../ssl/ssl_lib.c`),
/// matched with the NUL that ends it, which this file's own string lacks
/// (qtapd is not OpenSSL); BoringSSL names `ssl_lib.cc`.
const SSL_LIB: &[u8] = b"ssl/ssl_lib.c";

enum Library {
    Openssl,
    Boringssl,
}

/// Whose `ssl_lib.c` a file's strings name.
fn library_of(rodata: &[u8]) -> Option<Library> {
    memchr::memmem::find_iter(rodata, SSL_LIB).find_map(|at| {
        match rodata.get(at + SSL_LIB.len()..at + SSL_LIB.len() + 2)? {
            [0, _] => Some(Library::Openssl),
            [b'c', 0] => Some(Library::Boringssl),
            _ => None,
        }
    })
}

/// Functions found by the name in their errors; the first two must be.
const NAMED: [&str; 5] = [
    "SSL_read",
    "SSL_write",
    "SSL_set_fd",
    "SSL_set_rfd",
    "SSL_set_wfd",
];
/// `SSL_*_ex`, the internal function it calls, and the plain call it
/// follows.
const BY_CALLEE: [(&str, &str, &str); 2] = [
    ("SSL_read_ex", "ssl_read_internal", "SSL_read"),
    ("SSL_write_ex", "ssl_write_internal", "SSL_write"),
];

/// A section's bytes and the address they are loaded at.
struct Loaded<'a> {
    data: &'a [u8],
    address: u64,
}

impl<'a> Loaded<'a> {
    fn of(file: &'a File, name: &str) -> Option<Loaded<'a>> {
        Some(Loaded {
            data: elf::section(file, name)?,
            address: elf::section_address(file, name)?,
        })
    }
}

/// OpenSSL's functions in `file`, by file offset, as
/// [`elf::tls_symbols`] gives them for a file with symbols.
///
/// # Errors
/// What kept the search from finding `SSL_read` and `SSL_write`.
pub fn search(file: &File) -> Result<TlsSymbols, NotFound> {
    let rodata = Loaded::of(file, ".rodata").ok_or(NotFound::NotOpenssl)?;
    match library_of(rodata.data) {
        Some(Library::Openssl) => {}
        Some(Library::Boringssl) => return Err(NotFound::Boringssl),
        None => return Err(NotFound::NotOpenssl),
    }
    if !elf::is_x86_64(file) {
        return Err(NotFound::Architecture);
    }
    let text = Loaded::of(file, ".text").ok_or(NotFound::Unlocated("SSL_read"))?;
    let starts = Loaded::of(file, ".eh_frame_hdr")
        .and_then(|hdr| function_starts(&hdr))
        .ok_or(NotFound::NoFunctionTable)?;
    let internal = BY_CALLEE.map(|(_, callee, _)| callee);
    let names: Vec<&str> = NAMED.iter().chain(&internal).copied().collect();
    let strings: HashMap<u64, &str> = names
        .iter()
        .filter_map(|&name| Some((string_address(&rodata, name)?, name)))
        .collect();
    let loaders = loads_of(&text, &strings);
    let mut found: HashMap<&str, u64> = HashMap::new();
    for name in names {
        let mut functions: Vec<u64> = loaders
            .get(name)
            .into_iter()
            .flatten()
            .filter_map(|&at| function_of(&starts, at))
            .collect();
        functions.dedup();
        if let [one] = functions[..] {
            found.insert(name, one);
        }
    }
    for (ex, internal, plain) in BY_CALLEE {
        // ssl_lib.c defines each wrapper right after the plain call, and
        // compilers keep that order. The wrapper calls the internal
        // function, or has it inlined, error name and all (Node.js).
        let Some(next) = found.get(plain).and_then(|&f| next_start(&starts, f)) else {
            continue;
        };
        let body = next..next_start(&starts, next).unwrap_or(u64::MAX);
        let loads_name = loaders
            .get(internal)
            .is_some_and(|sites| sites.iter().any(|at| body.contains(at)));
        let calls = found
            .get(internal)
            .is_some_and(|&target| calls_within(&text, &body, target));
        if loads_name || calls {
            found.insert(ex, next);
        }
    }
    let mut symbols = TlsSymbols::new();
    for name in NAMED.iter().chain(BY_CALLEE.iter().map(|(ex, _, _)| ex)) {
        if let Some(offset) = found.get(name).and_then(|&a| elf::file_offset(file, a)) {
            symbols.insert((*name).to_owned(), offset);
        }
    }
    for required in &NAMED[..2] {
        if !symbols.contains_key(*required) {
            return Err(NotFound::Unlocated(required));
        }
    }
    Ok(symbols)
}

/// The address of `name` as a whole NUL-terminated string of `rodata`
/// (preceded by a NUL, or first); `None` unless there is exactly one.
fn string_address(rodata: &Loaded, name: &str) -> Option<u64> {
    let needle = [b"\0", name.as_bytes(), b"\0"].concat();
    let mut hits = memchr::memmem::find_iter(rodata.data, &needle);
    let first = hits.next()?;
    hits.next()
        .is_none()
        .then(|| rodata.address + first as u64 + 1)
}

/// Where the code of `text` loads one of `strings`' addresses, by name:
/// the addresses of those instructions, in order.
fn loads_of<'n>(text: &Loaded, strings: &HashMap<u64, &'n str>) -> HashMap<&'n str, Vec<u64>> {
    let mut found: HashMap<&str, Vec<u64>> = HashMap::new();
    let code = text.data;
    let disp = |at: usize| {
        code.get(at..at + 4)
            .map(|b| i32::from_le_bytes(b.try_into().unwrap()))
    };
    for at in 0..code.len() {
        let address = text.address + at as u64;
        // lea r64, [rip + disp32]: REX.W (r8–r15 too), 8d, ModRM 00 reg 101.
        let target = if matches!(code[at], 0x48 | 0x4c)
            && code.get(at + 1) == Some(&0x8d)
            && code.get(at + 2).is_some_and(|m| m & 0xc7 == 0x05)
        {
            disp(at + 3).map(|d| (address + 7).wrapping_add_signed(i64::from(d)))
        } else if (0xb8..=0xbf).contains(&code[at]) {
            // mov r32, imm32 (an absolute address below 4 GiB).
            disp(at + 1).map(|imm| u64::from(imm as u32))
        } else {
            None
        };
        if let Some(name) = target.and_then(|t| strings.get(&t)) {
            found.entry(name).or_default().push(address);
        }
    }
    found
}

/// Whether the code of `text` in `range` calls or jumps to `target`
/// (`e8`/`e9` rel32).
fn calls_within(text: &Loaded, range: &std::ops::Range<u64>, target: u64) -> bool {
    let code = text.data;
    let from = range.start.saturating_sub(text.address) as usize;
    let to = (range.end.saturating_sub(text.address) as usize).min(code.len().saturating_sub(4));
    (from..to).any(|at| {
        matches!(code[at], 0xe8 | 0xe9) && {
            let rel = i32::from_le_bytes(code[at + 1..at + 5].try_into().unwrap());
            (text.address + at as u64 + 5).wrapping_add_signed(i64::from(rel)) == target
        }
    })
}

/// The start of the function after the one starting at `start`.
fn next_start(starts: &[u64], start: u64) -> Option<u64> {
    starts.get(starts.partition_point(|&s| s <= start)).copied()
}

/// The function holding `address`: the last start at or before it.
fn function_of(starts: &[u64], address: u64) -> Option<u64> {
    let after = starts.partition_point(|&s| s <= address);
    after.checked_sub(1).map(|i| starts[i])
}

/// The start of every function the unwind table has, sorted: the binary
/// search table of `.eh_frame_hdr` in the form both GNU ld and lld write
/// (version 1; the count a `udata4`; entries `datarel|sdata4` pairs of
/// function start and FDE address). `None` for any other form.
fn function_starts(hdr: &Loaded) -> Option<Vec<u64>> {
    const UDATA4: u8 = 0x03;
    const DATAREL_SDATA4: u8 = 0x3b;
    let data = hdr.data;
    let (version, ptr_enc, count_enc, table_enc) =
        (*data.first()?, *data.get(1)?, *data.get(2)?, *data.get(3)?);
    if version != 1 || count_enc != UDATA4 || table_enc != DATAREL_SDATA4 {
        return None;
    }
    // eh_frame_ptr's size by its encoding: 4 bytes for the sdata4/udata4 forms.
    if ptr_enc & 0x0f != 0x0b && ptr_enc & 0x0f != 0x03 {
        return None;
    }
    let word = |at: usize| {
        data.get(at..at + 4)
            .map(|b| i32::from_le_bytes(b.try_into().unwrap()))
    };
    // The count is the file's word: the table must hold that many entries
    // before anything is sized by it.
    let count = word(8)? as u32 as usize;
    if count > data.len().saturating_sub(12) / 8 {
        return None;
    }
    let mut starts = Vec::with_capacity(count);
    for i in 0..count {
        let start = word(12 + i * 8)?;
        starts.push(hdr.address.wrapping_add_signed(i64::from(start)));
    }
    starts.sort_unstable();
    Some(starts)
}

#[cfg(test)]
mod tests {
    use std::{fs, path::Path};

    use super::*;

    fn open(path: &str) -> Option<File> {
        Path::new(path)
            .exists()
            .then(|| object::ReadCache::new(fs::File::open(path).unwrap()))
    }

    /// The search, blind to symbols, finds what the symbol table says, in
    /// a file that has both.
    fn agrees_with_symbols(path: &str) {
        let file = open(path).unwrap_or_else(|| panic!("{path} is missing (make deps)"));
        let by_symbols = elf::tls_symbols(&file);
        let by_search = search(&file).unwrap();
        for name in [
            "SSL_read",
            "SSL_write",
            "SSL_set_fd",
            "SSL_read_ex",
            "SSL_write_ex",
        ] {
            assert_eq!(
                by_search.get(name),
                by_symbols.get(name),
                "{path}: {name} (found {by_search:?})"
            );
        }
        for (name, offset) in &by_search {
            assert_eq!(by_symbols.get(name), Some(offset), "{path}: {name}");
        }
    }

    #[test]
    fn finds_what_the_symbols_say_in_libssl() {
        agrees_with_symbols("/usr/lib/x86_64-linux-gnu/libssl.so.3");
    }

    #[test]
    fn finds_what_the_symbols_say_in_node() {
        agrees_with_symbols("/usr/bin/node");
    }

    #[test]
    fn a_file_without_openssl_is_not_searched_further() {
        let me = std::env::current_exe().unwrap();
        let file = object::ReadCache::new(fs::File::open(me).unwrap());
        assert_eq!(search(&file), Err(NotFound::NotOpenssl));
    }

    /// A table that claims more entries than it holds is refused before
    /// anything is sized by its count (the file is its owner's to craft).
    #[test]
    fn a_function_table_is_read_only_as_far_as_it_goes() {
        let mut data = vec![1, 0x1b, 0x03, 0x3b, 0, 0, 0, 0];
        data.extend_from_slice(&u32::MAX.to_le_bytes());
        data.extend_from_slice(&[0; 16]);
        let hdr = Loaded {
            data: &data,
            address: 0x1000,
        };
        assert_eq!(function_starts(&hdr), None);
        data[8..12].copy_from_slice(&2u32.to_le_bytes());
        // Entries: start -0x10 and +0x20 from the table's address.
        data[12..16].copy_from_slice(&0x20i32.to_le_bytes());
        data[20..24].copy_from_slice(&(-0x10i32).to_le_bytes());
        let hdr = Loaded {
            data: &data,
            address: 0x1000,
        };
        assert_eq!(function_starts(&hdr), Some(vec![0xff0, 0x1020]));
    }

    #[test]
    fn function_of_takes_the_last_start_at_or_before() {
        let starts = [0x100, 0x180, 0x200];
        assert_eq!(function_of(&starts, 0xff), None);
        assert_eq!(function_of(&starts, 0x100), Some(0x100));
        assert_eq!(function_of(&starts, 0x1ff), Some(0x180));
        assert_eq!(function_of(&starts, 0x5000), Some(0x200));
    }
}
