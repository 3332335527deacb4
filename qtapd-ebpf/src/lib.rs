//! Host-side placeholder so `qtapd` can list this crate as a build
//! dependency (cargo then rebuilds it when the kernel sources change).
#![no_std]
