//! Draining the ring buffer on a thread of its own, so the consumer's slow work never stalls it.
//!
//! Whoever applies events also commits stores, writes keyframes and reads files back; a reader
//! doing that work inline stops emptying the ring meanwhile, and a fast writer then overruns it
//! (60k x 4 KiB writes lost 7k records that way; drained apart, none).

use crate::event::{Change, Event};
use crate::probe::{CaptureError, RingReader};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

/// The kernel wakes the reader only past a data threshold; this bounds the latency below it.
const POLL_EVERY: Duration = Duration::from_millis(20);
/// Decoded events travel to the consumer in batches of about this many bytes...
const BATCH_BYTES: usize = 1 << 20;
/// ...and at most this many batches wait: past that the drain thread stops draining, so a
/// consumer that cannot keep up fills the ring (records lost there are counted by the kernel,
/// and healed by reading files back) rather than this process's memory.
const QUEUED_BATCHES: usize = 32;

enum Message {
    Batch(Vec<Event>),
    /// Every record that was in the ring when catch-up `n` was asked for has been sent.
    CaughtUp(u64),
    /// Something outside the ring happened (see [`Nudger`]): the consumer should look.
    Nudge,
}

/// Wakes a consumer waiting in [`RingDrain::next`] from another thread, as if its wait had
/// timed out: for events that do not come through the ring, such as the recorded command's
/// exit, which a consumer would otherwise notice only at its next timeout.
#[derive(Clone)]
pub struct Nudger {
    wake: Arc<Wake>,
    nudged: Arc<AtomicBool>,
}

impl Nudger {
    /// Makes the consumer's current (or next) wait return.
    pub fn nudge(&self) {
        self.nudged.store(true, Ordering::Release);
        self.wake.signal();
    }
}

/// An eventfd the consumer signals when it asks the drain thread for something (a catch-up, the
/// end), so the answer comes at once rather than at the thread's next poll: a `record -- true`
/// spent up to 60 ms in those polls, and every container's end in the agent up to 40 ms.
struct Wake(OwnedFd);

