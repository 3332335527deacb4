//! Builds the kernel crate (`qtapd-ebpf`) for the BPF target with aya-build
//! and leaves the object in `OUT_DIR/qtapd`, which `src/ebpf` embeds.

use aya_build::{Package, Toolchain};

fn main() -> anyhow::Result<()> {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../qtapd-ebpf");
    aya_build::build_ebpf(
        [Package {
            name: "qtapd-ebpf",
            root_dir: root,
            ..Package::default()
        }],
        Toolchain::default(),
    )
}
