//! `spate demo`: a local cluster end to end. Starts a scheduler and P producer and C consumer
//! daemons as separate processes, submits one job, reads every stream with the ring reader,
//! verifies it, and prints throughput and a latency summary.

use std::os::unix::fs::PermissionsExt as _;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow, bail};
use hdrhistogram::Histogram;
use spate_netlib::auth::{Role, Secret};
use spate_netlib::msg::MsgConn;
use spate_netlib::proto::{JobId, JobOutcome, JobState, Message, NodeState, StreamPlacement};
use spate_producer::rip::Rip;
use spate_ring::{Acquired, pattern};

/// The kernels the demo can run.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum DemoKernel {
    /// The verifiable test pattern.
    Pattern,
    /// No computation: measures communication alone (not verifiable).
    Null,
    /// The RIP kernel on a generated input image (reference jobs A, B, C).
    Rip,
}

#[derive(clap::Args, Debug)]
#[command(
    about = "Run a local cluster end to end: scheduler, producers, consumers, one job, readers",
    long_about = "Start a local spate cluster (a scheduler, P producer daemons and C consumer \
daemons, each its own process, talking over UNIX sockets in a fresh run directory), submit one \
job, read every stream through the shared-memory ring like `spate read` does, verify it, and \
report throughput (job bytes / time from submission to the last byte read) and the latency of \
the readers' waits. Everything is torn down at the end.\n\n\
--job A|B|C are the digital-printing reference jobs (4 ink channels of 3000², 36000², \
120000² pixels, one stream per channel); a size such as 1GiB is one channel of that many bytes \
(split into C streams when there are C consumers).\n\n\
Verification: the pattern kernel is checked byte for byte against the test pattern; the rip \
kernel is checked against a sequential run of the same RIP in the demo process (each reader \
renders its lines again in batches of about 4 MiB, all ink channels at once as the ink limit \
couples them), so a rip job reads several times slower than it is produced: fine for job A, \
for job B expect every reader to redo the whole job's RIP work (4 x 5.2 GB of output). The null \
kernel cannot be verified.",
    after_help = "Examples:\n  spate demo\n  spate demo --job B --producers 1 --consumers 1 --kernel null\n  \
spate demo --job A --kernel rip --producers 2 --json"
)]
pub struct Args {
    /// Reference job A, B or C, or a size per channel such as 1GiB.
    #[arg(long, default_value = "1GiB")]
    pub job: String,
    /// Producer daemons to start.
    #[arg(long, default_value_t = 1)]
    pub producers: u32,
    /// Consumer daemons to start.
    #[arg(long, default_value_t = 1)]
    pub consumers: u32,
    /// Kernel: pattern (verified byte for byte), null (communication only), rip.
    #[arg(long, value_enum, default_value = "pattern")]
    pub kernel: DemoKernel,
    /// Chunk size per channel (e.g. 16MiB); default: the scheduler's policy picks.
    #[arg(long)]
    pub chunk: Option<String>,
    /// Pattern seed.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 600)]
    pub timeout: u64,
    /// Keep the run directory (sockets, logs) for inspection.
    #[arg(long)]
    pub keep: bool,
    /// Print the report as one JSON object.
    #[arg(long)]
    pub json: bool,
    /// How chunks reach the consumers (all on this host): zero-copy, pull or socket (as
    /// `spate node --local-path`; default: the nodes' default).
    #[arg(long, value_parser = ["zero-copy", "pull", "socket"])]
    pub local_path: Option<String>,
}

/// The demo's report (`--json`).
#[derive(serde::Serialize, Debug)]
struct Report {
    job: String,
    kernel: &'static str,
    /// How chunks reached the consumers.
    local_path: String,
    producers: u32,
    consumers: u32,
    streams: usize,
    bytes: u64,
    seconds: f64,
    gbit_per_s: f64,
    verified: bool,
    backing: String,
    /// Time readers spent blocked waiting for data, per block (microseconds).
    wait_us_p50: u64,
    wait_us_p90: u64,
    wait_us_p99: u64,
    wait_us_p999: u64,
    wait_us_max: u64,
    /// Time from submission to the job's acceptance (streams allocated), milliseconds.
    accept_ms: f64,
    /// Time from Ready to the first byte readable, milliseconds.
    first_byte_ms: f64,
}

