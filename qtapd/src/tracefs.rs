//! tracefs: mounted when missing (a fresh machine here has none), and the
//! tracepoint field offsets that differ between kernels, read from the
//! `format` files instead of assumed.

use std::{fs, io, path::Path};

/// Where qtapd expects tracefs.
pub const TRACEFS: &str = "/sys/kernel/tracing";

#[derive(Debug, thiserror::Error)]
pub enum TracefsError {
    #[error("mount tracefs at {TRACEFS}: {0}")]
    Mount(#[source] io::Error),
    #[error("read {path}: {source}")]
    Read { path: String, source: io::Error },
    #[error("tracepoint {tracepoint} has no field `{field}`")]
    NoField { tracepoint: String, field: String },
}

/// Mounts tracefs at [`TRACEFS`] unless it is already there. Returns
/// whether it mounted it.
pub fn ensure_mounted() -> Result<bool, TracefsError> {
    if Path::new(TRACEFS).join("events").is_dir() {
        return Ok(false);
    }
    let target = c"/sys/kernel/tracing";
    // SAFETY: static, NUL-terminated arguments; no data pointer.
    let rc = unsafe {
        libc::mount(
            c"tracefs".as_ptr(),
            target.as_ptr(),
            c"tracefs".as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(TracefsError::Mount(io::Error::last_os_error()));
    }
    Ok(true)
}

/// Offset of `field` in the record of `category/name`.
pub fn field_offset(category: &str, name: &str, field: &str) -> Result<Option<u32>, TracefsError> {
    let path = format!("{TRACEFS}/events/{category}/{name}/format");
    let text = fs::read_to_string(&path).map_err(|source| TracefsError::Read {
        path: path.clone(),
        source,
    })?;
    Ok(parse_offset(&text, field))
}

/// Like [`field_offset`] but the field must exist.
pub fn required_offset(category: &str, name: &str, field: &str) -> Result<u32, TracefsError> {
    field_offset(category, name, field)?.ok_or_else(|| TracefsError::NoField {
        tracepoint: format!("{category}:{name}"),
        field: field.to_owned(),
    })
}

/// Finds `field:<type> <field>;\toffset:<n>;` in a `format` file.
fn parse_offset(format: &str, field: &str) -> Option<u32> {
    format.lines().find_map(|line| {
        let decl = line.trim().strip_prefix("field:")?;
        let (decl, rest) = decl.split_once(';')?;
        let ident = decl.rsplit([' ', '*']).next()?;
        let ident = ident.split('[').next()?;
        if ident != field {
            return None;
        }
        rest.trim()
            .strip_prefix("offset:")?
            .split(';')
            .next()?
            .parse()
            .ok()
    })
}

#[cfg(test)]
mod tests {
    use super::parse_offset;

    const FORK: &str = "name: sched_process_fork
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:__data_loc char[] parent_comm;\toffset:8;\tsize:4;\tsigned:0;
\tfield:pid_t parent_pid;\toffset:12;\tsize:4;\tsigned:1;
\tfield:__data_loc char[] child_comm;\toffset:16;\tsize:4;\tsigned:0;
\tfield:pid_t child_pid;\toffset:20;\tsize:4;\tsigned:1;
\tfield:char comm[16];\toffset:24;\tsize:16;\tsigned:0;
";

    #[test]
    fn finds_fields_by_exact_name() {
        assert_eq!(parse_offset(FORK, "child_pid"), Some(20));
        assert_eq!(parse_offset(FORK, "parent_pid"), Some(12));
        assert_eq!(parse_offset(FORK, "child_comm"), Some(16));
        assert_eq!(parse_offset(FORK, "comm"), Some(24));
        assert_eq!(parse_offset(FORK, "pid"), None);
    }
}
