//! A runner's sandbox, seen from the agent: create it, run steps in it, destroy it, and
//! verify that nothing of it is left.
//!
//! Creation order (each resource is listed in the slot's record *before* it exists, so a
//! crash at any point leaves something the reaper can find):
//!
//! 1. lease a slot under `run_dir`, write the record;
//! 2. create the cgroup directories and apply the limits;
//! 3. start the init (`runner-agent __sandbox-init`) already in its own network namespace
//!    and in the runner's v2 cgroup (`clone3`, see [`crate::sys::spawn`] for why it is
//!    not moved there), send it the spec; it joins the v1 cgroups and unshares the other
//!    namespaces (see [`init`] for why that order makes root inside powerless);
//! 4. meanwhile, create the veth pair into the new network namespace and put the fence's
//!    tc program on its host side (the fence's cgroup programs are loaded and attached
//!    from the start, in parallel);
//! 5. let init build the root filesystem and lock itself down, and tell it the network
//!    is ready: only then does it report the sandbox ready.
//!
//! Destruction deletes the veth while it kills every process through the cgroup, then
//! unpins the fence, removes the cgroup directories, the scratch mount point and the
//! record, then checks each of them. The veth counts as deleted once it has left the
//! host's tables; the kernel frees its memory a few RCU grace periods later, as it frees
//! any namespace (see [`network::remove`]).
//! The sandbox's mounts live only in its own mount namespace, which the kernel frees with
//! its last process.

pub mod init;
pub mod lower;
pub mod private;
pub mod protocol;
pub mod rootfs;
pub mod seccomp;

use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::Ipv4Net;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::unix::pipe;
use tokio::net::UnixStream;
use tokio::sync::mpsc;

use crate::cgroup::{CgroupError, CgroupLayout, CgroupLimits, RunnerCgroup};
use crate::network::{self, NetworkError, RunnerAddresses};
use crate::state::{RunDir, RunnerRecord, SlotLease, StateError, ID_BASE, ID_COUNT};
use protocol::{FromInit, SandboxSpec, StepEnd, StepRequest, ToInit};

/// Where the job's files live inside the sandbox.
pub const WORKSPACE: &str = "/workspace";

/// Where `deliver: file` secrets appear inside the sandbox, one file per secret named
/// after it, on a read-only tmpfs of their own.
pub const SECRETS_DIR: &str = "/run/secrets";

/// The fence's programs being loaded and attached to the runner's cgroup, off the async
/// threads.
type FenceLoad = tokio::task::JoinHandle<Result<egress_ebpf::Fence, egress_ebpf::FenceError>>;

/// How long destruction waits for the processes of a runner to die.
const KILL_DEADLINE: Duration = Duration::from_secs(10);

/// Host paths that every sandbox hides (DESIGN.md 4): secrets, sockets, other users'
/// files and live state. The configured `state_dir` and `run_dir` are added to these.
pub const MASKED_PATHS: &[&str] = &[
    "/root",
    "/home",
    "/tmp",
    "/var/tmp",
    "/run",
    "/var/run",
    "/var/log",
    "/var/mail",
    "/var/spool",
    "/var/lib/runner-agent",
    "/var/lib/docker",
    "/var/lib/containerd",
    "/etc/shadow",
    "/etc/shadow-",
    "/etc/gshadow",
    "/etc/gshadow-",
    "/etc/ssh",
    "/etc/sudoers",
    "/etc/sudoers.d",
    "/etc/runner-agent",
];

