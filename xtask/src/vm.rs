//! `cargo xtask vm-test`: the scenarios of tests/vm/scenario/driver.sh in a
//! throwaway Debian bookworm VM (systemd as PID 1, no network), on each
//! Debian kernel of the image (6.1 and 6.12), one verdict per kernel.
//!
//! The image (tests/vm/build-image.sh) is cached under target/vm/image-HASH,
//! HASH covering the recipe, so it is built once and booted with
//! snapshot=on (never written). Each run packs the fresh .deb, the mock
//! provider and the scenario into a tar attached as a read-only virtio-blk
//! disk; the guest writes its verdict on a second serial port. KVM here
//! cannot boot stock kernels, so this is TCG (see shared vm notes).

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use crate::{cargo, run_cmd, workspace_root};

/// Debian packages the harness runs on the host (no recommends: qemu's pull
/// in a desktop stack).
const APT_PACKAGES: &[&str] = &[
    "debootstrap",
    "qemu-system-x86",
    "qemu-utils",
    "e2fsprogs",
    "binutils",
    "tar",
];
/// The files whose content defines the image; any change rebuilds it.
const RECIPE: &[&str] = &[
    "tests/vm/build-image.sh",
    "tests/vm/guest/vmtest-boot",
    "tests/vm/guest/vmtest.service",
];
const SCENARIO: &[&str] = &["driver.sh", "agent.py", "direct.py", "wait_port.py"];
/// One boot, install and every scenario; a healthy run takes a minute or two
/// under TCG. Past this the VM is killed and the kernel fails.
const BOOT_TIMEOUT: Duration = Duration::from_secs(600);

pub fn run(kernel: Option<&str>) -> Result<()> {
    let started = Instant::now();
    setup()?;
    let root = workspace_root();
    let image = ensure_image(&root)?;
    let deb = crate::package::run()?;
    cargo(&[
        "build",
        "--release",
        "-p",
        "warrant",
        "--example",
        "mock_provider",
    ])?;
    let runs = root.join("target/vm/run");
    if runs.exists() {
        fs::remove_dir_all(&runs)?;
    }
    fs::create_dir_all(&runs)?;
    let input = pack_input(&root, &deb, &runs)?;

    let kernels = fs::read_to_string(image.join("kernels"))?;
    let mut failed = Vec::new();
    let mut verdicts = Vec::new();
    for line in kernels.lines() {
        let Some((tag, version)) = line.split_once(' ') else {
            continue;
        };
        if kernel.is_some_and(|k| k != tag) {
            continue;
        }
        let dir = runs.join(tag);
        fs::create_dir_all(&dir)?;
        let boot_started = Instant::now();
        let verdict = boot(&image, tag, &input, &dir)?;
        let line = format!(
            "vm-test {tag} ({version}): {verdict} [{:.0}s; console: {}]",
            boot_started.elapsed().as_secs_f64(),
            dir.join("console.log").display()
        );
        println!("{line}");
        if !verdict.starts_with("PASS") {
            failed.push(tag.to_owned());
        }
        verdicts.push(line);
    }
    println!(
        "== vm-test summary ({:.0}s in all)",
        started.elapsed().as_secs_f64()
    );
    for line in &verdicts {
        println!("{line}");
    }
    if verdicts.is_empty() {
        bail!("no kernel matched");
    }
    if !failed.is_empty() {
        bail!("vm-test failed on {}", failed.join(", "));
    }
    Ok(())
}