impl Wake {
    fn new() -> Result<Wake, CaptureError> {
        // SAFETY: eventfd has no preconditions; a valid descriptor is owned from here on.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(CaptureError::DrainThread(std::io::Error::last_os_error()));
        }
        Ok(Wake(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    fn signal(&self) {
        let one = 1u64;
        // SAFETY: an 8-byte write from a live u64 to our own eventfd; it cannot fail but by
        // overflowing the counter, which still leaves it readable.
        unsafe { libc::write(self.0.as_raw_fd(), (&one as *const u64).cast(), 8) };
    }

    fn clear(&self) {
        let mut count = 0u64;
        // SAFETY: an 8-byte read into a live u64; EAGAIN (not signalled) is fine.
        unsafe { libc::read(self.0.as_raw_fd(), (&mut count as *mut u64).cast(), 8) };
    }
}

/// The ring's reading end, drained on its own thread into a bounded queue of event batches.
///
/// Batches come in ring order. Ending it with [`RingDrain::finish`] hands over what is left,
/// so nothing the kernel recorded before that call is lost.
pub struct RingDrain {
    rx: Receiver<Message>,
    stop: Arc<AtomicBool>,
    /// Catch-ups asked for so far (see [`RingDrain::catch_up`]).
    asked: Arc<AtomicU64>,
    wake: Arc<Wake>,
    /// None once joined: after a failure was reported, or by `finish`.
    handle: Option<JoinHandle<Result<(), CaptureError>>>,
    /// The most record bytes one drain pass found waiting since [`RingDrain::take_peak_bytes`]:
    /// how full the ring got (a pass empties what waited when it began, and a little more).
    peak: Arc<AtomicU64>,
    /// Set by a [`Nudger`]; the drain thread answers with a [`Message::Nudge`].
    nudged: Arc<AtomicBool>,
}

impl RingDrain {
    /// Starts draining `reader` (from [`crate::Probe::take_reader`]).
    pub fn start(reader: RingReader) -> Result<RingDrain, CaptureError> {
        let (tx, rx) = mpsc::sync_channel(QUEUED_BATCHES);
        let stop = Arc::new(AtomicBool::new(false));
        let asked = Arc::new(AtomicU64::new(0));
        let peak = Arc::new(AtomicU64::new(0));
        let wake = Arc::new(Wake::new()?);
        let nudged = Arc::new(AtomicBool::new(false));
        let handle = {
            let (stop, asked, peak) = (stop.clone(), asked.clone(), peak.clone());
            let (wake, nudged) = (wake.clone(), nudged.clone());
            std::thread::Builder::new()
                .name("dk-ring".into())
                .spawn(move || drain_loop(reader, &tx, &stop, &asked, &peak, &wake, &nudged))
                .map_err(CaptureError::DrainThread)?
        };
        Ok(RingDrain {
            rx,
            stop,
            asked,
            wake,
            handle: Some(handle),
            peak,
            nudged,
        })
    }

    /// A handle another thread can wake this drain's consumer with.
    pub fn nudger(&self) -> Nudger {
        Nudger {
            wake: self.wake.clone(),
            nudged: self.nudged.clone(),
        }
    }

    /// The most record bytes one drain pass found in the ring since the last call.
    pub fn take_peak_bytes(&self) -> u64 {
        self.peak.swap(0, Ordering::AcqRel)
    }

    /// The next batch, or None if none comes within `timeout`. An error means the drain thread
    /// ended on its own (the ring could not be waited on): its own error comes once, later
    /// calls get [`CaptureError::DrainStopped`] at once, and no more events come.
    pub fn next(&mut self, timeout: Duration) -> Result<Option<Vec<Event>>, CaptureError> {
        loop {
            match self.rx.recv_timeout(timeout) {
                Ok(Message::Batch(events)) => return Ok(Some(events)),
                // Left from a catch-up that already returned: nobody waits for it.
                Ok(Message::CaughtUp(_)) => continue,
                Ok(Message::Nudge) | Err(RecvTimeoutError::Timeout) => return Ok(None),
                Err(RecvTimeoutError::Disconnected) => return Err(self.failure()),
            }
        }
    }

    /// Every batch not taken yet, up to and including what the ring holds at this moment: the
    /// drain thread drains once more after the call and reports back. For when something has
    /// ended (a container's processes, say) and its last records must be read before it is let
    /// go. Takes one drain pass, longer while the ring is busy.
    pub fn catch_up(&mut self) -> Result<Vec<Vec<Event>>, CaptureError> {
        let wanted = self.asked.fetch_add(1, Ordering::AcqRel) + 1;
        self.wake.signal();
        let mut batches = Vec::new();
        loop {
            match self.rx.recv() {
                Ok(Message::Batch(events)) => batches.push(events),
                Ok(Message::CaughtUp(n)) if n >= wanted => return Ok(batches),
                Ok(Message::CaughtUp(_)) | Ok(Message::Nudge) => {}
                Err(_) => return Err(self.failure()),
            }
        }
    }

    /// Stops the thread after one last drain and returns every batch not taken yet.
    pub fn finish(mut self) -> Result<Vec<Vec<Event>>, CaptureError> {
        self.stop.store(true, Ordering::Release);
        self.wake.signal();
        let rest = self
            .rx
            .iter()
            .filter_map(|m| match m {
                Message::Batch(events) => Some(events),
                Message::CaughtUp(_) | Message::Nudge => None,
            })
            .collect();
        match self.handle.take() {
            Some(handle) => join(handle)?,
            None => return Err(CaptureError::DrainStopped),
        }
        Ok(rest)
    }

    /// Why the thread ended before it was told to (it does so only on an error).
    fn failure(&mut self) -> CaptureError {
        let Some(handle) = self.handle.take() else {
            return CaptureError::DrainStopped;
        };
        match join(handle) {
            Err(e) => e,
            Ok(()) => CaptureError::DrainStopped,
        }
    }
}

impl Drop for RingDrain {
    /// An owner that returns early (an error of its own) would otherwise leave the thread
    /// polling an idle ring forever: it only notices a gone consumer when it has events to send.
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        self.wake.signal();
    }
}

fn join(handle: JoinHandle<Result<(), CaptureError>>) -> Result<(), CaptureError> {
    handle.join().map_err(|_| CaptureError::DrainStopped)?
}

fn drain_loop(
    mut reader: RingReader,
    tx: &SyncSender<Message>,
    stop: &AtomicBool,
    asked: &AtomicU64,
    peak: &AtomicU64,
    wake: &Wake,
    nudged: &AtomicBool,
) -> Result<(), CaptureError> {
    tracing::debug!("draining the ring buffer on its own thread");
    let mut answered = 0u64;
    let mut events = Vec::new();
    let mut bytes = 0usize;
    let mut gone = false;
    loop {
        // The consumer reports this error (from `next`, `catch_up` or `finish`).
        reader.wait(POLL_EVERY, Some(wake.0.as_fd()))?;
        // Cleared before the requests are read, so a request made after this is either seen
        // below or leaves the eventfd set for the next wait: never slept through.
        wake.clear();
        // Both read after the wait and before draining: a stop or a catch-up seen here was
        // asked for after whatever it concerns reached the ring, so this drain covers it.
        let last = stop.load(Ordering::Acquire);
        let catching_up = asked.load(Ordering::Acquire);
        let before = reader.drained_bytes();
        reader.drain(|ev| {
            bytes += event_bytes(&ev);
            events.push(ev);
            if bytes >= BATCH_BYTES && !gone {
                gone = tx
                    .send(Message::Batch(std::mem::take(&mut events)))
                    .is_err();
                bytes = 0;
            }
        });
        peak.fetch_max(reader.drained_bytes() - before, Ordering::AcqRel);
        if !events.is_empty() && !gone {
            gone = tx
                .send(Message::Batch(std::mem::take(&mut events)))
                .is_err();
            bytes = 0;
        }
        if catching_up > answered && !gone {
            gone = tx.send(Message::CaughtUp(catching_up)).is_err();
            answered = catching_up;
        }
        // After the batches, so the consumer that looks has what came before the nudge.
        if nudged.swap(false, Ordering::AcqRel) && !gone {
            gone = tx.send(Message::Nudge).is_err();
        }
        // A consumer that went away (an error there) wants nothing more.
        if last || gone {
            if reader.malformed() > 0 {
                tracing::warn!(
                    records = reader.malformed(),
                    "capture records could not be decoded"
                );
            }
            tracing::debug!(consumer_gone = gone, "ring buffer drain ended");
            return Ok(());
        }
    }
}

/// About what an event holds in memory.
fn event_bytes(ev: &Event) -> usize {
    let data = match &ev.change {
        Change::Write { data, .. } => data.len(),
        Change::Inode { path, .. } | Change::Meta { path, .. } => path.len(),
        Change::SetXattr {
            path, name, value, ..
        } => path.len() + name.len() + value.len(),
        Change::Chown { path, .. } | Change::SetTimes { path, .. } => path.len(),
        Change::RemoveXattr { path, name, .. } => path.len() + name.len(),
        Change::Rename { from, to, .. } => from.len() + to.len(),
        Change::Symlink { path, target } => path.len() + target.len(),
        Change::Link { existing, new } => existing.len() + new.len(),
        Change::Unlink { path }
        | Change::Rmdir { path }
        | Change::Mkdir { path, .. }
        | Change::Chmod { path, .. }
        | Change::Truncate { path, .. } => path.len(),
        _ => 0,
    };
    data + std::mem::size_of::<Event>()
}

#[cfg(test)]
mod tests {
    //! On the real kernel (root and BTF needed; without them these fail, they do not skip).

