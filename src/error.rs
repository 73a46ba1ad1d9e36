//! The launcher's errors: everything that stops a VM from being built or
//! keeps it from running, each message naming the input or host facility
//! at fault and what to do about it.

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot open /dev/kvm: {0} (is KVM enabled, and may this user open /dev/kvm?)")]
    KvmOpen(#[source] kvm_ioctls::Error),
    #[error("/dev/kvm speaks API version {0}, but the launcher needs version 12")]
    KvmApi(i32),
    #[error("this host's KVM lacks {0}, which the launcher needs")]
    KvmCap(&'static str),
    #[error("KVM refused to {what}: {source}")]
    Kvm {
        what: &'static str,
        #[source]
        source: kvm_ioctls::Error,
    },
    #[error("cannot allocate {mb} MB of guest memory: {reason}")]
    Memory { mb: u64, reason: String },
    #[error("{mb} MB of guest memory is more than this host's KVM can map ({source})")]
    MemoryMap {
        mb: u64,
        #[source]
        source: kvm_ioctls::Error,
    },
    #[error("{0}")]
    Load(#[from] loader::Error),
    #[error("cannot set up vCPU {id} ({step}): {source}")]
    VcpuSetup {
        id: u8,
        step: &'static str,
        #[source]
        source: kvm_ioctls::Error,
    },
    #[error("--cpus {asked}: this host's KVM runs at most {max} vCPUs per VM")]
    TooManyCpus { asked: u8, max: usize },
    #[error("{0}")]
    Block(#[from] devices::virtio::block::BlockError),
    #[error("too many PCI devices: bus 0 has 32 slots")]
    PciFull,
    #[error("cannot place a device: {0}")]
    Bus(#[from] devices::BusError),
    #[error("cannot place {device}'s BAR at {base:#x}: the range is taken")]
    BarPlacement { device: String, base: u64 },
    #[error("cannot {what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// Wraps an I/O error with what was being attempted.
    pub fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Self {
        let what = what.into();
        move |source| Error::Io { what, source }
    }

    pub fn kvm(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> Self {
        move |source| Error::Kvm { what, source }
    }
}