/// A child daemon, stopped (SIGTERM, then SIGKILL after a grace period) when dropped.
struct Daemon {
    name: String,
    child: Child,
    log: PathBuf,
}

impl Daemon {
    fn spawn(name: &str, args: &[String], dir: &Path) -> anyhow::Result<Daemon> {
        let log = dir.join(format!("{name}.log"));
        let f = std::fs::File::create(&log)?;
        let child = Command::new(std::env::current_exe()?)
            .args(args)
            .stdin(Stdio::null())
            .stdout(f.try_clone()?)
            .stderr(f)
            .spawn()
            .with_context(|| format!("cannot start {name}"))?;
        Ok(Daemon {
            name: name.into(),
            child,
            log,
        })
    }

    /// `Err` with the daemon's log tail if it exited.
    fn check_alive(&mut self) -> anyhow::Result<()> {
        if let Some(st) = self.child.try_wait()? {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(12).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            bail!("{} exited ({st}):\n{}", self.name, tail.join("\n"));
        }
        Ok(())
    }

    fn stop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop();
    }
}

/// How the readers check each stream.
#[derive(Clone)]
enum Verify {
    /// Not checkable (null kernel).
    Nothing,
    /// The ring's test pattern under this seed.
    Pattern(u64),
    /// A sequential run of this RIP; each stream carries `channel`'s `lines`.
    Rip(Arc<RipJob>),
}

/// A rip job as the demo checks it: the same RIP the producers build, and the streams' shapes.
struct RipJob {
    rip: Rip,
    /// Per stream index: the channel and the lines of that channel it carries.
    streams: Vec<(usize, std::ops::Range<u64>)>,
}

/// What the demo submits: the spec text and how to check each stream.
struct Job {
    spec: String,
    inputs: Vec<String>,
    verify: Verify,
}

fn job_spec(a: &Args, files: &Path) -> anyhow::Result<Job> {
    let nodes: Vec<String> = (0..a.consumers).map(|i| format!("c{i}")).collect();
    let reference = matches!(a.job.as_str(), "A" | "B" | "C");
    let mut spec = String::new();
    let mut inputs = vec![];
    let kernel = match a.kernel {
        DemoKernel::Pattern => "pattern",
        DemoKernel::Null => "null",
        DemoKernel::Rip => "rip",
    };
    spec.push_str(&format!(
        "name = \"demo-{}\"\nkernel = \"{kernel}\"\n",
        a.job
    ));
    let streams = if reference {
        let (inches, dpi) = match a.job.as_str() {
            "A" => (10, 300),
            "B" => (40, 900),
            _ => (100, 1200),
        };
        if a.kernel == DemoKernel::Rip {
            let img = "demo.png";
            spate_producer::rip::write_test_image(&files.join(img), 1200, 1200)
                .map_err(|e| anyhow!("cannot write the demo input image: {e}"))?;
            spec.push_str(&format!("inputs = [\"{img}\"]\n"));
            inputs.push(img.to_string());
        }
        spec.push_str(&format!(
            "sheet = \"{inches}x{inches}in\"\ndpi = {dpi}\nchannels = 4\nsplit = \"channel\"\n"
        ));
        4
    } else {
        if a.kernel == DemoKernel::Rip {
            bail!("--kernel rip needs --job A, B or C (the reference printing jobs)");
        }
        let size = spate_scheduler::spec::parse_size(&a.job).map_err(|e| {
            anyhow!(
                "--job {}: {e} (or A, B, C)",
                spate_netlib::text::quote(&a.job)
            )
        })?;
        let parts = a.consumers.max(1);
        // Lines of 64 KiB (or fewer bytes when the size is small), as many parts as consumers.
        let line = (64u64 << 10).min(size.max(1));
        if size % line != 0 || (size / line) < u64::from(parts) {
            bail!(
                "--job {}: the size must be a multiple of 64 KiB with at least one 64 KiB line \
                 per consumer",
                a.job
            );
        }
        spec.push_str(&format!(
            "lines = {}\nline_bytes = {line}\nchannels = 1\n",
            size / line
        ));
        if parts > 1 {
            spec.push_str(&format!("split = {{ lines = {parts} }}\n"));
        }
        parts as usize
    };
    if let Some(c) = &a.chunk {
        spec.push_str(&format!("chunk = \"{c}\"\n"));
    }
    for s in 0..streams {
        spec.push_str(&format!(
            "\n[[stream]]\nnode = \"{}\"\n",
            nodes[s % nodes.len()]
        ));
    }
    if a.kernel == DemoKernel::Pattern {
        spec.push_str(&format!("\n[params]\nseed = {}\n", a.seed));
    }
    let verify = match a.kernel {
        DemoKernel::Pattern => Verify::Pattern(a.seed),
        DemoKernel::Null => Verify::Nothing,
        DemoKernel::Rip => Verify::Rip(Arc::new(rip_job(&spec, files)?)),
    };
    Ok(Job {
        spec,
        inputs,
        verify,
    })
}