    use super::*;
    use crate::probe::{Probe, ProbeConfig};
    use crate::AttachPoint;
    use std::io::Write;
    use std::os::unix::fs::MetadataExt;
    use std::os::unix::process::CommandExt;
    use std::path::{Path, PathBuf};

    fn cgroup2_mount() -> PathBuf {
        let mounts = diffkeeper_locate::mountinfo::read_mountinfo(None).unwrap();
        diffkeeper_locate::mountinfo::cgroup2_mount(&mounts)
            .expect("a cgroup2 mount")
            .to_path_buf()
    }

    /// Runs `script` in `cgroup` to its end.
    fn run_in(cgroup: &Path, script: &str) {
        assert!(wait_success(spawn_in(cgroup, script, None)));
    }

    fn written(batches: Vec<Vec<Event>>) -> Vec<Vec<u8>> {
        batches
            .into_iter()
            .flatten()
            .filter_map(|ev| match ev.change {
                Change::Write { data, .. } => Some(data),
                _ => None,
            })
            .collect()
    }

    fn pin_to(cpu: usize) -> std::io::Result<()> {
        // SAFETY: a cpu_set_t on the stack, for the calling thread only.
        unsafe {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            libc::CPU_SET(cpu, &mut set);
            if libc::sched_setaffinity(0, std::mem::size_of_val(&set), &set) != 0 {
                return Err(std::io::Error::last_os_error());
            }
        }
        Ok(())
    }

