//! The guest, built from Debian's packages only: the `linux-image-amd64` kernel and its VFIO
//! modules, unpacked with `dpkg -x`; busybox from `busybox-static` as init and shell; the
//! `rig-guest` test binary with the shared libraries it needs; and an init script that loads
//! the modules, runs the tests named on the kernel command line and powers off.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::cpio::{self, Entry};
use super::RigError;

/// The VFIO modules the guest loads, dependencies first, with their parameters. The entry
/// limit is low so that the VFIO scenario can reach it; `ids` makes vfio-pci take every
/// `edu` function, including ones plugged in later.
pub fn modules(entry_limit: usize) -> Vec<(&'static str, String)> {
    vec![
        ("irqbypass", String::new()),
        ("vfio", String::new()),
        ("vfio_iommu_type1", format!("dma_entry_limit={entry_limit}")),
        ("vfio_virqfd", String::new()),
        ("vfio-pci-core", String::new()),
        (
            "vfio-pci",
            format!(
                "ids={:04x}:{:04x}",
                dmaplane::pci::QEMU_VENDOR,
                dmaplane::pci::EDU_DEVICE_ID
            ),
        ),
    ]
}

/// A bootable guest: its kernel and initramfs.
#[derive(Clone, Debug)]
pub struct GuestImage {
    /// The kernel image.
    pub kernel: PathBuf,
    /// Its release (`6.1.0-…-amd64`).
    pub release: String,
    /// The initramfs.
    pub initramfs: PathBuf,
}

fn run(command: &mut Command) -> Result<String, RigError> {
    let shown = format!("{command:?}");
    let output = command
        .output()
        .map_err(|e| RigError::Environment(format!("{shown}: {e}")))?;
    if !output.status.success() {
        return Err(RigError::Environment(format!(
            "{shown} failed: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// The versioned kernel package `linux-image-amd64` stands for.
fn kernel_package() -> Result<String, RigError> {
    let depends = run(Command::new("apt-cache").args(["depends", "linux-image-amd64"]))?;
    depends
        .lines()
        .filter_map(|l| l.trim().strip_prefix("Depends: "))
        .find(|p| p.starts_with("linux-image-"))
        .map(str::to_string)
        .ok_or_else(|| RigError::Environment("linux-image-amd64 depends on no kernel".into()))
}

/// Downloads (once) and unpacks the kernel and busybox packages under `work`; returns the
/// unpacked tree.
pub fn unpack_packages(work: &Path) -> Result<PathBuf, RigError> {
    let debs = work.join("debs");
    let root = work.join("root");
    if root.join(".unpacked").exists() {
        return Ok(root);
    }
    std::fs::create_dir_all(&debs).map_err(RigError::io(&debs))?;
    // Without the packages there is no guest: the run is skipped, saying why.
    let unavailable = |e: RigError| {
        RigError::Skipped(format!(
            "cannot fetch the guest from Debian's packages: {e}"
        ))
    };
    let kernel = kernel_package().map_err(unavailable)?;
    println!("kvm-rig: fetching {kernel} and busybox-static from Debian's packages");
    let download = |packages: &[&str]| {
        run(Command::new("apt-get")
            .arg("download")
            .args(packages)
            .current_dir(&debs))
    };
    if download(&[&kernel, "busybox-static"]).is_err() {
        // A fresh machine may have no package lists yet.
        run(Command::new("apt-get").args(["update", "-qq"])).map_err(unavailable)?;
        download(&[&kernel, "busybox-static"]).map_err(unavailable)?;
    }
    for deb in std::fs::read_dir(&debs)
        .map_err(RigError::io(&debs))?
        .flatten()
    {
        if deb.path().extension().is_some_and(|e| e == "deb") {
            run(Command::new("dpkg").arg("-x").arg(deb.path()).arg(&root))?;
        }
    }
    std::fs::write(root.join(".unpacked"), "").map_err(RigError::io(&root))?;
    Ok(root)
}

/// The kernel image and its release in an unpacked tree.
fn find_kernel(root: &Path) -> Result<(PathBuf, String), RigError> {
    let boot = root.join("boot");
    std::fs::read_dir(&boot)
        .map_err(RigError::io(&boot))?
        .flatten()
        .find_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let release = name.strip_prefix("vmlinuz-")?.to_string();
            Some((e.path(), release))
        })
        .ok_or_else(|| RigError::Environment(format!("no vmlinuz in {}", boot.display())))
}

/// Every `.ko` under `dir`, by module name (`-` and `_` alike).
fn module_files(dir: &Path, found: &mut BTreeMap<String, PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            module_files(&path, found);
        } else if let Some(name) = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".ko"))
        {
            found.insert(name.replace('-', "_"), path);
        }
    }
}

