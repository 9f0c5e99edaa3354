//! Reading a recording from another process while its recorder still writes it.
//!
//! sled admits one process per database and the dir's flock one process per recording, so a
//! reader in another process can neither open a live recording's index nor copy its files
//! safely (sled rewrites them in place). The recorder answers on `DIR/live.sock` instead: a
//! reader asks, the recorder streams its index as it stands, and the reader loads that into a
//! private database and reads the segments in place, exactly as it reads a finished recording.
//!
//! The copy is one consistent moment without stopping the writer: the recorder reads its
//! committed seq *before* streaming, and the reader's horizon is that seq. Everything a reader
//! looks at below its horizon is written before the horizon moves past it and never rewritten
//! (the same guarantee `Writer::reader` gives a reader in the recorder's own process), and the
//! segment bytes it points to were written before the index that names them.

use crate::codec;
use crate::error::StoreError;
use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;
use tracing::{debug, warn};

/// The socket a live recorder serves its index on, in its state dir.
pub const LIVE_SOCKET: &str = "live.sock";

/// Bumped when the messages change: a reader and a recorder of different builds then say so
/// instead of misreading each other.
const PROTOCOL: u32 = 1;
/// Index records per message: large enough to amortize framing, small enough to bound memory.
const PAIRS_PER_FRAME: usize = 4096;
/// Neither side waits longer than this for the other: a stuck reader must not stall the
/// recorder's server, nor a stuck recorder the reader.
const IO_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest message accepted, against a peer sending garbage.
const MAX_FRAME: u32 = 256 << 20;
/// `sun_path` holds 108 bytes; longer socket paths are reached through /proc/self/fd.
const MAX_SOCKET_PATH: usize = 100;

#[derive(Serialize, Deserialize, Debug)]
enum Request {
    /// The whole index as committed now.
    Snapshot { protocol: u32 },
    /// Only the committed seq: lets a reader that follows the recording skip copying an index
    /// that has not moved.
    Committed { protocol: u32 },
}

#[derive(Serialize, Deserialize, Debug)]
enum Reply {
    Pairs(Vec<(ByteBuf, ByteBuf)>),
    /// The end of a snapshot. `moved`: commits landed while it was streamed, so the recording's
    /// end marker (if any arrived) lies beyond the reader's horizon.
    End {
        committed: u64,
        moved: bool,
        pid: u32,
    },
    Committed {
        committed: u64,
        pid: u32,
    },
    Refused(String),
}

