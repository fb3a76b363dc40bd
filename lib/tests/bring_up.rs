//! The driver's register sequences, read from a log of every register and configuration-space
//! access it made, per IOAT version and device id: the function enabled (memory space and bus
//! mastering on, Relaxed Ordering off) before the first doorbell; CHANERR written back before
//! every RESET, and CHANERR_INT too where the part needs it (v3.2, and Skylake-SP whatever its
//! CBVER says); 64-bit registers written as two halves, low first, where the part cannot take
//! them whole; and no access wider than the part allows. Each run also goes through an error
//! recovery, so the reset sequence is seen twice.

use std::sync::Arc;
use std::time::{Duration, Instant};

use dmaplane::emu::{EmuConfig, EmuMode, EmulatedDevice, Fault};
use dmaplane::ioat::spec::{
    cbver, chan, chancmd, chanerr, channel_base, config, SKYLAKE_SP_DEVICE_ID,
};
use dmaplane::ioat::{IoatConfig, IoatDevice};
use dmaplane::mem::{DmaPool, DmaPoolConfig};
use dmaplane::mmio::{Access, AccessLog, RecordingWindow, Space};
use dmaplane::pci::{regs, RecordingConfig};
use dmaplane::{Client, ClientConfig, Completion, Engine, EngineConfig, OpFlags};

mod common;
use common::{block, device_memory, quiet};

/// Where the emulated function's PCI Express Device Control sits.
const DEVCTL: usize = 0x90 + regs::EXP_DEVCTL;

/// Runs four copies (the second failing, so the channel halts and is recovered) through a
/// driver whose every access is logged; returns the log and the completions.
fn logged_run(version: u8, device_id: Option<u16>) -> (Vec<Access>, Vec<Completion>, u64) {
    let pool = DmaPool::new(DmaPoolConfig::default()).unwrap();
    let emu = EmuConfig {
        cbver: version,
        device_id,
        mode: EmuMode::Inline,
        ..EmuConfig::default()
    };
    let device = EmulatedDevice::new(emu, device_memory(&pool)).unwrap();
    let log = AccessLog::new();
    let registers = Arc::new(RecordingWindow::new(device.registers(), log.clone()));
    let config_space = Arc::new(RecordingConfig::new(device.config_space(), log.clone()));
    let ioat = IoatDevice::probe(
        "logged",
        registers,
        Some(config_space),
        pool.clone(),
        IoatConfig::default(),
    )
    .unwrap();
    let engine = Engine::new(EngineConfig::with_cpus(1).log_hook(quiet())).unwrap();
    engine.register_device(ioat.spec()).unwrap();
    let mut client = Client::new(&engine, Some(0), ClientConfig::default()).unwrap();
    device
        .inject(Fault::FailDescriptor {
            channel: 0,
            nth: 2,
            error: chanerr::READ_DATA,
        })
        .unwrap();
    let (src, dst) = (block(&pool, 256, 1), block(&pool, 256, 2));
    for i in 0..4u64 {
        // SAFETY: the blocks outlive the operations, collected below.
        unsafe { client.copy(dst.as_mut_ptr(), src.as_ptr(), 256, i, OpFlags::SUBMIT) }.unwrap();
    }
    let mut done = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut batch = [Completion::default(); 8];
    while done.len() < 4 {
        assert!(Instant::now() < deadline, "only {done:?}");
        let n = client.poll(&mut batch);
        done.extend_from_slice(&batch[..n]);
    }
    drop(client);
    let relaxed = device.stats()[0].relaxed_completion_writes;
    (log.take(), done, relaxed)
}

fn is_write(a: &Access, space: Space, offset: usize) -> bool {
    a.write && a.space == space && a.offset == offset
}