/// The shared libraries `binary` loads, as `ldd` lists them (the loader included).
fn shared_libraries(binary: &Path) -> Result<Vec<PathBuf>, RigError> {
    let listing = run(Command::new("ldd").arg(binary))?;
    Ok(listing
        .lines()
        .filter_map(|line| {
            let path = match line.split_once("=>") {
                Some((_, rest)) => rest.trim().split(' ').next()?,
                None => line.trim().split(' ').next()?,
            };
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect())
}

/// The guest's `/init`.
fn init_script(entry_limit: usize) -> String {
    let mut script = String::from(
        "#!/bin/busybox sh\n\
         /bin/busybox --install -s /bin\n\
         export PATH=/bin\n\
         mount -t proc proc /proc\n\
         mount -t sysfs sysfs /sys\n\
         mount -t devtmpfs devtmpfs /dev\n\
         mount -t tmpfs tmpfs /tmp\n",
    );
    script.push_str(&format!(
        "echo \"{} booted $(cat /proc/sys/kernel/osrelease)\"\n",
        crate::MARK
    ));
    for (module, parameters) in modules(entry_limit) {
        script.push_str(&format!(
            "insmod /modules/{module}.ko {parameters} || echo \"{} insmod {module} failed\"\n",
            crate::MARK
        ));
    }
    script.push_str(&format!(
        "tests=$(sed -n 's/.*dmaplane\\.tests=\\([^ ]*\\).*/\\1/p' /proc/cmdline)\n\
         scale=$(sed -n 's/.*dmaplane\\.scale=\\([0-9]*\\).*/\\1/p' /proc/cmdline)\n\
         RUST_BACKTRACE=1 /rig-guest --scale \"${{scale:-1}}\" $(echo \"$tests\" | tr , ' ')\n\
         echo \"{} exit $?\"\n\
         poweroff -f\n",
        crate::MARK
    ));
    script
}

/// Builds the guest under `work`: the packages (fetched once), and an initramfs holding
/// `guest_binary`.
pub fn build(work: &Path, guest_binary: &Path, entry_limit: usize) -> Result<GuestImage, RigError> {
    let root = unpack_packages(work)?;
    let (kernel, release) = find_kernel(&root)?;
    let mut available = BTreeMap::new();
    module_files(&root.join("lib/modules").join(&release), &mut available);

    let mut entries = Vec::new();
    let mut dirs = std::collections::BTreeSet::new();
    let mut add_dirs = |path: &str, entries: &mut Vec<Entry>| {
        let mut at = String::new();
        for part in path.split('/').filter(|p| !p.is_empty()) {
            if !at.is_empty() {
                at.push('/');
            }
            at.push_str(part);
            if dirs.insert(at.clone()) {
                entries.push(Entry::Dir { path: at.clone() });
            }
        }
    };
    for dir in ["bin", "dev", "proc", "sys", "tmp", "modules"] {
        add_dirs(dir, &mut entries);
    }
    let read = |path: &Path| std::fs::read(path).map_err(RigError::io(path));
    entries.push(Entry::File {
        path: "bin/busybox".into(),
        mode: 0o755,
        data: read(&root.join("bin/busybox"))?,
    });
    for (module, _) in modules(entry_limit) {
        let file = available.get(&module.replace('-', "_")).ok_or_else(|| {
            RigError::Environment(format!("kernel {release} has no module {module}"))
        })?;
        entries.push(Entry::File {
            path: format!("modules/{module}.ko"),
            mode: 0o644,
            data: read(file)?,
        });
    }
    entries.push(Entry::File {
        path: "rig-guest".into(),
        mode: 0o755,
        data: read(guest_binary)?,
    });
    for library in shared_libraries(guest_binary)? {
        let inside = library
            .to_string_lossy()
            .trim_start_matches('/')
            .to_string();
        if let Some((parent, _)) = inside.rsplit_once('/') {
            add_dirs(parent, &mut entries);
        }
        // Libraries are often symbolic links; the archive holds what they point at.
        entries.push(Entry::File {
            path: inside,
            mode: 0o755,
            data: read(&library)?,
        });
    }
    entries.push(Entry::File {
        path: "init".into(),
        mode: 0o755,
        data: init_script(entry_limit).into_bytes(),
    });

    let initramfs = work.join("initramfs.cpio");
    let mut file = std::io::BufWriter::new(
        std::fs::File::create(&initramfs).map_err(RigError::io(&initramfs))?,
    );
    cpio::write(&mut file, &entries).map_err(RigError::io(&initramfs))?;
    std::io::Write::flush(&mut file).map_err(RigError::io(&initramfs))?;
    Ok(GuestImage {
        kernel,
        release,
        initramfs,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_init_script_loads_every_module_in_order_and_reports_the_exit_status() {
        let script = init_script(64);
        let order: Vec<usize> = modules(64)
            .iter()
            .map(|(m, _)| script.find(&format!("/modules/{m}.ko")).unwrap())
            .collect();
        assert!(order.windows(2).all(|w| w[0] < w[1]), "{script}");
        assert!(script.contains("dma_entry_limit=64"));
        assert!(script.contains("ids=1234:11e8"));
        assert!(script.contains("@@RIG exit $?"));
        assert!(script.trim_end().ends_with("poweroff -f"));
    }
}
