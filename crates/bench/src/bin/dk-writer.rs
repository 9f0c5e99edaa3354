//! dk-writer: the workload programs the benchmarks time (plain write loops, logs, config saves, trees).
//!
//! `dk-writer COUNT SIZE FILE [--append] [--text|--vary] [--rate N]`: COUNT write(2) calls of SIZE bytes;
//! the loop alone is timed (so a recorder's start-up is not), and `ns_per_write=…` printed.
//! `dk-writer --getppid COUNT`: COUNT getppid(2) calls, a syscall DiffKeeper does not hook, the
//! loop timed and `ns_per_call=…` printed: what every other syscall of a node pays.
//! `dk-writer --config SAVES FILE`: atomic saves (write tmp, rename) of a ~4 KiB config that
//! changes a few bytes each time. `dk-writer --tree FILES BYTES DIR`: a tree of FILES files, BYTES
//! in total, then a `MIDDLE` marker, then a second phase rewriting a tenth of them.

use anyhow::{bail, Context, Result};
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("--config") if args.len() == 3 => config(args[1].parse()?, Path::new(&args[2])),
        Some("--getppid") if args.len() == 2 => getppid(args[1].parse()?),
        Some("--tree") if args.len() == 4 => {
            tree(args[1].parse()?, args[2].parse()?, Path::new(&args[3]))
        }
        Some(_) if args.len() >= 3 => writes(&args),
        _ => bail!(
            "usage: dk-writer COUNT SIZE FILE [--append] [--text|--vary] [--rate N] | --getppid COUNT \
             | --config SAVES FILE \
             | --tree FILES BYTES DIR"
        ),
    }
}

/// xorshift64*: fast, deterministic filler.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    /// Printable, moderately compressible bytes (like source, logs or JSON).
    fn fill_text(&mut self, buf: &mut [u8]) {
        const ALPHA: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789 _=:{}\n";
        for chunk in buf.chunks_mut(8) {
            let r = self.next();
            for (i, b) in chunk.iter_mut().enumerate() {
                *b = ALPHA[((r >> (i * 8)) & 0xff) as usize % ALPHA.len()];
            }
        }
    }
}

/// A 4 KiB block of log lines, numbered from `line`.
fn log_block(buf: &mut [u8], line: &mut u64, rng: &mut Rng) {
    let mut s = String::with_capacity(buf.len() + 200);
    while s.len() < buf.len() {
        let r = rng.next();
        *line += 1;
        s.push_str(&format!(
            "2025-06-01T12:{:02}:{:02}.{:03}Z INFO http request id={} method=GET path=/api/v1/items/{} \
             status=200 latency_ms={} bytes={}\n",
            (*line / 60) % 60,
            *line % 60,
            r % 1000,
            *line,
            r % 10_000,
            (r >> 16) % 500,
            (r >> 32) % 100_000
        ));
    }
    buf.copy_from_slice(&s.as_bytes()[..buf.len()]);
    buf[buf.len() - 1] = b'\n';
}

fn getppid(count: u64) -> Result<()> {
    let t = Instant::now();
    for _ in 0..count {
        // SAFETY: getppid takes no arguments and cannot fail.
        unsafe { libc::syscall(libc::SYS_getppid) };
    }
    let secs = t.elapsed().as_secs_f64();
    println!(
        "ns_per_call={:.1} calls={count} secs={secs:.6}",
        secs * 1e9 / count as f64
    );
    Ok(())
}