/// The checks, as (what, whether it held) pairs, so a failure names every broken rule.
fn check(version: u8, device_id: Option<u16>) -> Vec<(String, bool)> {
    let (log, done, relaxed) = logged_run(version, device_id);
    // Written out here rather than taken from the library: Skylake-SP (0x2021) acts as v3.2.
    let acts_as_v3_2 = version < cbver::V3_3 || device_id == Some(0x2021);
    let split = acts_as_v3_2;
    let base = channel_base(0);
    let mut rules = Vec::new();

    // Every operation completed once; only the injected failure failed, so recovery worked.
    let mut results: Vec<_> = done.iter().map(|c| (c.user_data, c.result)).collect();
    results.sort_by_key(|r| r.0);
    let failed = Err(dmaplane::ioat::device_error(chanerr::READ_DATA));
    rules.push((
        format!("recovered: {results:?}"),
        results == [(0, Ok(())), (1, failed), (2, Ok(())), (3, Ok(()))],
    ));

    let first_doorbell = log
        .iter()
        .position(|a| is_write(a, Space::Registers, base + chan::DMACOUNT))
        .unwrap_or(log.len());
    let before = &log[..first_doorbell];
    let command = before
        .iter()
        .rev()
        .find(|a| is_write(a, Space::Config, regs::COMMAND))
        .map(|a| a.value as u16);
    let enabled = regs::COMMAND_MEMORY | regs::COMMAND_MASTER;
    rules.push((
        format!("COMMAND {command:?} has memory space and bus mastering before the first doorbell"),
        command.is_some_and(|c| c & enabled == enabled),
    ));
    let devctl = before
        .iter()
        .rev()
        .find(|a| is_write(a, Space::Config, DEVCTL))
        .map(|a| a.value as u16);
    rules.push((
        format!("DEVCTL {devctl:?} has Relaxed Ordering off before the first doorbell"),
        devctl.is_some_and(|d| d & regs::EXP_DEVCTL_RELAX_EN == 0),
    ));
    rules.push((
        format!("{relaxed} completion write(s) made with Relaxed Ordering on"),
        relaxed == 0,
    ));

    // Each RESET follows a CHANERR write-back (and a CHANERR_INT one where the part needs
    // it) made since the previous RESET.
    let mut since_reset: Vec<&Access> = Vec::new();
    let mut resets = 0;
    for a in &log {
        let reset = is_write(a, Space::Registers, base + chan::CHANCMD)
            && a.value as u8 & chancmd::RESET != 0;
        if !reset {
            since_reset.push(a);
            continue;
        }
        resets += 1;
        let chanerr_cleared = since_reset
            .iter()
            .any(|b| is_write(b, Space::Registers, base + chan::CHANERR));
        rules.push((
            format!("RESET {resets}: CHANERR written back before it"),
            chanerr_cleared,
        ));
        let chanerr_int_cleared = since_reset
            .iter()
            .any(|b| is_write(b, Space::Config, config::CHANERR_INT));
        rules.push((
            format!(
                "RESET {resets}: CHANERR_INT written back before it: {chanerr_int_cleared}, \
                 needed: {}",
                acts_as_v3_2
            ),
            chanerr_int_cleared == acts_as_v3_2,
        ));
        since_reset.clear();
    }
    rules.push((format!("{resets} resets (start, recovery)"), resets >= 2));

    // CHAINADDR: halves low then high where the part needs it, else one 64-bit write.
    let chainaddr: Vec<&Access> = log
        .iter()
        .filter(|a| {
            a.write
                && a.space == Space::Registers
                && (a.offset == base + chan::CHAINADDR || a.offset == base + chan::CHAINADDR + 4)
        })
        .collect();
    let halves_in_order = chainaddr.chunks(2).all(|pair| {
        pair.len() == 2
            && pair[0].offset == base + chan::CHAINADDR
            && pair[1].offset == base + chan::CHAINADDR + 4
            && pair.iter().all(|a| a.width == 4)
    });
    let whole = chainaddr
        .iter()
        .all(|a| a.offset == base + chan::CHAINADDR && a.width == 8);
    rules.push((
        format!(
            "CHAINADDR written {} ({} accesses)",
            if split { "low half first" } else { "whole" },
            chainaddr.len()
        ),
        !chainaddr.is_empty() && if split { halves_in_order } else { whole },
    ));

    let too_wide = log
        .iter()
        .filter(|a| {
            a.space == Space::Registers
                && ((split && a.width == 8) || a.offset % usize::from(a.width) != 0)
        })
        .count();
    rules.push((
        format!("{too_wide} register access(es) wider than the part allows or misaligned"),
        too_wide == 0,
    ));
    rules
}

#[test]
fn bring_up_and_recovery_follow_the_rules_of_each_version_and_device() {
    let mut broken = Vec::new();
    for (version, device_id) in [
        (cbver::V3_2, None),
        (cbver::V3_3, None),
        (cbver::V3_4, None),
        (cbver::V3_3, Some(SKYLAKE_SP_DEVICE_ID)),
    ] {
        for (rule, held) in check(version, device_id) {
            if !held {
                broken.push(format!("CBVER {version:#x}, device {device_id:x?}: {rule}"));
            }
        }
    }
    assert!(broken.is_empty(), "{}", broken.join("\n"));
}

#[test]
fn skylake_sp_treated_by_its_cbver_alone_would_stay_halted_after_a_failure() {
    // The quirk's negative control, on the device side: the same recovery without the
    // CHANERR_INT write-back leaves a Skylake-SP channel HALTED, and a part that really is
    // v3.3 arms.
    use dmaplane::emu::HostBuffer;
    for (device_id, arms) in [(SKYLAKE_SP_DEVICE_ID, false), (0x6f50, true)] {
        let buffer = HostBuffer::new(4096);
        // SAFETY: the device is dropped before the buffer, and only a null chain runs.
        let memory =
            unsafe { dmaplane::emu::IdentityRanges::new(&[(buffer.addr(), buffer.len())]) };
        let device = EmulatedDevice::new(
            EmuConfig {
                device_id: Some(device_id),
                ..EmuConfig::default()
            },
            Arc::new(memory),
        )
        .unwrap();
        let (r, cs) = (device.registers(), device.config_space());
        cs.write16(regs::COMMAND, regs::COMMAND_MEMORY | regs::COMMAND_MASTER)
            .unwrap();
        let base = channel_base(0);
        // A chain at an unmapped address halts the channel with an error.
        r.write64(base + chan::CHAINADDR, 0x40);
        r.write16(base + chan::DMACOUNT, 1);
        assert_ne!(r.read32(base + chan::CHANERR), 0);
        r.write32(base + chan::CHANERR, r.read32(base + chan::CHANERR));
        r.write8(base + chan::CHANCMD, chancmd::RESET);
        while r.read8(base + chan::CHANCMD) & chancmd::RESET != 0 {}
        r.write64(base + chan::CHAINADDR, buffer.addr());
        let state = dmaplane::ioat::spec::chansts::state(r.read64(base + chan::CHANSTS));
        assert_eq!(
            state == dmaplane::ioat::spec::chansts::ARMED,
            arms,
            "device {device_id:#x}"
        );
    }
}