/// Builds, from the spec the demo submits and the input files, the RIP every producer builds
/// (the producer's own mapping of `[params]` and geometry), to check the streams against.
fn rip_job(spec: &str, files: &Path) -> anyhow::Result<RipJob> {
    let plan = spate_scheduler::spec::JobPlan::parse(spec)
        .map_err(|e| anyhow!("the demo's own job spec is invalid: {e}"))?;
    let geometry = spate_scheduler::server::job_geometry(&plan);
    let mut inputs = std::collections::HashMap::new();
    for name in &plan.inputs {
        let bytes =
            std::fs::read(files.join(name)).with_context(|| format!("reading input {name}"))?;
        inputs.insert(name.clone(), bytes);
    }
    let params = spate_scheduler::server::table_to_value(&plan.params);
    let rip = spate_producer::rip_kernel::build_rip(&params, &geometry, &inputs, None)
        .map_err(|e| anyhow!("the demo cannot build the reference RIP: {e}"))?;
    let streams = plan
        .streams
        .iter()
        .map(|s| (s.channel as usize, s.lines.clone()))
        .collect();
    Ok(RipJob { rip, streams })
}

/// Checks a rip stream block by block against a sequential render of the same lines, holding
/// only one batch of reference lines (about 4 MiB per channel) at a time.
struct RipCheck {
    job: Arc<RipJob>,
    channel: usize,
    lines: std::ops::Range<u64>,
    width: u64,
    batch: u64,
    /// Stream offset of `window[0]`.
    start: u64,
    window: Vec<u8>,
}

impl RipCheck {
    fn new(job: Arc<RipJob>, stream: u32) -> anyhow::Result<RipCheck> {
        let (channel, lines) = job
            .streams
            .get(stream as usize)
            .cloned()
            .ok_or_else(|| anyhow!("stream {stream} is not in the demo's job"))?;
        let width = u64::from(job.rip.width());
        Ok(RipCheck {
            job,
            channel,
            lines,
            width,
            batch: ((4u64 << 20) / width.max(1)).max(1),
            start: 0,
            window: Vec::new(),
        })
    }

    /// The stream offset of the first byte of `data` (at stream `offset`) that differs from the
    /// sequential run, if any.
    fn check(&mut self, offset: u64, data: &[u8]) -> anyhow::Result<Option<u64>> {
        let mut pos = 0usize;
        while pos < data.len() {
            let off = offset + pos as u64;
            let end = self.start + self.window.len() as u64;
            if off < self.start || off >= end {
                let first = self.lines.start + off / self.width;
                let last = (first + self.batch).min(self.lines.end);
                if first >= last {
                    return Ok(Some(off));
                }
                let (a, b) = (u32::try_from(first)?, u32::try_from(last)?);
                let mut bufs = self
                    .job
                    .rip
                    .render_to_vecs(a..b)
                    .map_err(|e| anyhow!("reference render: {e}"))?;
                self.window = bufs.swap_remove(self.channel);
                self.start = (first - self.lines.start) * self.width;
            }
            let i = (off - self.start) as usize;
            let n = (data.len() - pos).min(self.window.len() - i);
            let (got, want) = (&data[pos..pos + n], &self.window[i..i + n]);
            if let Some(k) = got.iter().zip(want).position(|(g, w)| g != w) {
                return Ok(Some(off + k as u64));
            }
            pos += n;
        }
        Ok(None)
    }
}

