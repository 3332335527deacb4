//! A [`Selector`] whose selection tables live in memory and that attaches
//! nothing: the engine without a kernel, for the tests and the fuzzers.

use std::{collections::HashMap, path::Path};

use super::{KernelError, KernelStats, Selector, TlsSymbols};
use crate::{filter::compile::Compiled, gotls::GoTls};

#[derive(Debug, Default)]
pub struct MemoryKernel {
    procs: HashMap<u32, u64>,
    /// The session mask of the filters installed last.
    pub active: u64,
}

impl Selector for MemoryKernel {
    fn attached(&self) -> usize {
        0
    }
    fn features(&self) -> super::preflight::Features {
        super::preflight::Features::all()
    }
    fn install(&mut self, compiled: &Compiled) -> Result<(), KernelError> {
        self.active = compiled.config.active;
        Ok(())
    }
    fn select(&mut self, tgid: u32, sessions: u64) -> Result<(), KernelError> {
        self.procs.insert(tgid, sessions);
        Ok(())
    }
    fn deselect(&mut self, tgid: u32) {
        self.procs.remove(&tgid);
    }
    fn selected(&self) -> Vec<(u32, u64)> {
        self.procs.iter().map(|(k, v)| (*k, *v)).collect()
    }
    fn selection(&self, tgid: u32) -> u64 {
        self.procs.get(&tgid).copied().unwrap_or(0)
    }
    fn forget_conns(&mut self, _: u32, _: Vec<u32>) {}
    fn forget_sessions(&mut self, _: u64) {}
    fn sweep_conns(&mut self) -> usize {
        0
    }
    fn stats(&self) -> KernelStats {
        KernelStats::default()
    }
    fn wake_at_next_record(&mut self) -> Result<(), KernelError> {
        Ok(())
    }
    fn set_tracing(&mut self, _: bool) -> Result<(), KernelError> {
        Ok(())
    }
    fn attach_tls(&mut self, _: &Path, _: &TlsSymbols) -> Result<usize, KernelError> {
        Ok(0)
    }
    fn attach_go(&mut self, _: &Path, _: &GoTls) -> Result<usize, KernelError> {
        Ok(0)
    }
    fn detach_tls(&mut self) {}
}
