//! Struct member offsets from the running kernel's BTF
//! (`/sys/kernel/btf/vmlinux`), for the few kernel structs the programs
//! read (`qtap_common::CredOffsets`, `qtap_common::FileOffsets`). A reader of just what that needs:
//! the header, the type records (skipped by kind), and the string table.
//! Written here rather than taken from a crate: `aya-obj` keeps its member
//! accessors private, and the BTF crates on crates.io are LGPL, which qtap
//! (MIT OR Apache-2.0) does not link.

use std::collections::HashMap;

use qtap_common::{CredOffsets, FileOffsets, TaskOffsets};

/// Where the running kernel publishes its BTF.
pub const VMLINUX: &str = "/sys/kernel/btf/vmlinux";

const MAGIC: u16 = 0xeb9f;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;

#[derive(Debug, thiserror::Error)]
pub enum BtfError {
    #[error("read {VMLINUX}: {0}")]
    Read(#[from] std::io::Error),
    #[error("{VMLINUX}: {0}")]
    Format(&'static str),
    #[error("the kernel's BTF has no struct {0}")]
    NoStruct(&'static str),
    #[error("the kernel's BTF has no member {1} in struct {0}")]
    NoMember(&'static str, &'static str),
    #[error("struct {0} member {1} is a bitfield or not byte-aligned")]
    Unaligned(&'static str, &'static str),
}

/// A struct or union of the type section: its name when it is a named
/// struct, and its members' names, type ids and bit offsets.
struct Composite {
    name: Option<String>,
    members: Vec<(String, u32, u32)>,
}

/// Puts `composite`'s members, at `base` bits, into `into`; an anonymous
/// struct or union member (`sock_common`'s `skc_num` lives in one) gives
/// its own members instead. Bitfields stay `u32::MAX`.
fn flatten(
    composites: &[Option<Composite>],
    composite: &Composite,
    base: u32,
    into: &mut HashMap<String, u32>,
    depth: u8,
) {
    for (name, type_id, bits) in &composite.members {
        let at = if *bits == u32::MAX {
            u32::MAX
        } else {
            base.saturating_add(*bits)
        };
        if !name.is_empty() {
            into.insert(name.clone(), at);
        } else if let Some(Some(inner)) = composites.get(*type_id as usize) {
            // Anonymous members nest a few levels at most; the bound only
            // guards against a malformed, self-referencing blob.
            if depth < 8 && at != u32::MAX {
                flatten(composites, inner, at, into, depth + 1);
            }
        }
    }
}

/// The byte offsets of the members of each struct, by name.
pub struct Structs {
    structs: HashMap<String, HashMap<String, u32>>,
}

fn u32_at(data: &[u8], at: usize) -> Result<u32, BtfError> {
    data.get(at..at + 4)
        .and_then(|b| b.try_into().ok())
        .map(u32::from_ne_bytes)
        .ok_or(BtfError::Format("truncated"))
}

fn str_at(strings: &[u8], off: u32) -> String {
    let tail = strings.get(off as usize..).unwrap_or_default();
    let end = tail.iter().position(|&b| b == 0).unwrap_or(tail.len());
    String::from_utf8_lossy(&tail[..end]).into_owned()
}

impl Structs {
    /// Reads the running kernel's BTF.
    ///
    /// # Errors
    /// The file is missing (a kernel without `CONFIG_DEBUG_INFO_BTF`) or
    /// malformed.
    pub fn from_kernel() -> Result<Structs, BtfError> {
        Structs::parse(&std::fs::read(VMLINUX)?)
    }

    /// Parses BTF in the machine's byte order, keeping named structs.
    ///
    /// # Errors
    /// Not BTF, or records that run past the type section.
    pub fn parse(data: &[u8]) -> Result<Structs, BtfError> {
        let magic = data
            .get(..2)
            .map(|b| u16::from_ne_bytes([b[0], b[1]]))
            .ok_or(BtfError::Format("truncated"))?;
        if magic != MAGIC {
            return Err(BtfError::Format("not BTF in this byte order"));
        }
        let hdr_len = u32_at(data, 4)? as usize;
        let (type_off, type_len) = (u32_at(data, 8)? as usize, u32_at(data, 12)? as usize);
        let (str_off, str_len) = (u32_at(data, 16)? as usize, u32_at(data, 20)? as usize);
        let section = |off: usize, len: usize| {
            data.get(hdr_len + off..hdr_len + off + len)
                .ok_or(BtfError::Format("a section runs past the end"))
        };
        let types = section(type_off, type_len)?;
        let strings = section(str_off, str_len)?;
        // Every struct and union by type id (ids count from 1), so that a
        // named struct's anonymous members can be flattened into it.
        let mut composites: Vec<Option<Composite>> = vec![None];
        let mut at = 0;
        while at < types.len() {
            let name_off = u32_at(types, at)?;
            let info = u32_at(types, at + 4)?;
            let (kind, vlen, kind_flag) =
                ((info >> 24) & 0x1f, (info & 0xffff) as usize, info >> 31);
            at += 12;
            let trailing = match kind {
                1 | 14 | 17 => 4,             // int, var, decl tag
                3 => 12,                      // array
                4 | 5 | 15 | 19 => vlen * 12, // struct, union, datasec, enum64
                6 | 13 => vlen * 8,           // enum, func proto
                2 | 7..=12 | 16 | 18 => 0,
                _ => return Err(BtfError::Format("unknown type kind")),
            };
            let composite = if kind == KIND_STRUCT || kind == KIND_UNION {
                let mut members = Vec::with_capacity(vlen);
                for m in 0..vlen {
                    let base = at + m * 12;
                    let name = str_at(strings, u32_at(types, base)?);
                    let type_id = u32_at(types, base + 4)?;
                    let mut bits = u32_at(types, base + 8)?;
                    if kind_flag == 1 {
                        // The top byte is the bitfield size: a plain member has 0.
                        if bits >> 24 != 0 {
                            bits = u32::MAX;
                        } else {
                            bits &= 0x00ff_ffff;
                        }
                    }
                    members.push((name, type_id, bits));
                }
                Some(Composite {
                    name: (kind == KIND_STRUCT && name_off != 0).then(|| str_at(strings, name_off)),
                    members,
                })
            } else {
                None
            };
            composites.push(composite);
            at += trailing;
        }
        let mut structs = HashMap::new();
        for composite in composites.iter().flatten() {
            if let Some(name) = &composite.name {
                let mut members = HashMap::new();
                flatten(&composites, composite, 0, &mut members, 0);
                structs.insert(name.clone(), members);
            }
        }
        Ok(Structs { structs })
    }

    /// The byte offset of `member` in `strukt`.
    ///
    /// # Errors
    /// The struct or member is unknown, or the member is a bitfield.
    pub fn offset(&self, strukt: &'static str, member: &'static str) -> Result<u32, BtfError> {
        let bits = *self
            .structs
            .get(strukt)
            .ok_or(BtfError::NoStruct(strukt))?
            .get(member)
            .ok_or(BtfError::NoMember(strukt, member))?;
        if bits == u32::MAX || bits % 8 != 0 {
            return Err(BtfError::Unaligned(strukt, member));
        }
        Ok(bits / 8)
    }

    /// Where `task_struct` and `cred` keep a task's credentials.
    ///
    /// # Errors
    /// A member the programs read is missing.
    pub fn cred_offsets(&self) -> Result<CredOffsets, BtfError> {
        let mut ids = [0; 8];
        let names = [
            "uid", "euid", "suid", "fsuid", "gid", "egid", "sgid", "fsgid",
        ];
        for (slot, name) in ids.iter_mut().zip(names) {
            *slot = self.offset("cred", name)?;
        }
        Ok(CredOffsets {
            task_real_cred: self.offset("task_struct", "real_cred")?,
            cap_permitted: self.offset("cred", "cap_permitted")?,
            ids,
            valid: 1,
            _pad: 0,
        })
    }

    /// Where a task's fd table leads to each file's inode mode, and a
    /// socket file to its local address.
    ///
    /// # Errors
    /// A member the programs read is missing.
    pub fn file_offsets(&self) -> Result<FileOffsets, BtfError> {
        Ok(FileOffsets {
            task_files: self.offset("task_struct", "files")?,
            files_fdt: self.offset("files_struct", "fdt")?,
            fdt_max_fds: self.offset("fdtable", "max_fds")?,
            fdt_fd: self.offset("fdtable", "fd")?,
            file_inode: self.offset("file", "f_inode")?,
            inode_mode: self.offset("inode", "i_mode")?,
            file_private_data: self.offset("file", "private_data")?,
            socket_sk: self.offset("socket", "sk")?,
            sk_rcv_saddr: self.offset("sock_common", "skc_rcv_saddr")?,
            sk_num: self.offset("sock_common", "skc_num")?,
            sk_v6_rcv_saddr: self.offset("sock_common", "skc_v6_rcv_saddr").unwrap_or(0),
            valid: 1,
        })
    }

    /// Where a task's count of live threads is.
    ///
    /// # Errors
    /// A member the programs read is missing.
    pub fn task_offsets(&self) -> Result<TaskOffsets, BtfError> {
        Ok(TaskOffsets {
            task_signal: self.offset("task_struct", "signal")?,
            signal_live: self.offset("signal_struct", "live")?,
            task_comm: self.offset("task_struct", "comm")?,
            valid: 1,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A BTF blob with one struct `cred { int uid; int gid; }`.
    fn blob() -> Vec<u8> {
        let strings = b"\0cred\0uid\0gid\0int\0".to_vec();
        let mut types = Vec::new();
        let mut push = |v: u32| types.extend_from_slice(&v.to_ne_bytes());
        // [1] int: name "int" (14), kind 1, size 4, encoding.
        push(14);
        push(1 << 24);
        push(4);
        push(32);
        // [2] struct cred: 2 members, size 8.
        push(1);
        push((4 << 24) | 2);
        push(8);
        for (name, off) in [(6, 0), (10, 32)] {
            push(name);
            push(1);
            push(off);
        }
        let mut data = Vec::new();
        data.extend_from_slice(&MAGIC.to_ne_bytes());
        data.extend_from_slice(&[1, 0]);
        for v in [
            24,
            0,
            types.len() as u32,
            types.len() as u32,
            strings.len() as u32,
        ] {
            data.extend_from_slice(&v.to_ne_bytes());
        }
        data.extend_from_slice(&types);
        data.extend_from_slice(&strings);
        data
    }

    #[test]
    fn finds_member_offsets() {
        let structs = Structs::parse(&blob()).unwrap();
        assert_eq!(structs.offset("cred", "uid").unwrap(), 0);
        assert_eq!(structs.offset("cred", "gid").unwrap(), 4);
        assert!(matches!(
            structs.offset("cred", "euid"),
            Err(BtfError::NoMember("cred", "euid"))
        ));
        assert!(matches!(
            structs.offset("task_struct", "cred"),
            Err(BtfError::NoStruct("task_struct"))
        ));
    }

    #[test]
    fn rejects_what_is_not_btf() {
        assert!(Structs::parse(b"not btf at all, not at all").is_err());
        let mut truncated = blob();
        truncated.truncate(30);
        assert!(Structs::parse(&truncated).is_err());
    }

    /// The running kernel's BTF has every member the programs read.
    #[test]
    fn this_kernel_has_the_cred_members() {
        let offsets = Structs::from_kernel().unwrap().cred_offsets().unwrap();
        assert_eq!(offsets.valid, 1);
        assert!(offsets.task_real_cred > 0);
        // uid comes first in struct cred after the usage count.
        assert!(offsets.ids.iter().all(|&o| o > 0 && o < 256), "{offsets:?}");
        let files = Structs::from_kernel().unwrap().file_offsets().unwrap();
        assert_eq!(files.valid, 1);
        assert!(files.task_files > 0 && files.file_inode > 0, "{files:?}");
        // i_mode is the first member of struct inode.
        assert_eq!(files.inode_mode, 0, "{files:?}");
        // sock_common's address pair and port pair, inside anonymous
        // unions, have had these places since they were grouped for
        // lookups; the IPv6 address follows them.
        assert_eq!((files.sk_rcv_saddr, files.sk_num), (4, 14), "{files:?}");
        assert!(files.sk_v6_rcv_saddr > 16, "{files:?}");
        let task = Structs::from_kernel().unwrap().task_offsets().unwrap();
        // `live` follows `sigcnt` at the start of `signal_struct`.
        assert_eq!((task.valid, task.signal_live), (1, 4), "{task:?}");
        assert!(task.task_signal > 0 && task.task_comm > 0, "{task:?}");
    }
}