/// Installs the host tools the harness needs (quick when present).
pub fn setup() -> Result<()> {
    let missing: Vec<&str> = APT_PACKAGES
        .iter()
        .copied()
        .filter(|p| !crate::setup::dpkg_installed(p))
        .collect();
    if !missing.is_empty() {
        println!("xtask vm-test: installing {}", missing.join(" "));
        run_cmd(Command::new("apt-get").arg("update").arg("-qq"))?;
        run_cmd(
            Command::new("apt-get")
                .args(["install", "-y", "-qq", "--no-install-recommends"])
                .args(&missing)
                .env("DEBIAN_FRONTEND", "noninteractive"),
        )?;
    }
    // The guest's Python packages are fetched by the host's pip.
    let pip = Command::new("python3")
        .args(["-m", "pip", "--version"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !pip {
        run_cmd(
            Command::new("apt-get")
                .args([
                    "install",
                    "-y",
                    "-qq",
                    "--no-install-recommends",
                    "python3-pip",
                ])
                .env("DEBIAN_FRONTEND", "noninteractive"),
        )?;
    }
    Ok(())
}

/// The cached image for the current recipe, built if missing.
fn ensure_image(root: &Path) -> Result<PathBuf> {
    let mut hash = Fnv::default();
    for file in RECIPE {
        hash.write(file.as_bytes());
        hash.write(&fs::read(root.join(file)).with_context(|| format!("cannot read {file}"))?);
    }
    let vm = root.join("target/vm");
    fs::create_dir_all(&vm)?;
    let name = format!("image-{:016x}", hash.0);
    let image = vm.join(&name);
    if image.join("ready").exists() {
        println!("xtask vm-test: image {name} (cached)");
        return Ok(image);
    }
    // Older images and half-built ones are of no further use (2 GiB each,
    // sparse).
    for entry in fs::read_dir(&vm)? {
        let entry = entry?;
        if entry.file_name().to_string_lossy().starts_with("image-") {
            fs::remove_dir_all(entry.path())?;
        }
    }
    println!("xtask vm-test: building image {name} (debootstrap; a few minutes)");
    let started = Instant::now();
    run_cmd(
        Command::new("bash")
            .arg(root.join("tests/vm/build-image.sh"))
            .arg(&image),
    )?;
    println!(
        "xtask vm-test: image built in {:.0}s",
        started.elapsed().as_secs_f64()
    );
    Ok(image)
}

/// The input disk: the scenario, the .deb and the mock provider, as a tar.
fn pack_input(root: &Path, deb: &Path, runs: &Path) -> Result<PathBuf> {
    let stage = runs.join("input");
    fs::create_dir_all(&stage)?;
    for file in SCENARIO {
        fs::copy(root.join("tests/vm/scenario").join(file), stage.join(file))?;
    }
    let deb_name = deb.file_name().context("package path has no file name")?;
    fs::copy(deb, stage.join(deb_name))?;
    fs::copy(
        root.join("target/release/examples/mock_provider"),
        stage.join("mock_provider"),
    )?;
    let tar = runs.join("input.tar");
    run_cmd(
        Command::new("tar")
            .arg("-cf")
            .arg(&tar)
            .arg("-C")
            .arg(&stage)
            .arg("."),
    )?;
    Ok(tar)
}

/// Boots the image on kernel `tag`, waits for the VM to power itself off
/// (or the timeout), and returns the verdict line's text.
fn boot(image: &Path, tag: &str, input: &Path, dir: &Path) -> Result<String> {
    let console = dir.join("console.log");
    let verdict = dir.join("verdict.log");
    let mut qemu = Command::new("qemu-system-x86_64");
    qemu.args(["-accel", "tcg", "-cpu", "max", "-smp", "2", "-m", "1024"])
        // No NIC, no default devices: the guest has no network at all.
        .args(["-nodefaults", "-display", "none", "-no-reboot"]);
    let qboot = Path::new("/usr/share/qemu/qboot.rom");
    if qboot.exists() {
        // Skips SeaBIOS's probing (about a second per boot).
        qemu.arg("-bios").arg(qboot);
    }
    qemu.arg("-kernel")
        .arg(image.join(format!("vmlinuz-{tag}")))
        .args([
            "-append",
            "root=/dev/nvme0n1 rw console=ttyS0 panic=-1 systemd.show_status=error",
        ])
        .arg("-drive")
        .arg(format!(
            "file={},if=none,id=root,format=raw,snapshot=on",
            image.join("rootfs.img").display()
        ))
        .args(["-device", "nvme,drive=root,serial=root"])
        .arg("-drive")
        .arg(format!(
            "file={},if=none,id=in,format=raw,readonly=on",
            input.display()
        ))
        .args(["-device", "virtio-blk-pci,drive=in,serial=warrant-in"])
        .arg("-serial")
        .arg(format!("file:{}", console.display()))
        .arg("-serial")
        .arg(format!("file:{}", verdict.display()))
        .stdin(Stdio::null())
        .stdout(Stdio::null());
    let mut child = qemu.spawn().context("cannot start qemu-system-x86_64")?;
    let deadline = Instant::now() + BOOT_TIMEOUT;
    let timed_out = loop {
        if child.try_wait()?.is_some() {
            break false;
        }
        if Instant::now() >= deadline {
            // Our own child: kill it so no VM outlives the run.
            let _ = child.kill();
            let _ = child.wait();
            break true;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let text = fs::read_to_string(&verdict).unwrap_or_default();
    let line = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("VERDICT "))
        .map(str::to_owned);
    Ok(match (line, timed_out) {
        (Some(line), _) => line,
        (None, true) => format!("FAIL timed out after {}s", BOOT_TIMEOUT.as_secs()),
        (None, false) => "FAIL the VM stopped without a verdict".to_owned(),
    })
}

/// FNV-1a, 64 bit: a stable content hash for the cache key (std's hasher
/// may change between Rust releases).
struct Fnv(u64);

impl Default for Fnv {
    fn default() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
}

impl Fnv {
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 ^= u64::from(b);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
    }
}
