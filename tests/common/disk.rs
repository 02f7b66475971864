//! Data dirs on small filesystems that fail on demand (full, read-only,
//! frozen), and `stepcache serve` processes on them, for the disk fault
//! tests. Mounting needs root: tests skip, saying why, where it fails.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use stepcache::proto::metadata_store_service_client::MetadataStoreServiceClient;
use stepcache::proto::*;
use tonic::transport::Channel;

use super::on_postgres;

/// A small filesystem mounted for a sled data dir, unmounted on drop.
pub struct Mount {
    pub dir: PathBuf,
    /// The loop device under an ext4 mount (`ext4_disk`).
    pub device: Option<String>,
}

/// Runs `cmd`; whether it succeeded.
fn run(cmd: &mut Command) -> bool {
    cmd.stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
    }
}

/// A tmpfs of `mib` MiB under `root` for a sled data dir, or None, saying
/// why, where the test cannot run (on PostgreSQL; where this process may not
/// mount).
pub fn small_disk(root: &Path, mib: u32) -> Option<Mount> {
    if on_postgres("a sled data dir on a small tmpfs") {
        return None;
    }
    let dir = root.join("tmpfs");
    std::fs::create_dir_all(&dir).ok()?;
    let size = format!("size={mib}m");
    if !run(Command::new("mount")
        .args(["-t", "tmpfs", "-o", &size, "tmpfs"])
        .arg(&dir))
    {
        eprintln!("skipped: cannot mount a tmpfs here (not root?)");
        return None;
    }
    Some(Mount { dir, device: None })
}

/// An ext4 filesystem of `mib` MiB in an image file under `root`, on a loop
/// device, that turns read-only at its first error (`errors=remount-ro`);
/// or None, saying why, where the test cannot run.
pub fn ext4_disk(root: &Path, mib: u32) -> Option<Mount> {
    if on_postgres("a sled data dir on a small ext4 filesystem") {
        return None;
    }
    let image = root.join("ext4.img");
    let dir = root.join("ext4");
    std::fs::create_dir_all(&dir).ok()?;
    let made = std::fs::File::create(&image).and_then(|f| f.set_len(u64::from(mib) << 20));
    if made.is_err() || !run(Command::new("mkfs.ext4").args(["-q", "-F"]).arg(&image)) {
        eprintln!("skipped: cannot make an ext4 filesystem here (no mkfs.ext4?)");
        return None;
    }
    let mounted = run(Command::new("mount")
        .args(["-t", "ext4", "-o", "loop,errors=remount-ro"])
        .arg(&image)
        .arg(&dir));
    if !mounted {
        eprintln!("skipped: cannot mount a loop device here (not root?)");
        return None;
    }
    let source = Command::new("findmnt")
        .args(["-n", "-o", "SOURCE"])
        .arg(&dir)
        .output()
        .ok()?;
    let source = String::from_utf8_lossy(&source.stdout).trim().to_string();
    let device = source.rsplit('/').next().map(str::to_string);
    Some(Mount { dir, device })
}

impl Mount {
    /// Makes the ext4 filesystem fail as a disk error would: the kernel
    /// remounts it read-only (`errors=remount-ro`). False where the kernel
    /// offers no way to (no `trigger_fs_error`).
    pub fn fail_read_only(&self) -> bool {
        let Some(dev) = &self.device else {
            return false;
        };
        std::fs::write(
            format!("/sys/fs/ext4/{dev}/trigger_fs_error"),
            "stepcache test",
        )
        .is_ok()
    }

    /// Freezes the filesystem (`fsfreeze`): every write into it waits until
    /// the returned guard drops. None where it cannot be frozen.
    pub fn freeze(&self) -> Option<Frozen<'_>> {
        run(Command::new("fsfreeze").arg("-f").arg(&self.dir)).then_some(Frozen(self))
    }
}

/// A frozen filesystem, thawed on drop.
pub struct Frozen<'a>(&'a Mount);

impl Drop for Frozen<'_> {
    fn drop(&mut self) {
        let _ = Command::new("fsfreeze").arg("-u").arg(&self.0.dir).status();
    }
}

/// A server process, killed when dropped (as an operator restarts a server
/// whose disk failed), and where it serves its metrics.
pub struct Server(pub Child, pub std::net::SocketAddr);

impl Server {
    /// The value of metric `name` (its whole name, as exposed).
    pub async fn metric(&self, name: &str) -> f64 {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(self.1).await.unwrap();
        s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").await.unwrap();
        let mut text = String::new();
        s.read_to_string(&mut text).await.unwrap();
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in {text}"))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `stepcache serve` on `dir`, and a channel to it.
pub async fn serve(dir: &Path) -> (Server, Channel) {
    // The log goes next to the tmpfs, not into it.
    let log = dir.parent().unwrap().with_extension("log");
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    match try_serve(dir, log).await {
        Ok(up) => up,
        Err(status) => panic!("the server did not come up: {status}"),
    }
}

/// `stepcache serve` on `dir` with its log to `log`; the exit status when it
/// stops before it answers.
pub async fn try_serve(
    dir: &Path,
    log: std::fs::File,
) -> Result<(Server, Channel), std::process::ExitStatus> {
    let free = || {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
    };
    let (port, metrics) = (free().port(), free());
    let server = Server(
        Command::new(env!("CARGO_BIN_EXE_stepcache"))
            .args([
                "serve",
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--metrics-listen",
                &metrics.to_string(),
                "--data-dir",
            ])
            .arg(dir)
            .env("RUST_LOG", "info")
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap(),
        metrics,
    );
    let mut server = server;
    for _ in 0..1000 {
        if let Ok(c) = Channel::from_shared(format!("http://127.0.0.1:{port}"))
            .unwrap()
            .connect()
            .await
        {
            return Ok((server, c));
        }
        if let Ok(Some(status)) = server.0.try_wait() {
            return Err(status);
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    panic!("the server did not come up");
}

pub async fn health_status(channel: &Channel) -> i32 {
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
    health
        .check(tonic_health::pb::HealthCheckRequest::default())
        .await
        .unwrap()
        .into_inner()
        .status
}

pub const SERVING: i32 = 1;
pub const NOT_SERVING: i32 = 2;

/// Polls health (checked by the server every 2 s) until it says `want`.
pub async fn wait_health(channel: &Channel, want: i32) {
    let mut status = health_status(channel).await;
    for _ in 0..600 {
        if status == want {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        status = health_status(channel).await;
    }
    assert_eq!(status, want, "health status");
}

/// Every execution of namespace `ns`, by ListExecutions.
pub async fn list_all(meta: &mut MetadataStoreServiceClient<Channel>, ns: &str) -> Vec<Execution> {
    let mut listed = Vec::new();
    let mut token = String::new();
    loop {
        let page = meta
            .list_executions(ListExecutionsRequest {
                namespace: ns.into(),
                page_size: 20,
                page_token: token,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        listed.extend(page.executions);
        token = page.next_page_token;
        if token.is_empty() {
            return listed;
        }
    }
}
