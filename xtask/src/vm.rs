//! `cargo xtask vm-test`: the checks of tests/vm/scenario in throwaway
//! Debian VMs (systemd as PID 1, no network), one verdict per kernel:
//!
//! | kernel | image                              | why                          |
//! |--------|------------------------------------|------------------------------|
//! | 5.10   | Debian 11 bullseye, systemd 247    | the oldest line warrant runs on (Debian 11; Amazon Linux 2 hosts run 5.10 too) |
//! | 6.1    | Debian 12 bookworm, systemd 252    | Debian 12's kernel           |
//! | 6.12   | Debian 12 bookworm, systemd 252    | its backport (bookworm-security) |
//!
//! Each image (tests/vm/build-image.sh) is cached under
//! `<target>/vm/image-SUITE-HASH`, HASH covering the recipe and the kernel
//! list, so it is built once and booted with snapshot=on (never written).
//! Each run packs the fresh .deb, the mock provider and the scenario into a
//! tar attached as a read-only virtio-blk disk; the guest writes one line per
//! check and its verdict on a second serial port. KVM here cannot boot stock
//! kernels, so this is TCG (see the shared VM notes): CPU bound, so the VMs
//! boot one after another unless `--jobs` says otherwise.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::Mutex,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use crate::{run_cmd, target_dir, workspace_root};

/// Debian packages the harness runs on the host (no recommends: qemu's pull
/// in a desktop stack).
const APT_PACKAGES: &[&str] = &[
    "debootstrap",
    "qemu-system-x86",
    "qemu-utils",
    "e2fsprogs",
    "binutils",
    "tar",
    // The bullseye keys, for debootstrap and the private apt lists.
    "debian-archive-keyring",
];

/// A root file system and the kernels booted on it.
struct Image {
    /// The Debian suite debootstrapped.
    suite: &'static str,
    /// Kernel lines of that suite (build-image.sh resolves each to its
    /// newest cloud kernel).
    kernels: &'static [&'static str],
}

/// The matrix, oldest kernel first (the summary keeps this order).
const IMAGES: &[Image] = &[
    Image {
        suite: "bullseye",
        kernels: &["5.10"],
    },
    Image {
        suite: "bookworm",
        kernels: &["6.1", "6.12"],
    },
];

/// The files whose content defines an image; any change rebuilds it.
const RECIPE: &[&str] = &[
    "tests/vm/build-image.sh",
    "xtask/debian-apt.sh",
    "tests/vm/guest/vmtest-boot",
    "tests/vm/guest/vmtest.service",
];
/// One boot, install and every check: a healthy run takes 5 to 15 minutes
/// under TCG, depending on how busy the host's CPUs are (Debian 11's
/// Python imports the SDK slowly). Past this the VM is killed and the
/// kernel fails.
const BOOT_TIMEOUT: Duration = Duration::from_secs(1800);
/// Memory per VM: 1 GiB is what the scenario needs with room to spare.
const VM_MEMORY_MIB: u32 = 1024;

/// One kernel to boot.
struct Boot {
    image: PathBuf,
    tag: String,
    version: String,
}

/// What one boot reported.
struct Outcome {
    tag: String,
    version: String,
    verdict: String,
    checks: Vec<String>,
    secs: f64,
    console: PathBuf,
}