/// Serves a live recording's index to readers in other processes until dropped.
#[derive(Debug)]
pub struct LiveServer {
    dir: PathBuf,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl LiveServer {
    /// Listens on `dir/live.sock` (replacing one a killed recorder left) for readers of `db`.
    /// Only root and the recorder's own user may connect: the index names every file the
    /// workload touched. The socket is the owner's alone (0600) and each peer's credentials are
    /// checked as well, in case the dir was made reachable to others.
    /// `lease` keeps the writer from letting go of `db` while this serves (see `Writer::rest`).
    pub(crate) fn start(
        dir: &Path,
        db: sled::Db,
        lease: Arc<()>,
    ) -> Result<LiveServer, StoreError> {
        let path = dir.join(LIVE_SOCKET);
        match std::fs::remove_file(&path) {
            Ok(()) => debug!(path = %path.display(), "removed a stale live socket"),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e.into()),
        }
        let listener = at_socket(dir, |p| UnixListener::bind(p))?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let stop = stop.clone();
            std::thread::Builder::new()
                .name("live-reads".into())
                .spawn(move || {
                    let _lease = lease;
                    serve(listener, &db, &stop)
                })?
        };
        Ok(LiveServer {
            dir: dir.to_path_buf(),
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for LiveServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept: the thread then sees `stop` and returns.
        let _ = at_socket(&self.dir, |p| UnixStream::connect(p));
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        let _ = std::fs::remove_file(self.dir.join(LIVE_SOCKET));
    }
}

/// Answers readers one at a time: a snapshot of a small index takes milliseconds, and one at a
/// time bounds what readers can take from the recorder.
fn serve(listener: UnixListener, db: &sled::Db, stop: &AtomicBool) {
    for stream in listener.incoming() {
        if stop.load(Ordering::SeqCst) {
            return;
        }
        let stream = match stream {
            Ok(stream) => stream,
            Err(e) => {
                warn!(error = %e, "accepting a reader of the live recording");
                continue;
            }
        };
        if let Err(e) = answer(stream, db) {
            debug!(error = %e, "a reader of the live recording went away");
        }
    }
}

fn answer(mut stream: UnixStream, db: &sled::Db) -> io::Result<()> {
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    // The request is read first even from a peer that is refused, so that it gets the reason
    // rather than a broken pipe.
    let request: Request = receive(&mut stream)?;
    if let Some(refusal) = refuse_peer(&stream)? {
        return send(&mut stream, &Reply::Refused(refusal));
    }
    let pid = std::process::id();
    match request {
        Request::Snapshot { protocol } | Request::Committed { protocol }
            if protocol != PROTOCOL =>
        {
            send(
                &mut stream,
                &Reply::Refused(format!(
                    "the recorder (pid {pid}) speaks live-read protocol {PROTOCOL}, this \
                     diffkeeper {protocol}: use the same diffkeeper build for both"
                )),
            )
        }
        Request::Committed { .. } => {
            let committed = committed(db).map_err(io::Error::other)?;
            send(&mut stream, &Reply::Committed { committed, pid })
        }
        Request::Snapshot { .. } => {
            let before = committed(db).map_err(io::Error::other)?;
            let mut pairs = Vec::with_capacity(PAIRS_PER_FRAME);
            for item in db.iter() {
                let (key, value) = item.map_err(io::Error::other)?;
                pairs.push((ByteBuf::from(key.to_vec()), ByteBuf::from(value.to_vec())));
                if pairs.len() == PAIRS_PER_FRAME {
                    send(&mut stream, &Reply::Pairs(std::mem::take(&mut pairs)))?;
                }
            }
            if !pairs.is_empty() {
                send(&mut stream, &Reply::Pairs(pairs))?;
            }
            let after = committed(db).map_err(io::Error::other)?;
            send(
                &mut stream,
                &Reply::End {
                    committed: before,
                    moved: after != before,
                    pid,
                },
            )
        }
    }
}

/// Why the peer may not read, if it may not: it must be root or the recorder's own user.
fn refuse_peer(stream: &UnixStream) -> io::Result<Option<String>> {
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: `cred` and `len` are valid for writes of the sizes passed, and the descriptor is
    // open for the call.
    let rc = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: geteuid has no preconditions.
    let own = unsafe { libc::geteuid() };
    Ok((cred.uid != 0 && cred.uid != own).then(|| {
        format!(
            "uid {} may not read this live recording: only root and uid {own}, who records it, \
             may",
            cred.uid
        )
    }))
}

fn committed(db: &sled::Db) -> Result<u64, StoreError> {
    db.get(codec::META_COMMITTED)?
        .map_or(Ok(0), |raw| codec::decode_u64("the committed seq", &raw))
}

/// What a reader got from a live recorder: its index as committed at one moment, in a private
/// database.
pub(crate) struct Snapshot {
    pub(crate) copy: tempfile::TempDir,
    pub(crate) db: sled::Db,
    pub(crate) pid: u32,
}

/// Asks the recorder of `dir` for its index. `None` when no recorder answers there (none ever
/// served it, or it is gone or finishing): the caller's own error, the lock's, then stands.
pub(crate) fn snapshot(dir: &Path, cache_bytes: u64) -> Result<Option<Snapshot>, StoreError> {
    let Some(mut stream) = connect(dir)? else {
        return Ok(None);
    };
    let failed = |e: io::Error| live_error(dir, e.to_string());
    send(&mut stream, &Request::Snapshot { protocol: PROTOCOL }).map_err(failed)?;
    let copy = tempfile::Builder::new()
        .prefix("diffkeeper-live-")
        .tempdir()?;
    let db = crate::open_db(copy.path(), cache_bytes)?;
    loop {
        match receive(&mut stream).map_err(failed)? {
            Reply::Pairs(pairs) => {
                // One insert at a time: sled loads this faster than in batches (1.5 s against
                // 2.4 s for 200,000 keys here), and the copy needs no atomicity.
                for (key, value) in pairs {
                    db.insert(key.into_vec(), value.into_vec())?;
                }
            }
            Reply::End {
                committed,
                moved,
                pid,
            } => {
                db.insert(codec::META_COMMITTED, &codec::u64_value(committed))?;
                if moved {
                    db.remove(codec::META_END)?;
                }
                return Ok(Some(Snapshot { copy, db, pid }));
            }
            Reply::Refused(why) => return Err(live_error(dir, why)),
            other => {
                return Err(live_error(
                    dir,
                    format!("the recorder sent {other:?} in the middle of its index"),
                ))
            }
        }
    }
}

/// The committed seq of the live recording in `dir` and its recorder's pid, or `None` when no
/// recorder answers there.
pub(crate) fn committed_seq(dir: &Path) -> Result<Option<(u64, u32)>, StoreError> {
    let Some(mut stream) = connect(dir)? else {
        return Ok(None);
    };
    let failed = |e: io::Error| live_error(dir, e.to_string());
    send(&mut stream, &Request::Committed { protocol: PROTOCOL }).map_err(failed)?;
    match receive(&mut stream).map_err(failed)? {
        Reply::Committed { committed, pid } => Ok(Some((committed, pid))),
        Reply::Refused(why) => Err(live_error(dir, why)),
        other => Err(live_error(
            dir,
            format!("the recorder answered {other:?} to a question of its committed seq"),
        )),
    }
}

fn connect(dir: &Path) -> Result<Option<UnixStream>, StoreError> {
    match at_socket(dir, |p| UnixStream::connect(p)) {
        Ok(stream) => {
            stream.set_read_timeout(Some(IO_TIMEOUT))?;
            stream.set_write_timeout(Some(IO_TIMEOUT))?;
            Ok(Some(stream))
        }
        // No socket, or one a dead recorder left.
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused
            ) =>
        {
            Ok(None)
        }
        Err(e) => Err(live_error(dir, e.to_string())),
    }
}