/// One reader's result.
struct ReadResult {
    bytes: u64,
    waits: Histogram<u64>,
    backing: String,
    first_byte: Option<Instant>,
}

fn read_stream(
    p: &StreamPlacement,
    verify: Verify,
    deadline: Instant,
) -> anyhow::Result<ReadResult> {
    let seed = match &verify {
        Verify::Pattern(s) => Some(*s),
        _ => None,
    };
    let mut rip_check = match verify {
        Verify::Rip(job) => Some(RipCheck::new(job, p.stream.0)?),
        _ => None,
    };
    let key = p.key.to_string();
    let mut r = spate_ring::handoff::connect(&p.handoff, &key)
        .with_context(|| format!("attach to stream {} at {}", p.stream.0, p.handoff.display()))?;
    let mut waits = Histogram::<u64>::new(3)?;
    let mut first_byte = None;
    let block = (4usize << 20).min(r.capacity() as usize).max(1);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            bail!(
                "stream {}: timed out at offset {}",
                p.stream.0,
                r.position()
            );
        }
        let t = Instant::now();
        match r.acquire(1, block, Some(left))? {
            Acquired::Data(b) => {
                waits.saturating_record(t.elapsed().as_micros() as u64);
                first_byte.get_or_insert_with(Instant::now);
                if let Some(seed) = seed
                    && let Some(bad) = pattern::check(seed, u64::from(p.stream.0), b.offset, b.data)
                {
                    return Err(anyhow::Error::new(crate::exit::Coded {
                        code: crate::exit::VERIFY,
                        error: anyhow::anyhow!(
                            "stream {}: verification failed at offset {bad}",
                            p.stream.0
                        ),
                    }));
                }
                if let Some(c) = rip_check.as_mut()
                    && let Some(bad) = c.check(b.offset, b.data)?
                {
                    bail!(
                        "stream {}: differs from a sequential RIP run at offset {bad}",
                        p.stream.0
                    );
                }
                let n = b.data.len();
                r.release(n)?;
            }
            Acquired::End => break,
            Acquired::TimedOut => {}
        }
    }
    if r.position() != p.length {
        bail!(
            "stream {}: ended at {} of {} bytes",
            p.stream.0,
            r.position(),
            p.length
        );
    }
    Ok(ReadResult {
        bytes: r.position(),
        waits,
        backing: r.backing().to_string(),
        first_byte,
    })
}

type Conn = MsgConn<UnixStream>;