pub fn run(kernel: Option<&str>, jobs: Option<usize>, images_only: bool) -> Result<()> {
    let started = Instant::now();
    if let Some(kernel) = kernel
        && !IMAGES.iter().any(|i| i.kernels.contains(&kernel))
    {
        let known: Vec<&str> = IMAGES
            .iter()
            .flat_map(|i| i.kernels.iter().copied())
            .collect();
        bail!(
            "unknown kernel {kernel}; expected one of {}",
            known.join(", ")
        );
    }
    let jobs = jobs.unwrap_or(1).max(1);
    setup()?;
    let root = workspace_root();
    let target = target_dir()?;
    let mut boots = Vec::new();
    for image in IMAGES {
        if kernel.is_some_and(|k| !image.kernels.contains(&k)) {
            continue;
        }
        let dir = ensure_image(&root, &target, image)?;
        let listed = fs::read_to_string(dir.join("kernels"))?;
        for line in listed.lines() {
            let Some((tag, version)) = line.split_once(' ') else {
                continue;
            };
            if kernel.is_some_and(|k| k != tag) {
                continue;
            }
            boots.push(Boot {
                image: dir.clone(),
                tag: tag.to_owned(),
                version: version.to_owned(),
            });
        }
    }
    if boots.is_empty() {
        bail!("no kernel matched");
    }
    if images_only {
        return Ok(());
    }
    let deb = crate::package::run()?;
    crate::package::build_release(&["--example", "mock_provider"])?;
    let runs = target.join("vm/run");
    if runs.exists() {
        fs::remove_dir_all(&runs)?;
    }
    fs::create_dir_all(&runs)?;
    let input = pack_input(&root, &deb, &runs)?;

    println!(
        "xtask vm-test: booting {} kernel(s), {jobs} at a time",
        boots.len()
    );
    let outcomes = boot_all(&boots, &input, &runs, jobs)?;
    println!(
        "== vm-test summary ({:.0}s in all)",
        started.elapsed().as_secs_f64()
    );
    let mut failed = Vec::new();
    for outcome in &outcomes {
        println!("{}", summary_line(outcome));
        if !outcome.verdict.starts_with("PASS") {
            failed.push(outcome.tag.clone());
        }
    }
    if !failed.is_empty() {
        bail!("vm-test failed on {}", failed.join(", "));
    }
    Ok(())
}

fn summary_line(outcome: &Outcome) -> String {
    format!(
        "vm-test {} ({}): {} [{:.0}s; console: {}]",
        outcome.tag,
        outcome.version,
        outcome.verdict,
        outcome.secs,
        outcome.console.display()
    )
}

/// Boots every kernel, `jobs` at a time, and returns their outcomes in the
/// order of `boots`. Each outcome is printed as soon as its VM stops.
fn boot_all(boots: &[Boot], input: &Path, runs: &Path, jobs: usize) -> Result<Vec<Outcome>> {
    let next = Mutex::new(0usize);
    let results: Mutex<Vec<Option<Result<Outcome>>>> =
        Mutex::new((0..boots.len()).map(|_| None).collect());
    std::thread::scope(|scope| {
        for _ in 0..jobs.min(boots.len()) {
            scope.spawn(|| {
                loop {
                    let index = {
                        let mut next = next.lock().unwrap_or_else(|p| p.into_inner());
                        let index = *next;
                        *next += 1;
                        index
                    };
                    let Some(boot) = boots.get(index) else {
                        return;
                    };
                    let outcome = boot_one(boot, input, runs);
                    if let Ok(outcome) = &outcome {
                        for check in &outcome.checks {
                            println!("vm-test {}: {check}", outcome.tag);
                        }
                        println!("{}", summary_line(outcome));
                    }
                    let mut results = results.lock().unwrap_or_else(|p| p.into_inner());
                    if let Some(slot) = results.get_mut(index) {
                        *slot = Some(outcome);
                    }
                }
            });
        }
    });
    let results = results.into_inner().unwrap_or_else(|p| p.into_inner());
    results
        .into_iter()
        .zip(boots)
        .map(|(result, boot)| {
            result.unwrap_or_else(|| bail!("kernel {} was never booted", boot.tag))
        })
        .collect()
}