fn live_error(dir: &Path, reason: String) -> StoreError {
    StoreError::Live {
        dir: dir.to_path_buf(),
        reason,
    }
}

/// Runs `f` on a path that reaches `dir/live.sock`: the path itself when it fits a socket
/// address, else the same name through a descriptor of `dir` (the kernel resolves
/// /proc/self/fd/N to the directory).
fn at_socket<T>(dir: &Path, f: impl FnOnce(&Path) -> io::Result<T>) -> io::Result<T> {
    let path = dir.join(LIVE_SOCKET);
    if path.as_os_str().len() <= MAX_SOCKET_PATH {
        return f(&path);
    }
    let handle = std::fs::File::open(dir)?;
    f(&Path::new(&format!("/proc/self/fd/{}", handle.as_raw_fd())).join(LIVE_SOCKET))
}

fn send<T: Serialize>(stream: &mut UnixStream, message: &T) -> io::Result<()> {
    let body = bincode::serialize(message).map_err(io::Error::other)?;
    let len = u32::try_from(body.len()).map_err(io::Error::other)?;
    stream.write_all(&len.to_le_bytes())?;
    stream.write_all(&body)
}

fn receive<T: for<'de> Deserialize<'de>>(stream: &mut UnixStream) -> io::Result<T> {
    let mut len = [0u8; 4];
    stream.read_exact(&mut len)?;
    let len = u32::from_le_bytes(len);
    if len > MAX_FRAME {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("a {len}-byte message is more than any live reader sends"),
        ));
    }
    let mut body = vec![0; len as usize];
    stream.read_exact(&mut body)?;
    bincode::deserialize(&body).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}