fn writes(args: &[String]) -> Result<()> {
    let count: u64 = args[0].parse().context("COUNT")?;
    let size: usize = args[1].parse().context("SIZE")?;
    let path = PathBuf::from(&args[2]);
    let mut append = false;
    let mut text = false;
    let mut vary = false;
    let mut rate = 0u64;
    let mut rest = args[3..].iter();
    while let Some(a) = rest.next() {
        match a.as_str() {
            "--append" => append = true,
            "--text" => text = true,
            "--vary" => vary = true,
            "--rate" => rate = rest.next().context("--rate N")?.parse()?,
            other => bail!("unknown flag {other}"),
        }
    }
    let mut opts = OpenOptions::new();
    opts.create(true).write(true);
    if append {
        opts.append(true);
    } else {
        opts.truncate(true);
    }
    let file = opts
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    let fd = file.as_raw_fd();
    let mut buf = vec![b'x'; size];
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let mut line = 0u64;
    let start = Instant::now();
    for i in 0..count {
        if text {
            log_block(&mut buf, &mut line, &mut rng);
        } else if vary && size >= 8 {
            buf[..8].copy_from_slice(&i.to_le_bytes());
        }
        let n = unsafe { libc::write(fd, buf.as_ptr().cast(), size) };
        if n != size as isize {
            bail!("write {i}: {}", std::io::Error::last_os_error());
        }
        if rate > 0 && i % 256 == 255 {
            let due = Duration::from_secs_f64((i + 1) as f64 / rate as f64);
            let el = start.elapsed();
            if due > el {
                std::thread::sleep(due - el);
            }
        }
    }
    let el = start.elapsed();
    println!(
        "ns_per_write={:.1} writes={count} bytes={} secs={:.6}",
        el.as_nanos() as f64 / count.max(1) as f64,
        count * size as u64,
        el.as_secs_f64()
    );
    Ok(())
}

fn config(saves: u64, path: &Path) -> Result<()> {
    let mut rng = Rng(42);
    let mut body = String::from("{\n");
    let mut i = 0;
    while body.len() < 4000 {
        body.push_str(&format!("  \"setting_{i:03}\": \"{:016x}\",\n", rng.next()));
        i += 1;
    }
    body.push_str("  \"generation\": 0000000000\n}\n");
    let tmp = path.with_extension("tmp");
    let mut written = 0u64;
    for gen in 0..saves {
        // A few bytes change per save: the generation and one setting.
        let gen_at = body.len() - 13;
        body.replace_range(gen_at..gen_at + 10, &format!("{gen:010}"));
        let k = (rng.next() % i as u64) as usize;
        let line = format!("  \"setting_{k:03}\": \"");
        if let Some(p) = body.find(&line) {
            let at = p + line.len();
            body.replace_range(at..at + 4, &format!("{:04x}", rng.next() & 0xffff));
        }
        let mut f = File::create(&tmp)?;
        f.write_all(body.as_bytes())?;
        drop(f);
        fs::rename(&tmp, path)?;
        written += body.len() as u64;
    }
    println!("saves={saves} bytes={written}");
    Ok(())
}

fn tree(files: u64, bytes: u64, dir: &Path) -> Result<()> {
    let per = (bytes / files.max(1)) as usize;
    let mut rng = Rng(7);
    let mut buf = vec![0u8; 64 * 1024];
    let mut total = 0u64;
    let write_file = |p: &Path, size: usize, rng: &mut Rng, buf: &mut Vec<u8>| -> Result<()> {
        let mut f = OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .mode(0o644)
            .open(p)?;
        let mut left = size;
        while left > 0 {
            let n = left.min(buf.len());
            rng.fill_text(&mut buf[..n]);
            f.write_all(&buf[..n])?;
            left -= n;
        }
        Ok(())
    };
    let name = |i: u64| dir.join(format!("d{:03}/f{i:05}.dat", i % 100));
    for i in 0..files {
        let p = name(i);
        if i < 100 {
            fs::create_dir_all(p.parent().unwrap())?;
        }
        // Sizes vary from 1/2 to 3/2 of the mean.
        let size = per / 2 + (rng.next() % per.max(1) as u64) as usize;
        write_file(&p, size, &mut rng, &mut buf)?;
        total += size as u64;
    }
    File::create(dir.join("MIDDLE"))?;
    println!("middle_files={files} middle_bytes={total}");
    std::thread::sleep(Duration::from_millis(1500));
    for i in (0..files).step_by(10) {
        write_file(&name(i), per, &mut rng, &mut buf)?;
    }
    Ok(())
}