fn boot_one(boot: &Boot, input: &Path, runs: &Path) -> Result<Outcome> {
    let dir = runs.join(&boot.tag);
    fs::create_dir_all(&dir)?;
    let started = Instant::now();
    let (verdict, checks) = qemu(&boot.image, &boot.tag, input, &dir)?;
    Ok(Outcome {
        tag: boot.tag.clone(),
        version: boot.version.clone(),
        verdict,
        checks,
        secs: started.elapsed().as_secs_f64(),
        console: dir.join("console.log"),
    })
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

/// The cache directory name of `image`: its suite and a hash of the recipe
/// and of its kernel list.
fn image_name(root: &Path, image: &Image) -> Result<String> {
    let mut hash = Fnv::default();
    for file in RECIPE {
        hash.write(file.as_bytes());
        hash.write(&fs::read(root.join(file)).with_context(|| format!("cannot read {file}"))?);
    }
    hash.write(image.suite.as_bytes());
    for kernel in image.kernels {
        hash.write(b"\0");
        hash.write(kernel.as_bytes());
    }
    Ok(format!("image-{}-{:016x}", image.suite, hash.0))
}

/// The cached image of `image`, built if missing.
fn ensure_image(root: &Path, target: &Path, image: &Image) -> Result<PathBuf> {
    let vm = target.join("vm");
    fs::create_dir_all(&vm)?;
    let name = image_name(root, image)?;
    let dir = vm.join(&name);
    if dir.join("ready").exists() {
        println!("xtask vm-test: image {name} (cached)");
        return Ok(dir);
    }
    // Images of older recipes and half-built ones are of no further use
    // (2 GiB each, sparse); the current images of the other suites stay.
    let current = IMAGES
        .iter()
        .map(|i| image_name(root, i))
        .collect::<Result<Vec<_>>>()?;
    for entry in fs::read_dir(&vm)? {
        let entry = entry?;
        let file_name = entry.file_name().to_string_lossy().into_owned();
        let stale = file_name.starts_with("image-") && !current.contains(&file_name);
        if stale || file_name == name {
            fs::remove_dir_all(entry.path())?;
        }
    }
    println!(
        "xtask vm-test: building image {name} (debootstrap {}, kernels {}; a minute or two)",
        image.suite,
        image.kernels.join(" ")
    );
    let started = Instant::now();
    run_cmd(
        Command::new("bash")
            .arg(root.join("tests/vm/build-image.sh"))
            .arg(&dir)
            .arg(image.suite)
            .args(image.kernels),
    )?;
    println!(
        "xtask vm-test: image {name} built in {:.0}s",
        started.elapsed().as_secs_f64()
    );
    Ok(dir)
}

/// The input disk: the scenario directory (driver, checks, helpers), the
/// .deb and the mock provider, as a tar.
fn pack_input(root: &Path, deb: &Path, runs: &Path) -> Result<PathBuf> {
    let stage = runs.join("input");
    fs::create_dir_all(&stage)?;
    let scenario = root.join("tests/vm/scenario");
    run_cmd(
        Command::new("cp")
            .arg("-r")
            .arg(scenario.join("."))
            .arg(&stage),
    )?;
    let deb_name = deb.file_name().context("package path has no file name")?;
    fs::copy(deb, stage.join(deb_name))?;
    let mock = crate::package::release_dir()?.join("examples/mock_provider");
    fs::copy(&mock, stage.join("mock_provider"))
        .with_context(|| format!("cannot copy {}", mock.display()))?;
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
/// (or the timeout), and returns the verdict line's text and the check lines.
fn qemu(image: &Path, tag: &str, input: &Path, dir: &Path) -> Result<(String, Vec<String>)> {
    let console = dir.join("console.log");
    let verdict = dir.join("verdict.log");
    let mut qemu = Command::new("qemu-system-x86_64");
    qemu.args(["-accel", "tcg", "-cpu", "max", "-smp", "2"])
        .arg("-m")
        .arg(VM_MEMORY_MIB.to_string())
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
        // Polling a child process: nothing to wait on but its exit.
        std::thread::sleep(Duration::from_millis(200));
    };
    let text = fs::read_to_string(&verdict).unwrap_or_default();
    let checks = text
        .lines()
        .filter_map(|l| l.trim().strip_prefix("CHECK "))
        .map(str::to_owned)
        .collect();
    let line = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("VERDICT "))
        .map(str::to_owned);
    let verdict = match (line, timed_out) {
        (Some(line), _) => line,
        (None, true) => format!("FAIL timed out after {}s", BOOT_TIMEOUT.as_secs()),
        (None, false) => "FAIL the VM stopped without a verdict".to_owned(),
    };
    Ok((verdict, checks))
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