/// A failing sandbox operation.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// run_dir could not be used.
    #[error(transparent)]
    State(#[from] StateError),
    /// Cgroup set-up or removal failed.
    #[error(transparent)]
    Cgroup(#[from] CgroupError),
    /// The veth could not be set up or removed.
    #[error(transparent)]
    Network(#[from] NetworkError),
    /// The eBPF fence could not be attached or removed.
    #[error("eBPF fence: {0}")]
    Fence(#[from] egress_ebpf::FenceError),
    /// The init process could not be started or talked to.
    #[error("sandbox init: {0}")]
    Init(String),
    /// The init reported a failure while building the sandbox.
    #[error("sandbox set-up failed at {stage}: {message}")]
    Setup {
        /// Which part.
        stage: String,
        /// Why.
        message: String,
    },
    /// Destruction left something behind.
    #[error("runner {runner} was not completely removed: {}", .leftovers.join("; "))]
    Leftovers {
        /// The runner.
        runner: String,
        /// What is left, one item each.
        leftovers: Vec<String>,
    },
}

/// What a sandbox is built from.
#[derive(Debug, Clone)]
pub struct SandboxConfig {
    /// The agent's live state directory.
    pub run_dir: PathBuf,
    /// Runner addresses come from here, a /30 per slot.
    pub runner_pool: Ipv4Net,
    /// How many runners may exist at once (slots 0..max).
    pub max_concurrent: u32,
    /// Memory, pids and cpu limits.
    pub limits: CgroupLimits,
    /// Size of the writable layer (and of /dev/shm), bytes.
    pub disk_bytes: u64,
    /// Extra host paths to mask (state_dir, run_dir).
    pub extra_masks: Vec<PathBuf>,
    /// The cgroup filesystem root (normally /sys/fs/cgroup).
    pub cgroup_root: PathBuf,
    /// The program that acts as sandbox init (the runner-agent binary).
    pub init_program: PathBuf,
    /// Files to write inside the sandbox (path, content), e.g. /etc/resolv.conf.
    pub files: Vec<(PathBuf, String)>,
    /// Secrets delivered as files under [`SECRETS_DIR`].
    pub secret_files: Vec<protocol::SecretFile>,
    /// Where eBPF fences are pinned (one directory per runner below it, on bpffs).
    pub bpf_pin_root: PathBuf,
}

/// The default root of the fences' pins.
pub const BPF_PIN_ROOT: &str = "/sys/fs/bpf/runner-agent";

/// A live sandbox.
pub struct Sandbox {
    record: RunnerRecord,
    run_dir: RunDir,
    _lease: SlotLease,
    child: Option<crate::sys::spawn::Child>,
    /// Writing half of the control socket; dropping it ends the sandbox.
    control: Option<tokio::net::unix::OwnedWriteHalf>,
    /// Messages from init, read by a task of their own (see `read_messages`).
    messages: Option<mpsc::UnboundedReceiver<Result<FromInit, String>>>,
    /// System calls the sandbox refused, as init reported them.
    seccomp_denials: Option<mpsc::Receiver<SeccompDenial>>,
    output: Option<pipe::Receiver>,
    idmapped: bool,
    fence: Option<egress_ebpf::Fence>,
    /// The host's cgroup hierarchies (the proxy's cgroup is made in them too).
    layout: CgroupLayout,
}

impl SandboxConfig {
    /// What `runner-agent run` builds from the built-in host config with default limits,
    /// with live state under `run_dir`, the agent's state in `state_dir` (both masked),
    /// no generated files or secrets, and `init_program` as init (for benches, tests and
    /// programs embedding the agent).
    pub fn builtin(run_dir: &Path, state_dir: &Path, init_program: PathBuf) -> SandboxConfig {
        let host = crate::config::HostConfig::builtin_default();
        let limits = crate::config::DEFAULT_LIMITS;
        SandboxConfig {
            run_dir: run_dir.to_owned(),
            runner_pool: host.network.runner_pool,
            max_concurrent: host.runner.max_concurrent,
            limits: CgroupLimits {
                memory: Some(limits.memory),
                pids: Some(limits.pids),
                cpus: Some(limits.cpus),
            },
            disk_bytes: limits.disk,
            extra_masks: vec![state_dir.to_owned(), run_dir.to_owned()],
            cgroup_root: PathBuf::from(crate::cgroup::CGROUP_ROOT),
            init_program,
            files: Vec::new(),
            secret_files: Vec::new(),
            bpf_pin_root: PathBuf::from(BPF_PIN_ROOT),
        }
    }
}

/// The host paths every runner of `config` hides: [`MASKED_PATHS`] and the configured
/// extra masks, sorted.
pub fn masked_paths(config: &SandboxConfig) -> Vec<PathBuf> {
    let mut masked: Vec<PathBuf> = MASKED_PATHS.iter().map(PathBuf::from).collect();
    masked.extend(config.extra_masks.iter().cloned());
    masked.sort();
    masked.dedup();
    masked
}

/// The private entries of the host's scanned trees that a runner of `config` hides, as
/// of now (`private::host_private_entries`; remembered between runners of this process).
pub fn private_entries(config: &SandboxConfig) -> Result<Vec<PathBuf>, SandboxError> {
    private_entries_of(&masked_paths(config))
}

/// [`private_entries`] given the masks ([`masked_paths`]).
fn private_entries_of(masked: &[PathBuf]) -> Result<Vec<PathBuf>, SandboxError> {
    private::host_private_entries(masked).map_err(|e| SandboxError::Setup {
        stage: "finding the host's private files".to_owned(),
        message: e.to_string(),
    })
}

/// What init is told to build for `record` (see [`protocol::SandboxSpec`]): the masks
/// (`private_entries` among them, from [`private_entries`]), the generated files
/// (hostname, hosts, resolv.conf pointing at the DNS filter, then `config.files`), the
/// workspace and the file secrets.
pub fn init_spec(
    record: &RunnerRecord,
    config: &SandboxConfig,
    cgroup: &RunnerCgroup,
    private_entries: Vec<PathBuf>,
) -> SandboxSpec {
    let masked = masked_paths(config);
    let mut files = vec![
        (
            PathBuf::from("/etc/hostname"),
            format!("{}\n", record.runner),
        ),
        (
            PathBuf::from("/etc/hosts"),
            format!(
                "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n{}\t{}\n",
                record.addresses.runner, record.runner
            ),
        ),
        // The DNS filter listens on the host side of the runner's veth.
        (
            PathBuf::from("/etc/resolv.conf"),
            format!("nameserver {}\n", record.addresses.host),
        ),
    ];
    files.extend(config.files.iter().cloned());
    SandboxSpec {
        runner: record.runner.clone(),
        id_base: record.id_base,
        id_count: ID_COUNT,
        v1_tasks: cgroup.v1_task_files(),
        scratch_dir: record.scratch_dir.clone(),
        scratch_bytes: config.disk_bytes,
        masked_paths: masked,
        private_entries,
        files,
        workspace: PathBuf::from(WORKSPACE),
        secret_files: config.secret_files.clone(),
    }
}

/// What a runner in slot `slot` running `job_id` will create, and its cgroup name: the
/// record to write before creating any of it.
pub fn new_record(
    config: &SandboxConfig,
    run_dir: &RunDir,
    layout: &CgroupLayout,
    slot: u32,
    job_id: &str,
) -> Result<(RunnerRecord, String), SandboxError> {
    let runner = format!("r-{slot}");
    // Cgroup names carry the job id: several agents (with separate run_dirs) may run on
    // one host, and their slot numbers overlap.
    let cgroup_name = format!("{runner}-{job_id}");
    let record = RunnerRecord {
        runner,
        slot,
        job_id: job_id.to_owned(),
        agent_pid: std::process::id(),
        cgroup_dirs: layout.runner_dirs(&cgroup_name),
        host_if: format!("ra{slot}"),
        addresses: RunnerAddresses::for_slot(config.runner_pool, slot)?,
        scratch_dir: run_dir.scratch_dir(slot),
        id_base: ID_BASE + slot * ID_COUNT,
        netns_inode: None,
        pin_dir: Some(config.bpf_pin_root.join(&cgroup_name)),
        proxy_cgroup_dirs: Vec::new(),
    };
    Ok((record, cgroup_name))
}

/// Leases the first free slot of `run_dir`, reaping a dead agent's runner found in it.
async fn lease_slot(run_dir: &RunDir, max: u32) -> Result<Option<SlotLease>, SandboxError> {
    for slot in 0..max {
        if let Some(lease) = run_dir.try_lease(slot)? {
            if let Some(stale) = run_dir.read_record(slot)? {
                tracing::warn!(runner = %stale.runner, job = %stale.job_id, "reaping leftovers of a dead agent");
                teardown(run_dir, &stale, NetnsCheck::ScanProcesses).await?;
            }
            return Ok(Some(lease));
        }
    }
    Ok(None)
}

/// How often the agent whose turn it is looks for a freed slot.
const SLOT_POLL: Duration = Duration::from_millis(10);

/// Waits for a free slot while all are busy: first behind the other waiting agents (the
/// queue lock of `run_dir`, waited for on a thread of its own so that a waiting agent
/// can still be stopped: the thread then just ends with the process), then looking for
/// a freed slot every [`SLOT_POLL`]. So a freed slot is taken within about 10 ms, and
/// however many agents wait, one of them polls.
async fn wait_for_slot(run_dir: &RunDir, max: u32) -> Result<SlotLease, SandboxError> {
    tracing::info!(max, "all runner slots busy; waiting");
    let (turn_tx, turn_rx) = tokio::sync::oneshot::channel();
    let queue = run_dir.clone();
    std::thread::Builder::new()
        .name("slot-queue".into())
        .spawn(move || {
            // If the waiting agent gave up meanwhile, the turn is dropped here and
            // passes to the next one.
            let _ = turn_tx.send(queue.wait_turn());
        })
        .map_err(|e| SandboxError::Init(format!("slot queue thread: {e}")))?;
    let _turn = turn_rx
        .await
        .map_err(|_| SandboxError::Init("slot queue thread ended without a turn".into()))??;
    loop {
        if let Some(lease) = lease_slot(run_dir, max).await? {
            return Ok(lease);
        }
        tokio::time::sleep(SLOT_POLL).await;
    }
}

/// Reaps every runner in `run_dir` whose agent is gone. Returns the runners reaped.
pub async fn reap_leftovers(run_dir: &RunDir) -> Result<Vec<String>, SandboxError> {
    let mut reaped = Vec::new();
    for slot in run_dir.recorded_slots()? {
        let Some(_lease) = run_dir.try_lease(slot)? else {
            continue; // a live agent owns it
        };
        if let Some(record) = run_dir.read_record(slot)? {
            tracing::warn!(runner = %record.runner, job = %record.job_id, "reaping leftovers of a dead agent");
            teardown(run_dir, &record, NetnsCheck::ScanProcesses).await?;
            reaped.push(record.runner);
        }
    }
    Ok(reaped)
}

impl Sandbox {
    /// Creates a sandbox for job `job_id`. Waits for a free slot when all are busy.
    pub async fn create(config: &SandboxConfig, job_id: &str) -> Result<Sandbox, SandboxError> {
        let run_dir = RunDir::open(&config.run_dir)?;
        let max = config.max_concurrent.max(1);
        let lease = match lease_slot(&run_dir, max).await? {
            Some(lease) => lease,
            None => wait_for_slot(&run_dir, max).await?,
        };
        let slot = lease.slot;
        let layout = CgroupLayout::detect(&config.cgroup_root)?;
        let (record, cgroup_name) = new_record(config, &run_dir, &layout, slot, job_id)?;
        let runner = record.runner.clone();
        run_dir.write_record(&record)?;
        let mut sandbox = Sandbox {
            record,
            run_dir,
            _lease: lease,
            child: None,
            control: None,
            messages: None,
            seccomp_denials: None,
            output: None,
            idmapped: false,
            fence: None,
            layout: layout.clone(),
        };
        let span = tracing::info_span!("runner", runner = %runner, job = %job_id, slot);
        let started =
            tracing::Instrument::instrument(sandbox.start(config, &layout, &cgroup_name), span)
                .await;
        match started {
            Ok(()) => Ok(sandbox),
            Err(err) => {
                if let Err(cleanup) = sandbox.destroy().await {
                    tracing::error!(error = %cleanup, "cleaning up a sandbox that failed to start");
                }
                Err(err)
            }
        }
    }

    async fn start(
        &mut self,
        config: &SandboxConfig,
        layout: &CgroupLayout,
        cgroup_name: &str,
    ) -> Result<(), SandboxError> {
        // Finding the host's private files (a walk of the scanned trees unless remembered
        // from an earlier runner of this process) runs while init starts too: init needs
        // the list only once it builds the root filesystem.
        let masked = masked_paths(config);
        let private_task = tokio::task::spawn_blocking(move || private_entries_of(&masked));
        let cgroup = layout.create(cgroup_name, &config.limits)?;
        // Loading and verifying the fence's programs runs while init starts: it is attached
        // before init is told the network is ready, so before any process of the job
        // exists (init itself does no networking), and awaited on every path so that a
        // failure elsewhere never races its pinning.
        let pin_dir = self.record.pin_dir.clone().unwrap_or_default();
        let fence_config = crate::egress::fence_config(
            self.record.addresses.host,
            self.record.addresses.runner,
            self.record.slot,
        );
        let v2_dir = cgroup.v2_dir.clone();
        let fence_task = tokio::task::spawn_blocking(move || {
            egress_ebpf::Fence::attach(&v2_dir, fence_config, &pin_dir)
        });
        let host_index = match self
            .start_init_and_network(config, &cgroup, private_task)
            .await
        {
            Ok(index) => index,
            Err(err) => {
                // Failed before the fence was needed: let the load finish (and pin) so
                // that destroy finds and removes all of it.
                if let Ok(Ok(fence)) = fence_task.await {
                    self.fence = Some(fence);
                }
                return Err(err);
            }
        };
        self.fence_the_veth(fence_task, host_index).await?;
        self.send(&ToInit::NetworkReady).await?;
        let ready = self
            .expect_ready("sandbox", |m| matches!(m, FromInit::SandboxReady { .. }))
            .await?;
        if let FromInit::SandboxReady { idmapped } = ready {
            self.idmapped = idmapped;
        }
        Ok(())
    }

    /// Takes the fence that `task` loads and puts its tc program on the host side of the
    /// veth, interface `host_index`. The attach (blocking netlink requests) runs off the
    /// async threads.
    async fn fence_the_veth(
        &mut self,
        task: FenceLoad,
        host_index: u32,
    ) -> Result<(), SandboxError> {
        let fence = task
            .await
            .map_err(|e| SandboxError::Init(format!("fence task: {e}")))??;
        let (fence, attached) = tokio::task::spawn_blocking(move || {
            let mut fence = fence;
            let attached = fence.attach_tc(host_index);
            (fence, attached)
        })
        .await
        .map_err(|e| SandboxError::Init(format!("fence task: {e}")))?;
        self.fence = Some(fence);
        Ok(attached?)
    }

    /// Starts init in its network namespace and builds the veth into it while init goes
    /// on building the sandbox. Returns the host side's interface index.
    async fn start_init_and_network(
        &mut self,
        config: &SandboxConfig,
        cgroup: &RunnerCgroup,
        private_task: tokio::task::JoinHandle<Result<Vec<PathBuf>, SandboxError>>,
    ) -> Result<u32, SandboxError> {
        let SpawnedInit {
            child,
            control: agent_end,
            output: output_read,
        } = spawn_init(&config.init_program, cgroup)?;
        let init_pid = child.pid();
        self.child = Some(child);
        // Record the namespace before configuring it, so that its removal can be checked.
        let netns = std::fs::metadata(format!("/proc/{init_pid}/ns/net"))
            .map_err(|e| SandboxError::Init(format!("network namespace of the init: {e}")))?;
        self.record.netns_inode = Some(std::os::unix::fs::MetadataExt::ino(&netns));
        self.run_dir.write_record(&self.record)?;
        agent_end
            .set_nonblocking(true)
            .map_err(|e| SandboxError::Init(format!("socket: {e}")))?;
        let stream = UnixStream::from_std(agent_end)
            .map_err(|e| SandboxError::Init(format!("socket: {e}")))?;
        let (read, write) = stream.into_split();
        let (messages_tx, messages) = mpsc::unbounded_channel();
        let (denials_tx, seccomp_denials) = mpsc::channel(DENIALS_QUEUE);
        tokio::spawn(read_messages(BufReader::new(read), messages_tx, denials_tx));
        self.control = Some(write);
        self.messages = Some(messages);
        self.seccomp_denials = Some(seccomp_denials);
        self.output = Some(
            pipe::Receiver::from_owned_fd(output_read)
                .map_err(|e| SandboxError::Init(format!("pipe: {e}")))?,
        );

        let private = private_task
            .await
            .map_err(|e| SandboxError::Init(format!("private files task: {e}")))??;
        self.send(&ToInit::Spec(init_spec(
            &self.record,
            config,
            cgroup,
            private,
        )))
        .await?;
        let owner = self.record.veth_owner();
        match network::setup(
            &self.record.host_if,
            self.record.addresses,
            init_pid,
            &owner,
        )
        .await
        {
            Ok(index) => Ok(index),
            Err(err) => Err(self.init_failure_or(err.into()).await),
        }
    }

    /// The runner's name (`r-<slot>`).
    pub fn runner(&self) -> &str {
        &self.record.runner
    }

    /// The runner's addresses.
    pub fn addresses(&self) -> RunnerAddresses {
        self.record.addresses
    }

    /// The runner's v2 cgroup directory.
    pub fn cgroup_dir(&self) -> &Path {
        &self.record.cgroup_dirs[0]
    }

    /// Makes the cgroup the runner's proxy process is to run in, with `limits`: a sibling
    /// of the runner's own (`<runner's>-proxy`), so that neither the fence attached to the
    /// runner's cgroup nor the kill that ends the job applies to it, but what the job makes
    /// its proxy do (floods of lookups, connections, handshakes) is bounded and charged
    /// apart from the host. Recorded before it is made, so that a crashed agent's reaper
    /// removes it with the runner.
    pub fn proxy_cgroup(&mut self, limits: &CgroupLimits) -> Result<RunnerCgroup, SandboxError> {
        let name = self
            .record
            .cgroup_dirs
            .first()
            .and_then(|dir| dir.file_name())
            .map(|name| format!("{}-proxy", name.to_string_lossy()))
            .ok_or_else(|| SandboxError::Init("the runner has no cgroup".into()))?;
        self.record.proxy_cgroup_dirs = self.layout.runner_dirs(&name);
        self.run_dir.write_record(&self.record)?;
        Ok(self.layout.create(&name, limits)?)
    }

    /// How often the kernel has enforced the runner's memory and pids limits so far.
    pub fn limit_events(&self) -> crate::cgroup::LimitEvents {
        crate::cgroup::LimitEvents::read(&self.record.cgroup_dirs)
    }

    /// A descriptor of the fence's original-destination map, for the proxy.
    pub fn orig_dst_fd(&self) -> Result<OwnedFd, SandboxError> {
        let fence = self
            .fence
            .as_ref()
            .ok_or_else(|| SandboxError::Init("no fence".into()))?;
        Ok(fence.orig_dst_fd()?)
    }

    /// The stream of the fence's denials (taken once).
    pub fn denials(&mut self) -> Result<egress_ebpf::DenialStream, SandboxError> {
        let fence = self
            .fence
            .as_mut()
            .ok_or_else(|| SandboxError::Init("no fence".into()))?;
        Ok(fence.denials()?)
    }

    /// The fence's per-runner counters so far.
    pub fn fence_counters(&self) -> Option<egress_ebpf::Counters> {
        self.fence.as_ref().and_then(|fence| fence.counters().ok())
    }

    /// The runner's slot.
    pub fn slot(&self) -> u32 {
        self.record.slot
    }

    /// Whether host-owned files appear owned by root inside.
    pub fn idmapped(&self) -> bool {
        self.idmapped
    }

    async fn send(&mut self, msg: &ToInit) -> Result<(), SandboxError> {
        let writer = self
            .control
            .as_mut()
            .ok_or_else(|| SandboxError::Init("control channel closed".into()))?;
        let line = protocol::json_line(msg).map_err(|e| SandboxError::Init(e.to_string()))?;
        writer
            .write_all(&line)
            .await
            .map_err(|e| SandboxError::Init(format!("send: {e}")))
    }

    async fn recv(&mut self) -> Result<FromInit, SandboxError> {
        let messages = self
            .messages
            .as_mut()
            .ok_or_else(|| SandboxError::Init("control channel closed".into()))?;
        match messages.recv().await {
            Some(Ok(message)) => Ok(message),
            Some(Err(err)) => Err(SandboxError::Init(err)),
            None => Err(SandboxError::Init(
                "the sandbox init exited unexpectedly".into(),
            )),
        }
    }

    /// The system calls the sandbox refuses, as they happen (taken once). The queue is
    /// bounded ([`DENIALS_QUEUE`]): while it is full, init's reports wait, and so do the
    /// job's refused calls, so whoever takes it must keep reading it (a job that refuses
    /// faster than its refusals are recorded is slowed, not queued in the agent's memory).
    pub fn seccomp_denials(&mut self) -> Option<mpsc::Receiver<SeccompDenial>> {
        self.seccomp_denials.take()
    }

    /// `err`, or the failure init reported meanwhile: init goes on while the agent sets
    /// up the network, and when init fails its namespace goes with it, so the network's
    /// error is then only a consequence.
    async fn init_failure_or(&mut self, err: SandboxError) -> SandboxError {
        match tokio::time::timeout(Duration::from_millis(200), self.recv()).await {
            Ok(Ok(FromInit::Failed { stage, message })) => SandboxError::Setup { stage, message },
            _ => err,
        }
    }

    async fn expect_ready(
        &mut self,
        what: &str,
        ok: impl Fn(&FromInit) -> bool,
    ) -> Result<FromInit, SandboxError> {
        match self.recv().await? {
            m if ok(&m) => Ok(m),
            FromInit::Failed { stage, message } => Err(SandboxError::Setup { stage, message }),
            other => Err(SandboxError::Init(format!(
                "waiting for {what}: unexpected {other:?}"
            ))),
        }
    }

    /// Runs one step, copying everything it prints to `sink` as it comes, and returns how
    /// it ended.
    pub async fn run_step<W: AsyncWrite + Unpin>(
        &mut self,
        step: StepRequest,
        sink: &mut W,
    ) -> Result<StepEnd, SandboxError> {
        self.send(&ToInit::RunStep(step)).await?;
        let mut buf = vec![0u8; 64 * 1024];
        let (Some(output), Some(messages)) = (self.output.as_mut(), self.messages.as_mut()) else {
            return Err(SandboxError::Init("sandbox is not running".into()));
        };
        let mut output_open = true;
        let end = loop {
            tokio::select! {
                // Output first: whatever the step wrote before exiting is already in the
                // pipe when its exit is reported, and must be printed under its header.
                biased;
                read = output.read(&mut buf), if output_open => match read {
                    Ok(0) | Err(_) => output_open = false,
                    Ok(n) => sink
                        .write_all(&buf[..n])
                        .await
                        .map_err(|e| SandboxError::Init(format!("write output: {e}")))?,
                },
                message = messages.recv() => match message {
                    Some(Ok(FromInit::StepExited(end))) => break end,
                    Some(Ok(FromInit::Failed { stage, message })) => {
                        return Err(SandboxError::Setup { stage, message })
                    }
                    Some(Ok(other)) => {
                        return Err(SandboxError::Init(format!("unexpected {other:?}")))
                    }
                    Some(Err(err)) => return Err(SandboxError::Init(err)),
                    None => {
                        return Err(SandboxError::Init(
                            "the sandbox init exited unexpectedly".into(),
                        ))
                    }
                },
            }
        };
        // Drain what is already buffered without waiting for background writers.
        if output_open {
            loop {
                match output.try_read(&mut buf) {
                    Ok(n) if n > 0 => sink
                        .write_all(&buf[..n])
                        .await
                        .map_err(|e| SandboxError::Init(format!("write output: {e}")))?,
                    _ => break,
                }
            }
        }
        let _ = sink.flush().await;
        Ok(end)
    }

    /// Ends every process of the runner now (`cgroup.kill`, waiting until none is left),
    /// keeping its network, fence and records for [`Sandbox::destroy`]. Called before the
    /// runner's proxy stops: a job's background process must not go on trying to connect
    /// while no proxy is there to record the attempts (found by an attack run; the fence
    /// let them through to the proxy's ports, where nothing listened any more).
    pub async fn kill_processes(&self) -> Result<(), SandboxError> {
        let Some(cgroup) = RunnerCgroup::from_dirs(&self.record.cgroup_dirs) else {
            return Ok(());
        };
        let killed = tokio::task::spawn_blocking(move || cgroup.kill_all(KILL_DEADLINE)).await;
        // The blocking task only fails by panicking: pass the panic on.
        killed
            .unwrap_or_else(|join| std::panic::resume_unwind(join.into_panic()))
            .map_err(SandboxError::from)
    }

    /// Kills everything, removes every resource of the runner and verifies that none is
    /// left.
    pub async fn destroy(mut self) -> Result<(), SandboxError> {
        // Closing the control socket alone ends the sandbox (pid 1 exits); the cgroup kill
        // in teardown makes it immediate and also catches anything that escaped.
        self.control = None;
        self.messages = None;
        self.output = None;
        // Dropping the handle leaves the pinned links in force; teardown removes them
        // from the pins once the runner's processes are dead, for live runners and
        // reaped ones alike.
        self.fence = None;
        let result = teardown(&self.run_dir, &self.record, NetnsCheck::ByCgroup).await;
        if let Some(child) = self.child.take() {
            let _ = tokio::time::timeout(KILL_DEADLINE, child.reap()).await;
        }
        result
    }
}

/// A sandbox init just started by [`spawn_init`].
#[derive(Debug)]
pub struct SpawnedInit {
    /// The init process, in its own network namespace and the runner's v2 cgroup.
    pub child: crate::sys::spawn::Child,
    /// The agent's end of the control socket (init's stdin).
    pub control: std::os::unix::net::UnixStream,
    /// The read end of the step output pipe (init's stdout and stderr).
    pub output: OwnedFd,
}

/// Starts `runner-agent __sandbox-init` (`program`) in a new network namespace and in
/// `cgroup`'s v2 directory, with the control socket as its stdin and the output pipe as
/// its stdout and stderr. It then waits for the spec ([`ToInit::Spec`]).
pub fn spawn_init(program: &Path, cgroup: &RunnerCgroup) -> Result<SpawnedInit, SandboxError> {
    let (agent_end, init_end) = std::os::unix::net::UnixStream::pair()
        .map_err(|e| SandboxError::Init(format!("socketpair: {e}")))?;
    let (output_read, output_write) =
        std::io::pipe().map_err(|e| SandboxError::Init(format!("pipe: {e}")))?;
    let v2_dir = std::fs::File::open(&cgroup.v2_dir)
        .map_err(|e| SandboxError::Init(format!("open cgroup {}: {e}", cgroup.v2_dir.display())))?;
    let child = crate::sys::spawn::spawn(&crate::sys::spawn::SpawnRequest {
        program,
        args: &[init::INIT_ARG],
        stdio: [init_end.as_fd(), output_write.as_fd(), output_write.as_fd()],
        cgroup: v2_dir.as_fd(),
        new_netns: true,
    })
    .map_err(|e| SandboxError::Init(format!("start {}: {e}", program.display())))?;
    Ok(SpawnedInit {
        child,
        control: agent_end,
        output: OwnedFd::from(output_read),
    })
}

/// A system call the sandbox refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeccompDenial {
    /// The caller's pid inside the sandbox.
    pub pid: u32,
    /// Its command name.
    pub comm: String,
    /// The call, e.g. `bpf()`.
    pub call: String,
    /// The caller's pid on the host, looked up as the report arrived (init reports
    /// before it answers, so the caller is usually still waiting in the call then).
    pub host_pid: Option<u32>,
}

/// The longest line init may send (its messages are a few hundred bytes).
const MAX_INIT_MESSAGE: usize = 64 * 1024;

/// How many refused system calls may wait to be recorded (see
/// [`Sandbox::seccomp_denials`]). A job flooding refused calls once grew the agent by
/// hundreds of MiB in an unbounded queue, outside every limit of the runner.
pub const DENIALS_QUEUE: usize = 4096;

/// Reads init's messages for as long as the socket is open. Refused system calls go to
/// their own channel the moment they arrive (they may come at any time, also between
/// steps), waiting while it is full; everything else goes to the sandbox's
/// request/response channel. A task of its own because reading a line is not
/// cancellation-safe in a `select!`.
async fn read_messages(
    mut reader: BufReader<tokio::net::unix::OwnedReadHalf>,
    messages: mpsc::UnboundedSender<Result<FromInit, String>>,
    denials: mpsc::Sender<SeccompDenial>,
) {
    let mut line = String::new();
    loop {
        line.clear();
        // Bounded: the agent's memory is outside the runner's cgroup, and whatever speaks
        // on this socket must not be able to grow it (init's messages are small).
        let read = (&mut reader)
            .take(MAX_INIT_MESSAGE as u64 + 1)
            .read_line(&mut line)
            .await;
        if matches!(read, Ok(n) if n > MAX_INIT_MESSAGE) {
            let _ = messages.send(Err(format!(
                "a message from the sandbox init longer than {MAX_INIT_MESSAGE} bytes"
            )));
            return;
        }
        match read {
            Ok(0) => return,
            Ok(_) => match serde_json::from_str::<FromInit>(&line) {
                Ok(FromInit::Denied {
                    pid,
                    host_pid,
                    comm,
                    call,
                }) => {
                    let denial = SeccompDenial {
                        pid,
                        comm,
                        call,
                        host_pid,
                    };
                    let _ = denials.send(denial).await;
                }
                Ok(message) => {
                    let _ = messages.send(Ok(message));
                }
                Err(e) => {
                    let _ = messages.send(Err(format!("bad message {line:?}: {e}")));
                    return;
                }
            },
            Err(e) => {
                let _ = messages.send(Err(format!("receive: {e}")));
                return;
            }
        }
    }
}

/// How [`verify_gone`] checks that nothing is left in a runner's network namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NetnsCheck {
    /// Destroying a runner this agent ran: every process of the job was in the runner's
    /// cgroup, which is now empty and removed, and a process outside it could enter the
    /// namespace only with the host's root (setns into a namespace owned by the host's
    /// user namespace). The check costs nothing more.
    ByCgroup,
    /// Reaping a dead agent's runner, found in any state: also look at every process on
    /// the host (a /proc scan, one `ns/net` link per process, some milliseconds).
    ScanProcesses,
}

/// Removes everything `record` lists, then checks it is gone. Used for normal
/// destruction ([`NetnsCheck::ByCgroup`]) and for reaping a dead agent's runner
/// ([`NetnsCheck::ScanProcesses`]).
pub async fn teardown(
    run_dir: &RunDir,
    record: &RunnerRecord,
    netns_check: NetnsCheck,
) -> Result<(), SandboxError> {
    let mut failures = Vec::new();
    let mut note = |result: Result<Result<(), String>, tokio::task::JoinError>| match result {
        Ok(Ok(())) => {}
        Ok(Err(e)) => failures.push(e),
        Err(e) => failures.push(e.to_string()),
    };
    // The veth goes while the processes die: it depends on none of them, and without it
    // the runner has no network left at all.
    let host_if = record.host_if.clone();
    let owner = record.veth_owner();
    let veth = tokio::spawn(async move {
        network::remove(&host_if, &owner)
            .await
            .map_err(|e| e.to_string())
    });
    let cgroup = RunnerCgroup::from_dirs(&record.cgroup_dirs);
    if let Some(cgroup) = cgroup.clone() {
        note(
            tokio::task::spawn_blocking(move || {
                cgroup.kill_all(KILL_DEADLINE).map_err(|e| e.to_string())
            })
            .await,
        );
    }
    // With the processes dead, the fence can go (its tc filter goes with the veth), and
    // the cgroup.
    if let Some(pin_dir) = record.pin_dir.clone() {
        note(
            tokio::task::spawn_blocking(move || {
                egress_ebpf::reap(&pin_dir).map_err(|e| format!("eBPF fence: {e}"))
            })
            .await,
        );
    }
    if let Some(cgroup) = cgroup {
        note(tokio::task::spawn_blocking(move || cgroup.remove().map_err(|e| e.to_string())).await);
    }
    // The proxy is stopped before the runner is destroyed; a proxy a crashed agent left
    // behind is killed here.
    if let Some(proxy) = RunnerCgroup::from_dirs(&record.proxy_cgroup_dirs) {
        note(
            tokio::task::spawn_blocking(move || {
                proxy
                    .kill_all(KILL_DEADLINE)
                    .and_then(|()| proxy.remove())
                    .map_err(|e| format!("proxy cgroup: {e}"))
            })
            .await,
        );
    }
    note(veth.await);
    match std::fs::remove_dir(&record.scratch_dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => failures.push(format!("remove {}: {e}", record.scratch_dir.display())),
    }
    let mut leftovers = verify_gone(record, netns_check);
    leftovers.extend(failures);
    if leftovers.is_empty() {
        run_dir.remove_record(record.slot)?;
        Ok(())
    } else {
        // The record stays, so that the next start tries again.
        Err(SandboxError::Leftovers {
            runner: record.runner.clone(),
            leftovers,
        })
    }
}

/// Lists whatever of `record` still exists: cgroup directories (and so processes), the
/// veth, mounts on or below the scratch directory, the scratch directory, the fence's pins
/// and, with [`NetnsCheck::ScanProcesses`], any process in the runner's network namespace.
pub fn verify_gone(record: &RunnerRecord, netns_check: NetnsCheck) -> Vec<String> {
    let mut left = Vec::new();
    for dir in record.cgroup_dirs.iter().chain(&record.proxy_cgroup_dirs) {
        if dir.exists() {
            left.push(format!("cgroup {}", dir.display()));
        }
    }
    match network::exists(&record.host_if, &record.veth_owner()) {
        Ok(true) => left.push(format!("veth {}", record.host_if)),
        Ok(false) => {}
        Err(e) => left.push(format!("veth {} (cannot check: {e})", record.host_if)),
    }
    if let Ok(mountinfo) = std::fs::read_to_string("/proc/self/mountinfo") {
        let scratch = record.scratch_dir.to_string_lossy();
        for line in mountinfo.lines() {
            if let Some(mount_point) = line.split(' ').nth(4) {
                if mount_point.starts_with(scratch.as_ref()) {
                    left.push(format!("mount {mount_point}"));
                }
            }
        }
    }
    if record.scratch_dir.exists() {
        left.push(format!("directory {}", record.scratch_dir.display()));
    }
    if let Some(pin_dir) = &record.pin_dir {
        if pin_dir.exists() {
            left.push(format!("eBPF pins {}", pin_dir.display()));
        }
    }
    if let (Some(inode), NetnsCheck::ScanProcesses) = (record.netns_inode, netns_check) {
        if let Some(pid) = process_in_netns(inode) {
            left.push(format!(
                "network namespace {inode} (process {pid} is in it)"
            ));
        }
    }
    left
}

/// A process whose network namespace has inode `inode`, if any. The runner's namespace is
/// held only by its processes (it is never bind-mounted), so none found means it is gone.
fn process_in_netns(inode: u64) -> Option<u32> {
    let wanted = format!("net:[{inode}]");
    std::fs::read_dir("/proc")
        .ok()?
        .flatten()
        .find_map(|entry| {
            let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
            let link = std::fs::read_link(entry.path().join("ns/net")).ok()?;
            (link.as_os_str() == wanted.as_str()).then_some(pid)
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whatever writes to the control socket cannot make the agent (outside the runner's
    /// memory limit) buffer an endless line: past the cap the channel is given up.
    #[tokio::test]
    async fn a_message_longer_than_the_cap_ends_the_channel() {
        let (agent, init) = UnixStream::pair().unwrap();
        let (read, _write) = agent.into_split();
        let (messages_tx, mut messages) = mpsc::unbounded_channel();
        let (denials_tx, mut denials) = mpsc::channel(4);
        let reader = tokio::spawn(read_messages(BufReader::new(read), messages_tx, denials_tx));
        let writer = tokio::spawn(async move {
            let mut init = init;
            let denied = b"{\"msg\":\"denied\",\"pid\":7,\"comm\":\"c\",\"call\":\"bpf()\"}\n";
            init.write_all(denied).await.unwrap();
            // Ten times the cap, no newline: written until the reader stops reading.
            let chunk = vec![b'A'; MAX_INIT_MESSAGE];
            for _ in 0..10 {
                if init.write_all(&chunk).await.is_err() {
                    break;
                }
            }
        });
        assert!(
            denials.recv().await.is_some(),
            "the message before was read"
        );
        match messages.recv().await {
            Some(Err(why)) => assert!(why.contains("longer than"), "{why}"),
            other => panic!("expected the channel to be given up, got {other:?}"),
        }
        reader.await.unwrap();
        drop(messages);
        writer.abort();
    }
}