fn connect_user(sock: &Path, secret: &Secret, deadline: Instant) -> anyhow::Result<Conn> {
    loop {
        match UnixStream::connect(sock) {
            Ok(s) => return Ok(MsgConn::client(s, secret, Role::User)?),
            Err(e) if Instant::now() < deadline => {
                tracing::debug!("scheduler not up yet: {e}");
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => return Err(e).context("the scheduler never opened its socket"),
        }
    }
}

/// Wait for one reply, skipping unrelated notifications.
fn expect<T>(
    conn: &mut Conn,
    deadline: Instant,
    daemons: &mut [Daemon],
    mut pick: impl FnMut(Message) -> Option<anyhow::Result<T>>,
) -> anyhow::Result<T> {
    loop {
        for d in daemons.iter_mut() {
            d.check_alive()?;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            bail!("timed out waiting for the scheduler");
        }
        if let Some(m) = conn.recv_timeout(left.min(Duration::from_millis(200)))?
            && let Some(r) = pick(m)
        {
            return r;
        }
    }
}

pub fn run(a: Args) -> anyhow::Result<i32> {
    if a.producers == 0 || a.consumers == 0 {
        bail!("--producers and --consumers must be at least 1");
    }
    let dir = std::env::temp_dir().join(format!("spate-demo-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("files"))?;
    let res = run_in(&a, &dir);
    if a.keep {
        eprintln!("run directory kept: {}", dir.display());
    } else {
        let _ = std::fs::remove_dir_all(&dir);
    }
    let rep = res?;
    if a.json {
        println!("{}", serde_json::to_string(&rep)?);
    } else {
        println!(
            "demo: job {} ({} kernel), {} producer(s), {} consumer(s), {} stream(s), local path {}",
            rep.job, rep.kernel, rep.producers, rep.consumers, rep.streams, rep.local_path
        );
        println!(
            "  {} bytes in {:.3} s: {:.2} Gbit/s, {}, ring backing {}",
            rep.bytes,
            rep.seconds,
            rep.gbit_per_s,
            if rep.verified {
                "every byte verified"
            } else {
                "not verifiable (null kernel)"
            },
            rep.backing
        );
        println!(
            "  accepted after {:.1} ms; first byte {:.1} ms after Ready",
            rep.accept_ms, rep.first_byte_ms
        );
        println!(
            "  reader waits per block (us): p50 {} p90 {} p99 {} p99.9 {} max {}",
            rep.wait_us_p50, rep.wait_us_p90, rep.wait_us_p99, rep.wait_us_p999, rep.wait_us_max
        );
    }
    Ok(0)
}

fn run_in(a: &Args, dir: &Path) -> anyhow::Result<Report> {
    let deadline = Instant::now() + Duration::from_secs(a.timeout);
    let job = job_spec(a, &dir.join("files"))?;
    let secret_path = dir.join("secret");
    std::fs::write(&secret_path, hex(Secret::generate()?.expose()))?;
    std::fs::set_permissions(&secret_path, std::fs::Permissions::from_mode(0o600))?;
    // Everyone, the demo's own user connection included, reads the secret from the file.
    let secret = Secret::from_file(&secret_path)?;
    let sock = dir.join("sched.sock");
    let s = |x: &str| x.to_string();
    let sched_ep = format!("unix:{}", sock.display());
    let secret_arg = secret_path.display().to_string();

    let mut daemons = vec![Daemon::spawn(
        "scheduler",
        &[
            s("scheduler"),
            s("--listen"),
            sched_ep.clone(),
            s("--secret-file"),
            secret_arg.clone(),
            s("--files"),
            dir.join("files").display().to_string(),
        ],
        dir,
    )?];
    let mut conn = connect_user(&sock, &secret, deadline)?;
    let node = |name: String, role: &str| -> anyhow::Result<Daemon> {
        let run_dir = dir.join(&name);
        Daemon::spawn(
            &name,
            &[
                s("node"),
                s("--name"),
                name.clone(),
                s("--scheduler"),
                sched_ep.clone(),
                s("--secret-file"),
                secret_arg.clone(),
                s("--run-dir"),
                run_dir.display().to_string(),
                format!("--{role}"),
            ]
            .into_iter()
            .chain(
                a.local_path
                    .iter()
                    .flat_map(|p| [s("--local-path"), p.clone()]),
            )
            .collect::<Vec<_>>(),
            dir,
        )
    };
    for i in 0..a.consumers {
        daemons.push(node(format!("c{i}"), "consumer")?);
    }
    for i in 0..a.producers {
        daemons.push(node(format!("p{i}"), "producer")?);
    }
    // Wait until every daemon has joined.
    let want = (a.producers + a.consumers) as usize;
    loop {
        conn.send(&Message::Status { job: None })?;
        let alive = expect(&mut conn, deadline, &mut daemons, |m| match m {
            Message::StatusReply { nodes, .. } => Some(Ok(nodes
                .iter()
                .filter(|n| n.state == NodeState::Alive)
                .count())),
            _ => None,
        })?;
        if alive >= want {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }

    let t_submit = Instant::now();
    conn.send(&Message::Submit {
        spec_toml: job.spec.clone(),
        inputs: job.inputs.clone(),
    })?;
    let (id, streams): (JobId, Vec<StreamPlacement>) =
        expect(&mut conn, deadline, &mut daemons, |m| match m {
            Message::Accepted { job, streams, .. } => Some(Ok((job, streams))),
            Message::Refused { reason, message } => {
                Some(Err(anyhow!("job refused: {message} ({reason:?})")))
            }
            _ => None,
        })?;
    let accept_ms = t_submit.elapsed().as_secs_f64() * 1e3;

    // Readers attach first, then the job starts.
    let readers: Vec<_> = streams
        .iter()
        .cloned()
        .map(|p| {
            let verify = job.verify.clone();
            std::thread::spawn(move || read_stream(&p, verify, deadline))
        })
        .collect();
    conn.send(&Message::Ready { job: id })?;
    let t_ready = Instant::now();
    let mut results = vec![];
    for r in readers {
        results.push(r.join().map_err(|_| anyhow!("a reader thread panicked"))?);
    }
    // A reader error usually has its cause in the job's end: report that first.
    if let Some(Err(e)) = results.iter().find(|r| r.is_err()) {
        let why = expect(
            &mut conn,
            Instant::now() + Duration::from_secs(5),
            &mut daemons,
            |m| match m {
                Message::JobEnded { outcome, .. } => Some(Ok(format!("{outcome:?}"))),
                _ => None,
            },
        )
        .unwrap_or_else(|_| "job still running".into());
        bail!("{e:#} (job: {why})");
    }
    let results: Vec<ReadResult> = results
        .into_iter()
        .map(|r| r.map_err(|e| anyhow!("{e:#}")))
        .collect::<anyhow::Result<_>>()?;
    // Every byte was read; the scheduler counts the job delivered once the producers' last
    // TaskDone reached it, which may come a moment after the consumer's last landing.
    expect(&mut conn, deadline, &mut daemons, |m| match m {
        Message::JobUpdate(st) if st.job == id && st.state == JobState::Delivered => Some(Ok(())),
        Message::JobEnded { outcome, .. } => Some(Err(anyhow!("job ended: {outcome:?}"))),
        _ => None,
    })?;
    conn.send(&Message::Done { job: id })?;
    expect(&mut conn, deadline, &mut daemons, |m| match m {
        Message::JobEnded {
            outcome: JobOutcome::Completed,
            ..
        } => Some(Ok(())),
        Message::JobEnded { outcome, .. } => Some(Err(anyhow!("job ended: {outcome:?}"))),
        Message::Error { kind, message } => Some(Err(anyhow!("{kind:?}: {message}"))),
        _ => None,
    })?;
    let secs = t_submit.elapsed().as_secs_f64();
    for d in daemons.iter_mut().rev() {
        d.stop();
    }

    let mut waits = Histogram::<u64>::new(3)?;
    for r in &results {
        waits.add(&r.waits)?;
    }
    let bytes: u64 = results.iter().map(|r| r.bytes).sum();
    let first = results.iter().filter_map(|r| r.first_byte).min();
    Ok(Report {
        job: a.job.clone(),
        kernel: match a.kernel {
            DemoKernel::Pattern => "pattern",
            DemoKernel::Null => "null",
            DemoKernel::Rip => "rip",
        },
        local_path: a.local_path.clone().unwrap_or_else(|| "zero-copy".into()),
        producers: a.producers,
        consumers: a.consumers,
        streams: results.len(),
        bytes,
        seconds: secs,
        gbit_per_s: bytes as f64 * 8.0 / secs / 1e9,
        verified: !matches!(job.verify, Verify::Nothing),
        backing: results
            .first()
            .map(|r| r.backing.clone())
            .unwrap_or_default(),
        wait_us_p50: waits.value_at_quantile(0.5),
        wait_us_p90: waits.value_at_quantile(0.9),
        wait_us_p99: waits.value_at_quantile(0.99),
        wait_us_p999: waits.value_at_quantile(0.999),
        wait_us_max: waits.max(),
        accept_ms,
        first_byte_ms: first
            .map(|f| f.saturating_duration_since(t_ready).as_secs_f64() * 1e3)
            .unwrap_or(0.0),
    })
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}