    /// The kernel keeps each CPU's last filter verdict (filter_cache): a change of the recorded
    /// set must expire it at once. A shell in the cgroup, pinned to CPU 1 while this thread
    /// works on CPU 0, writes while recorded, then waits while the cgroup is forgotten, and
    /// writes again; then it is recorded again and writes a third time. Without the
    /// generation the second write would be taken from CPU 1's stale verdict, and the third
    /// lost to the one after it.
    #[test]
    fn the_filter_follows_changes_of_the_recorded_set_at_both_attach_points() {
        assert!(
            std::thread::available_parallelism().unwrap().get() >= 2,
            "this test needs two CPUs to keep a verdict on one while the other changes the set"
        );
        pin_to(0).unwrap();
        for point in [AttachPoint::RawSyscalls, AttachPoint::SyscallTracepoints] {
            let pid = std::process::id();
            let name = format!("dk-filter-test-{pid}-{point}");
            let cgroup = cgroup2_mount().join(&name);
            let dir = std::env::temp_dir().join(&name);
            std::fs::create_dir(&cgroup).unwrap();
            std::fs::create_dir(&dir).unwrap();
            let config = ProbeConfig {
                attach: Some(point),
                ..ProbeConfig::default()
            };
            let mut probe = Probe::load(&config).unwrap();
            assert_eq!(probe.attach_point(), point);
            let id = std::fs::metadata(&cgroup).unwrap().ino();
            probe.record_cgroup(id, 1).unwrap();
            let drain = RingDrain::start(probe.take_reader().unwrap()).unwrap();

            let d = dir.display();
            let script = format!(
                "echo one > {d}/a; : > {d}/waiting; while [ ! -e {d}/go ]; do :; done; \
                 echo two > {d}/b"
            );
            let shell = spawn_in(&cgroup, &script, Some(1));
            let waiting = dir.join("waiting");
            while !waiting.exists() {
                std::thread::sleep(Duration::from_millis(5));
            }
            probe.forget_cgroup(id).unwrap();
            std::fs::write(dir.join("go"), b"").unwrap();
            assert!(wait_success(shell));
            probe.record_cgroup(id, 1).unwrap();
            assert!(wait_success(spawn_in(
                &cgroup,
                &format!("echo three > {d}/c"),
                Some(1)
            )));
            let seen = written(drain.finish().unwrap());

            drop(probe);
            let _ = std::fs::remove_dir_all(&dir);
            let _ = std::fs::remove_dir(&cgroup);
            assert_eq!(
                seen,
                [b"one\n".to_vec(), b"three\n".to_vec()],
                "at the {point} attach point"
            );
        }
    }

    /// Starts `script` in `cgroup`, pinned to `cpu` if given.
    fn spawn_in(cgroup: &Path, script: &str, cpu: Option<usize>) -> std::process::Child {
        let procs = cgroup.join("cgroup.procs");
        let mut cmd = std::process::Command::new("sh");
        cmd.arg("-c").arg(script);
        // SAFETY: opens and writes a file and sets the affinity, nothing that needs the
        // parent's locks.
        unsafe {
            cmd.pre_exec(move || {
                if let Some(cpu) = cpu {
                    pin_to(cpu)?;
                }
                std::fs::OpenOptions::new()
                    .write(true)
                    .open(&procs)?
                    .write_all(b"0")
            });
        }
        cmd.spawn().unwrap()
    }

    fn wait_success(mut child: std::process::Child) -> bool {
        child.wait().unwrap().success()
    }

    #[test]
    fn catch_up_and_finish_hand_over_everything_already_in_the_ring() {
        let pid = std::process::id();
        let cgroup = cgroup2_mount().join(format!("dk-drain-test-{pid}"));
        let dir = std::env::temp_dir().join(format!("dk-drain-test-{pid}"));
        std::fs::create_dir(&cgroup).unwrap();
        std::fs::create_dir(&dir).unwrap();
        let mut probe = Probe::load(&ProbeConfig::default()).unwrap();
        probe
            .record_cgroup(std::fs::metadata(&cgroup).unwrap().ino(), 1)
            .unwrap();
        let mut drain = RingDrain::start(probe.take_reader().unwrap()).unwrap();

        let d = dir.display();
        run_in(&cgroup, &format!("echo one > {d}/a; echo two > {d}/b"));
        let first = written(drain.catch_up().unwrap());
        run_in(&cgroup, &format!("echo three > {d}/a"));
        let second = written(drain.finish().unwrap());

        drop(probe);
        let _ = std::fs::remove_dir_all(&dir);
        let _ = std::fs::remove_dir(&cgroup);
        assert_eq!(first, [b"one\n".to_vec(), b"two\n".to_vec()]);
        assert_eq!(second, [b"three\n".to_vec()]);
    }
}
